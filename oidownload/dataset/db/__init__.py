"""The annotations database: a --db URL → a `Database` handle (SQLite built in, PostgreSQL
through the optional psycopg 3), the one place that knows the two dialects apart.

Every failure to reach, read or write a database is a `DatabaseError` naming it.
"""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from oidownload.core.errors import ConfigError, DatabaseError

DEFAULT_DB = "openimages.sqlite"
POSTGRES_EXTRA = "pip install 'oidownload[postgres]'"
# Rows handed to the server at a time: large enough that per-call overhead vanishes,
# small enough that a batch stays a few MB.
BATCH = 20000


def _driver_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


_ERRORS = _driver_errors()


# libpq's key=value form (`host=db password=x dbname=oi`), which is no path: taken as
# one, it became an SQLite file named after the string, password and all.
_CONNINFO_RE = re.compile(
    r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|connect_timeout|"
    r"application_name|target_session_attrs|client_encoding|channel_binding|gssencmode|sslcert|sslkey|"
    r"sslrootcert|sslpassword|keepalives)\s*=")


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite --db (a path or sqlite:///path), None for PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if _CONNINFO_RE.match(url):
        # Not echoed: it may hold a password.
        raise ConfigError(
            "--db looks like a PostgreSQL key=value connection string, which --db does not take: "
            "give postgresql://user@host:port/dbname, and the password (if any) in PGPASSWORD or ~/.pgpass"
        )
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(f"--db {url!r}: an SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        return Path(rest[1:])
    if "://" in url:
        raise ConfigError(f"--db {url!r}: expected a path, sqlite:///path or postgresql://user@host:port/dbname")
    return Path(url)


def _check_no_password(url: str) -> None:
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ConfigError(
            "--db must not carry a password (it would show in the process list and the shell history): "
            "set PGPASSWORD or put it in ~/.pgpass"
        )


class Database:
    """A connection and its dialect. Statements use `?` placeholders; PostgreSQL's are
    rewritten. `bulk` is the fast path: executemany in SQLite, COPY in PostgreSQL."""

    def __init__(self, url: str, dialect: str, conn: Any) -> None:
        self.url = url
        self.dialect = dialect
        self.conn = conn
        self.in_transaction = False

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgresql"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _error(self, exc: Exception, doing: str) -> DatabaseError:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return DatabaseError(f"database {self.url}: {doing}: {first}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(self._sql(sql), params)
            return list(cur.fetchall()) if cur.description else []
        except _ERRORS as exc:
            raise self._error(exc, "query failed") from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            if self.postgres:
                with self.conn.cursor() as cur:
                    cur.executemany(self._sql(sql), list(rows))
            else:
                self.conn.executemany(sql, rows)
        except _ERRORS as exc:
            raise self._error(exc, "write failed") from None

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a query, fetched in batches (a server-side cursor in PostgreSQL), so a
        result of millions of rows is never held at once."""
        try:
            if self.postgres:
                with self.conn.transaction(), self.conn.cursor(name="oidownload_stream") as cur:
                    cur.itersize = BATCH
                    cur.execute(self._sql(sql), params)
                    yield from cur
            else:
                cur = self.conn.execute(sql, params)
                while batch := cur.fetchmany(BATCH):
                    yield from batch
        except _ERRORS as exc:
            raise self._error(exc, "query failed") from None

    def bulk(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        cols = ", ".join(columns)
        try:
            if self.postgres:
                with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                self._sqlite_bulk(table, cols, len(columns), rows)
        except _ERRORS as exc:
            raise self._error(exc, f"loading {table} failed") from None

    def copy_text(self, table: str, columns: Sequence[str], chunks: Iterable[str]) -> None:
        """PostgreSQL only: COPY of text already in COPY's text format."""
        try:
            with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for chunk in chunks:
                    copy.write(chunk)
        except _ERRORS as exc:
            raise self._error(exc, f"loading {table} failed") from None

    def _sqlite_bulk(self, table: str, cols: str, width: int, rows: Iterable[Sequence[Any]]) -> None:
        it = iter(rows)
        self._sqlite_flat(table, cols, width,
                          (list(itertools.chain.from_iterable(c)) for c in iter(lambda: list(itertools.islice(it, BATCH)), [])))

    def bulk_flat(self, table: str, columns: Sequence[str], blocks: Iterable[list[Any]]) -> None:
        """SQLite only: rows given as flat lists of values, len(columns) a row."""
        try:
            self._sqlite_flat(table, ", ".join(columns), len(columns), blocks)
        except _ERRORS as exc:
            raise self._error(exc, f"loading {table} failed") from None

    def _sqlite_flat(self, table: str, cols: str, width: int, blocks: Iterable[list[Any]]) -> None:
        """executemany of many rows per INSERT: half the CPU of one row per statement. A
        statement stays under 999 parameters, the limit of older SQLite builds."""
        per = max(1, 999 // width)
        one = f"({', '.join('?' * width)})"
        many = f"INSERT INTO {table} ({cols}) VALUES {', '.join([one] * per)}"
        for flat in blocks:
            whole = len(flat) - len(flat) % (width * per)
            self.conn.executemany(many, zip(*[iter(flat[:whole])] * (width * per), strict=False))
            if whole < len(flat):
                self.conn.executemany(f"INSERT INTO {table} ({cols}) VALUES {one}",
                                      zip(*[iter(flat[whole:])] * width, strict=False))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: everything inside commits together or not at all (a SIGKILL
        leaves nothing of it: SQLite's rollback journal, PostgreSQL's aborted transaction)."""
        try:
            if self.postgres:
                with self.conn.transaction():
                    self.in_transaction = True
                    yield
            else:
                self.conn.execute("BEGIN IMMEDIATE")
                self.in_transaction = True
                try:
                    yield
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
        except _ERRORS as exc:
            raise self._error(exc, "transaction failed") from None
        finally:
            self.in_transaction = False

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a broken connection must not hide the first error
            pass


def connect(url: str | None, *, create: bool) -> Database:
    """Opens --db. With create=False a missing SQLite file is an error, not a new file."""
    url = url or DEFAULT_DB
    path = sqlite_path(url)
    if path is None:
        _check_no_password(url)
        try:
            import psycopg
        except ImportError:
            raise DatabaseError(f"database {url}: PostgreSQL support is an optional extra: "
                                f"{POSTGRES_EXTRA}") from None
        conn: Any
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=int(os.environ.get("PGCONNECT_TIMEOUT", "10")))
        except psycopg.Error as exc:
            raise DatabaseError(f"database {url}: cannot connect: "
                                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc}") from None
        return Database(url, "postgresql", conn)
    if path.is_dir():
        raise DatabaseError(f"database {url}: {path} is a folder; give a file in it, e.g. --db {path / 'openimages.sqlite'}")
    if not create and not path.exists():
        raise DatabaseError(f"database {url}: no such file; create it with `oidownload db load ... --db {url}`")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MB (and as much for an index build's sorter)
        conn.execute("PRAGMA temp_store=MEMORY" if not create else "PRAGMA temp_store=FILE")
        # Rollback journal, not WAL: a killed load is undone from the journal at the next open.
        conn.execute("PRAGMA journal_mode=DELETE")
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseError(f"database {url}: cannot open: {exc}") from None
    return Database(url, "sqlite", conn)


def hex_id_sql(db: Database, column: str) -> str:
    """SQL that shows a stored 64-bit ImageID as its 16 hex digits."""
    return f"oi_hex({column})" if db.postgres else f"printf('%016x', {column})"


