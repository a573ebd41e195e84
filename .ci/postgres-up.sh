#!/usr/bin/env bash
# Install (when missing) and start a real PostgreSQL server for the tests (recipe:
# shared/INFRA.md) on a free port of 127.0.0.1; prints its DSN. `postgres-up.sh DIR stop`
# stops it and removes its data; `postgres-up.sh DIR durable` keeps fsync on (benchmarks). The data lives in a folder of the postgres user's own
# (DIR, often private to root, may be out of its reach); DIR records where.
set -euo pipefail
W=$(realpath -m "${1:?usage: postgres-up.sh STATE_DIR [stop]}")
mkdir -p "$W"
export DEBIAN_FRONTEND=noninteractive
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
fi
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [ "${2:-}" = stop ]; then
    [ -s "$W/datadir" ] || exit 0
    D=$(cat "$W/datadir")
    [ -f "$D/data/postmaster.pid" ] && runuser -u postgres -- "$PG/pg_ctl" -D "$D/data" -m fast stop >/dev/null
    rm -rf "$D" "$W/datadir"
    exit 0
fi
D=$(mktemp -d /tmp/oidownload-pg.XXXXXX)
echo "$D" > "$W/datadir"
mkdir -p "$D/sock"
chown -R postgres "$D"
runuser -u postgres -- "$PG/initdb" -D "$D/data" -A trust -U postgres -E UTF8 --no-locale --no-sync \
    >"$D/initdb.log" 2>&1 || { cat "$D/initdb.log" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# fsync off: a test server is thrown away, and the tests must not wait on the disk.
FAST="-c fsync=off -c full_page_writes=off"
[ "${2:-}" = durable ] && FAST=""
runuser -u postgres -- "$PG/pg_ctl" -D "$D/data" -l "$D/log" -w -t 60 \
    -o "-p $PORT -k $D/sock -c listen_addresses=127.0.0.1 $FAST" start >/dev/null \
    || { cat "$D/log" >&2; exit 1; }
echo "postgresql://postgres@127.0.0.1:$PORT/postgres"
