#!/usr/bin/env bash
# Install buildah/podman and build a local stand-in for python:3.12-slim (no registry is
# reachable here), tagged so that the Dockerfile's default BASE resolves to it.
# Recipe: shared/INFRA.md; the Debian mirror is the one this machine's apt sources name.
# Writes a containers.conf for podman to $1/containers.conf.
set -euo pipefail
W=$(realpath "${1:?usage: container-base.sh STATE_DIR}")
mkdir -p "$W"
export DEBIAN_FRONTEND=noninteractive
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq buildah podman runc mmdebstrap >/dev/null
fi
cat > "$W/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF="$W/containers.conf"
if ! podman image exists docker.io/library/python:3.12-slim; then
    # The Debian mirror this machine's apt already uses: no mirror is named here.
    MIRROR=$(python3 "$(dirname "$0")/apt-mirror.py" bookworm)
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        --customize-hook='copy-in /usr/local/share/ca-certificates/ /usr/local/share/' \
        --customize-hook='chroot "$1" update-ca-certificates' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED; ln -sf python3 "$1"/usr/bin/python' \
        bookworm "$W/base.tar" "$MIRROR"
    podman import -q --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$W/base.tar" docker.io/library/python:3.12-slim >/dev/null
    rm -f "$W/base.tar"
fi
echo "$CONTAINERS_CONF"
