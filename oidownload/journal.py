"""The journal: one SQLite file per cluster task under OUT/.oidownload/, one row per
image. A row is written only after its file is in place, so the journal means "done".

Rollback-journal mode (DELETE), never WAL: WAL needs shared memory between the
processes that open the file, which network filesystems do not give, and each task
is the only writer of its own file anyway. `status` and `report` read every file.
"""

from __future__ import annotations

import array
import bisect
import fcntl
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError
from .layout import relative_path, state_dir
from .records import Outcome, Status, is_final
from .shard import Shard

SCHEMA_VERSION = 1
# Disk space held back for the journal: freed when the disk fills, so the outcomes
# of images already written can still be committed before the run stops.
RESERVE_BYTES = 512 * 1024
_U64 = 1 << 64
_I64 = 1 << 63

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS inputs(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes(
    id INTEGER PRIMARY KEY,          -- the ImageID as a signed 64-bit integer
    status TEXT NOT NULL,
    final INTEGER NOT NULL,
    detail TEXT NOT NULL,
    http_status INTEGER,
    nbytes INTEGER NOT NULL,
    out_bytes INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    attempts INTEGER NOT NULL,
    seconds REAL NOT NULL,
    subset TEXT NOT NULL,
    ext TEXT NOT NULL,
    source TEXT,
    verified INTEGER NOT NULL,
    input INTEGER,
    line INTEGER,
    finished REAL NOT NULL,
    orientation INTEGER NOT NULL DEFAULT 1,  -- EXIF-style code of the turn applied
    crop TEXT                                -- "x0,y0,x1,y1" kept, normalised; NULL: all
);
CREATE TABLE IF NOT EXISTS bad_rows(
    input INTEGER NOT NULL,
    line INTEGER NOT NULL,
    detail TEXT NOT NULL,
    raw_id TEXT NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY(input, line)
);
-- Kept by triggers so that `status` answers at once on a 9M-row journal.
CREATE TABLE IF NOT EXISTS counts(status TEXT PRIMARY KEY, n INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS outcomes_ins AFTER INSERT ON outcomes BEGIN
    INSERT INTO counts VALUES(new.status, 1, new.nbytes)
        ON CONFLICT(status) DO UPDATE SET n = n + 1, bytes = bytes + new.nbytes;
END;
CREATE TRIGGER IF NOT EXISTS outcomes_upd AFTER UPDATE ON outcomes BEGIN
    UPDATE counts SET n = n - 1, bytes = bytes - old.nbytes WHERE status = old.status;
    INSERT INTO counts VALUES(new.status, 1, new.nbytes)
        ON CONFLICT(status) DO UPDATE SET n = n + 1, bytes = bytes + new.nbytes;
END;
CREATE TRIGGER IF NOT EXISTS bad_ins AFTER INSERT ON bad_rows BEGIN
    INSERT INTO counts VALUES('bad_row', 1, 0)
        ON CONFLICT(status) DO UPDATE SET n = n + 1;
END;
-- One row per task: what the running (or last) process reports about itself.
CREATE TABLE IF NOT EXISTS progress(
    shard TEXT PRIMARY KEY,
    pid INTEGER, host TEXT,
    started REAL, updated REAL,
    running INTEGER NOT NULL,
    planned INTEGER,            -- rows of this task's selection, once counted
    skipped INTEGER NOT NULL,   -- rows found already done at start
    processed INTEGER NOT NULL, -- outcomes recorded by this run
    rate REAL                   -- outcomes per second over the last minute
);
"""

_UPSERT = """
INSERT INTO outcomes(id, status, final, detail, http_status, nbytes, out_bytes, width, height,
                     attempts, seconds, subset, ext, source, verified, input, line, finished,
                     orientation, crop)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(id) DO UPDATE SET
    status=excluded.status, final=excluded.final, detail=excluded.detail,
    http_status=excluded.http_status, nbytes=excluded.nbytes, out_bytes=excluded.out_bytes,
    width=excluded.width, height=excluded.height,
    attempts=outcomes.attempts + excluded.attempts, seconds=excluded.seconds,
    subset=excluded.subset, ext=excluded.ext, source=excluded.source,
    verified=excluded.verified, input=excluded.input, line=excluded.line,
    finished=excluded.finished, orientation=excluded.orientation, crop=excluded.crop
"""


def id_to_int(image_id: str) -> int:
    """A 16-hex-digit ImageID as SQLite's signed 64-bit integer."""
    v = int(image_id, 16)
    return v - _U64 if v >= _I64 else v


def int_to_id(v: int) -> str:
    return format(v % _U64, "016x")


def journal_path(out: Path, shard: Shard) -> Path:
    return state_dir(out) / f"journal-{shard.tag}.sqlite"


def journal_files(out: Path) -> list[Path]:
    return sorted(state_dir(out).glob("journal-*.sqlite"))


def shard_counts(out: Path) -> set[int]:
    """The shard counts OUT's journals were written with."""
    counts = set()
    for path in journal_files(out):
        tail = path.stem.rsplit("-of-", 1)
        if len(tail) == 2 and tail[1].isdigit():
            counts.add(int(tail[1]))
    return counts


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class DoneSet:
    """ImageIDs whose outcome needs no new request, as a sorted array of unsigned
    64-bit ints: 8 bytes an id, where a Python set of str would take ~100."""

    def __init__(self, ids: array.array[int]) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw_id: object) -> bool:
        if not isinstance(raw_id, str) or len(raw_id) != 16:
            return False
        try:
            v = int(raw_id, 16)
        except ValueError:
            return False
        ids = self._ids
        i = bisect.bisect_left(ids, v)
        return i < len(ids) and ids[i] == v

    @staticmethod
    def merge(sets: Iterable[DoneSet]) -> DoneSet:
        arrays = [s._ids for s in sets]
        if len(arrays) == 1:
            return DoneSet(arrays[0])
        merged = array.array("Q", sorted(v for a in arrays for v in a))
        return DoneSet(merged)


@dataclass(frozen=True, slots=True)
class StatusCount:
    status: str
    n: int
    bytes: int


class Journal:
    """The writer's handle. Holds an exclusive lock for its shard, so two processes
    never write the same journal (the same array task started twice, say)."""

    def __init__(self, out: Path, shard: Shard) -> None:
        self.out = out
        self.shard = shard
        self.path = journal_path(out, shard)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.path.parent}: {exc.strerror or exc}") from None
        self._lock_fd = self._lock(self.path.with_suffix(".lock"))
        try:
            self.conn = connect(self.path)
            self.conn.execute("PRAGMA journal_mode=DELETE")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES('shard', ?)", (shard.tag,))
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise OutputError(f"cannot open the journal {self.path}: {exc}") from None
        self._inputs: dict[str, int] = {}
        self.started = time.time()
        self._reserve = self.path.with_suffix(".reserve")
        self._make_reserve()

    def _make_reserve(self) -> None:
        try:
            if self._reserve.exists() and self._reserve.stat().st_size >= RESERVE_BYTES:
                return
            with open(self._reserve, "wb") as f:
                f.write(bytes(RESERVE_BYTES))  # real blocks, not a sparse file
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.release_reserve()  # no room even for that: carry on without it

    def release_reserve(self) -> None:
        try:
            self._reserve.unlink()
        except OSError:
            pass

    def _lock(self, path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise OutputError(
                f"another oidownload process ({holder or 'unknown'}) is writing {self.shard.describe()} "
                f"into {self.out}; wait for it, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return fd

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            os.close(self._lock_fd)

    def input_id(self, path: str) -> int:
        known = self._inputs.get(path)
        if known is not None:
            return known
        self.conn.execute("INSERT OR IGNORE INTO inputs(path) VALUES(?)", (path,))
        row = self.conn.execute("SELECT id FROM inputs WHERE path=?", (path,)).fetchone()
        self._inputs[path] = int(row[0])
        return int(row[0])

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Writes a batch in one transaction. Raises OutputError when the disk is full or
        the file is unwritable: a lost batch only means those images are fetched again.
        Bad rows go to their own table, keyed by file and line: they may have no id."""
        now = time.time()
        good: list[Outcome] = []
        bad: list[Outcome] = []
        for o in outcomes:
            (bad if o.status is Status.BAD_ROW else good).append(o)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            rows = [
                (
                    id_to_int(o.image_id), o.status.value, int(is_final(o.status)), o.detail,
                    o.http_status, o.nbytes, o.out_bytes, o.width, o.height, o.attempts,
                    round(o.seconds, 4), o.subset, o.ext, o.source.value if o.source else None,
                    int(o.verified), self.input_id(o.file) if o.file else None, o.line, now,
                    o.orientation, ",".join(f"{v:.6f}" for v in o.crop) if o.crop else None,
                )
                for o in good
            ]
            self.conn.executemany(_UPSERT, rows)
            self.conn.executemany(
                "INSERT OR IGNORE INTO bad_rows VALUES(?,?,?,?,?)",
                [(self.input_id(o.file), o.line, o.detail, o.image_id, now) for o in bad],
            )
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise OutputError(f"cannot write the journal {self.path}: {exc}") from None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value))

    def set_progress(self, *, running: bool, planned: int | None, skipped: int, processed: int, rate: float | None) -> None:
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO progress VALUES(?,?,?,?,?,?,?,?,?,?)",
                (self.shard.tag, os.getpid(), socket.gethostname(), self.started, time.time(),
                 int(running), planned, skipped, processed, rate),
            )
        except sqlite3.Error as exc:
            raise OutputError(f"cannot write the journal {self.path}: {exc}") from None

    def done_set(self, *, retry_failed: bool) -> DoneSet:
        """Ids this task must not request again: every final outcome, or with
        retry_failed only the ok ones."""
        where = "status='ok'" if retry_failed else "final=1"
        return load_done(self.conn, where)


def load_done(conn: sqlite3.Connection, where: str) -> DoneSet:
    # Rowid order is signed; reading the non-negative half first keeps the unsigned
    # array sorted without sorting 8M Python ints.
    ids = array.array("Q")
    for half in ("id >= 0", "id < 0"):
        cur = conn.execute(f"SELECT id FROM outcomes WHERE {half} AND {where} ORDER BY id")
        while batch := cur.fetchmany(65536):
            ids.extend(v % _U64 for (v,) in batch)
    return DoneSet(ids)


def other_done_sets(out: Path, shard: Shard, *, retry_failed: bool) -> list[DoneSet]:
    """Done ids from journals of a different sharding (the run was re-split): their
    images may now belong to this task and must not be fetched again."""
    sets = []
    where = "status='ok'" if retry_failed else "final=1"
    for path in journal_files(out):
        if path.name.endswith(f"-of-{shard.count}.sqlite"):
            continue
        conn = connect(path, readonly=True)
        try:
            sets.append(load_done(conn, where))
        finally:
            conn.close()
    return sets


@dataclass(frozen=True, slots=True)
class ProgressRow:
    shard: str
    pid: int
    host: str
    started: float
    updated: float
    running: bool
    planned: int | None
    skipped: int
    processed: int
    rate: float | None


def read_counts(path: Path) -> tuple[list[StatusCount], list[ProgressRow]]:
    conn = connect(path, readonly=True)
    try:
        counts = [StatusCount(s, n, b) for s, n, b in conn.execute("SELECT status, n, bytes FROM counts WHERE n > 0")]
        progress = [ProgressRow(*r) for r in conn.execute("SELECT * FROM progress")]
        return counts, progress
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Downloaded:
    """An image that is on disk, as the annotation export needs it."""

    image_id: str
    subset: str
    ext: str
    width: int
    height: int
    orientation: int
    crop: tuple[float, float, float, float] | None

    @property
    def path(self) -> str:
        return relative_path(self.subset, self.image_id, self.ext)


def downloaded(out: Path) -> dict[str, Downloaded]:
    """Every image whose outcome is ok, across all the journals in OUT."""
    found: dict[str, Downloaded] = {}
    for path in journal_files(out):
        conn = connect(path, readonly=True)
        try:
            cur = conn.execute(
                "SELECT id, subset, ext, width, height, orientation, crop FROM outcomes WHERE status='ok'"
            )
            for rid, subset, ext, w, h, orient, crop in cur:
                image_id = int_to_id(rid)
                box = tuple(float(v) for v in crop.split(",")) if crop else None
                found[image_id] = Downloaded(image_id, subset, ext, w or 0, h or 0, orient or 1, box)  # type: ignore[arg-type]
        finally:
            conn.close()
    return found


def read_meta(out: Path, key: str) -> list[str]:
    """A meta value from every journal in OUT (each task writes its own)."""
    values = []
    for path in journal_files(out):
        conn = connect(path, readonly=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is not None:
                values.append(str(row[0]))
        finally:
            conn.close()
    return values
