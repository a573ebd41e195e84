"""The journal's writer: one SQLite file per cluster task in the state dir (by default
OUT/.oidownload/), one row per image. An outcome is written only once its sink says
it is committed, so the journal means "done". Readers use `state.py`.

Rollback-journal mode (DELETE), never WAL: WAL needs shared memory between the
processes that open the file, which network filesystems do not give, and each task
is the only writer of its own file anyway.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from oidownload.core.errors import JournalError, OutputError
from oidownload.core.ids import id_to_int, int_to_id
from oidownload.core.records import Conflict, MaskOutcome, Outcome, Status, clean_text, is_final
from oidownload.core.shard import Shard
from oidownload.sinks.files import mask_location

T = TypeVar("T")

SCHEMA_VERSION = 3  # 3: the masks table (issue 22)
# Disk space held back for the journal: freed when the disk fills, so the outcomes
# of images already written can still be committed before the run stops.
RESERVE_BYTES = 512 * 1024
# A reader (`report` on a 9M-row journal) may hold the file for a while: the writer
# waits and retries rather than give up, for up to this long per batch.
BUSY_PATIENCE = 300.0
_U64 = 1 << 64
_HEAD_BYTES = 1 << 16

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
    rate REAL,                  -- outcomes per second over the last minute
    hosts TEXT                  -- the per-host limits that moved (HostLimiter.describe)
);
CREATE INDEX IF NOT EXISTS outcomes_by_line ON outcomes(input, line);
-- Written images per source (original, thumbnail, cvdf), for `status`.
CREATE TABLE IF NOT EXISTS source_counts(source TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS ok_source_ins AFTER INSERT ON outcomes WHEN new.status = 'ok' BEGIN
    INSERT INTO source_counts VALUES(coalesce(new.source, ''), 1) ON CONFLICT(source) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS ok_source_upd AFTER UPDATE ON outcomes WHEN old.status = 'ok' OR new.status = 'ok' BEGIN
    UPDATE source_counts SET n = n - 1 WHERE old.status = 'ok' AND source = coalesce(old.source, '');
    INSERT INTO source_counts SELECT coalesce(new.source, ''), 1 WHERE new.status = 'ok'
        ON CONFLICT(source) DO UPDATE SET n = n + 1;
END;
-- Written images that nothing checked, per source (a thumbnail, a row without an MD5,
-- a mirror copy whose ETag is no MD5): `status` says what was verified.
CREATE TABLE IF NOT EXISTS unchecked_counts(source TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS unchecked_ins AFTER INSERT ON outcomes WHEN new.status = 'ok' AND new.verified = 0 BEGIN
    INSERT INTO unchecked_counts VALUES(coalesce(new.source, ''), 1) ON CONFLICT(source) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS unchecked_upd AFTER UPDATE ON outcomes
WHEN (old.status = 'ok' AND old.verified = 0) OR (new.status = 'ok' AND new.verified = 0) BEGIN
    UPDATE unchecked_counts SET n = n - 1 WHERE old.status = 'ok' AND old.verified = 0
        AND source = coalesce(old.source, '');
    INSERT INTO unchecked_counts SELECT coalesce(new.source, ''), 1 WHERE new.status = 'ok' AND new.verified = 0
        ON CONFLICT(source) DO UPDATE SET n = n + 1;
END;
-- What the output's sink needs to continue after a crash (open shards' lengths...).
CREATE TABLE IF NOT EXISTS sink_state(key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One ImageID, two answers: a later row that disagreed with the first (which won), or a
-- failure that came after the image was already ok (which stays ok). Not in `counts`:
-- the image is counted once, by its outcome.
CREATE TABLE IF NOT EXISTS conflicts(
    id INTEGER NOT NULL,
    input INTEGER,
    line INTEGER,
    detail TEXT NOT NULL,
    finished REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conflicts_by_row ON conflicts(input, line, id);
-- masks (issue 22): one row per mask of a written image (--masks), committed with it.
CREATE TABLE IF NOT EXISTS masks(
    id INTEGER NOT NULL,             -- the image's ImageID, as in outcomes
    box_id TEXT NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    final INTEGER NOT NULL,
    detail TEXT NOT NULL,
    location TEXT,                   -- where the output holds it (sinks.files.mask_location)
    width INTEGER,
    height INTEGER,
    nbytes INTEGER NOT NULL,         -- the member's bytes as fetched
    finished REAL NOT NULL,
    PRIMARY KEY(id, box_id)
);
"""

_TABLES = frozenset({"meta", "inputs", "outcomes", "bad_rows", "counts", "progress", "sink_state", "source_counts",
                     "unchecked_counts", "conflicts", "masks"})
# Columns added after the first release; an older journal gains them when opened.
_ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "outcomes": (("location", "TEXT"), ("sha256", "TEXT"), ("url", "TEXT"), ("original_md5", "TEXT"),
                 ("original_size", "INTEGER")),
    "inputs": (("raw", "BLOB"), ("size", "INTEGER"), ("mtime_ns", "INTEGER"), ("head_md5", "TEXT")),
    "progress": (("hosts", "TEXT"),),
}



@functools.cache
def _required_columns() -> dict[str, frozenset[str]]:
    """Each table's columns, as _SCHEMA makes them, less those an older journal may lack."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        return {t: frozenset({str(r[1]) for r in conn.execute(f"PRAGMA table_info({t})")}
                             - {name for name, _ in _ADDED_COLUMNS.get(t, ())}) for t in _TABLES}
    finally:
        conn.close()


def foreign_schema(conn: sqlite3.Connection, *, complete: bool) -> str | None:
    """Why the database of conn is not an oidownload journal, or None: a table of
    another name, or one of ours without the columns it has always had (names alone let
    another program's `outcomes` through, to fail later on a missing column). With
    `complete`, the tables every journal has must be there (for reading one)."""
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
              if not str(r[0]).startswith("sqlite_")}  # SQLite's own (ANALYZE's statistics)
    foreign = tables - _TABLES
    if foreign:
        return f"it has tables {', '.join(sorted(foreign))}"[:200]
    if complete and not {"outcomes", "meta", "counts"} <= tables:
        return f"tables: {', '.join(sorted(tables)) or 'none'}"[:200]
    for table in sorted(tables):
        have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
        missing = _required_columns()[table] - have
        if missing:
            return f"its table {table} has no column {', '.join(sorted(missing))}"[:200]
    return None


def not_a_journal(path: Path, why: str) -> str:
    """The one message every command gives for a database that is not a journal."""
    return (f"{path} is not an oidownload journal ({why}); move it aside or use another --state-dir "
            "(the next download finds the images already in the output)")


@dataclass(frozen=True, slots=True)
class WrittenFrame:
    """An image the journal holds as ok, as its masks need it (masks, issue 22)."""

    image_id: str
    subset: str
    location: str
    width: int
    height: int
    orientation: int
    crop: tuple[float, float, float, float] | None
    masks: Mapping[str, tuple[str, bool]]  # box_id → (status, final)


_MASK_UPSERT = """
INSERT INTO masks(id, box_id, label, status, final, detail, location, width, height, nbytes, finished)
VALUES(?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(id, box_id) DO UPDATE SET label=excluded.label, status=excluded.status, final=excluded.final,
    detail=excluded.detail, location=excluded.location, width=excluded.width, height=excluded.height,
    nbytes=excluded.nbytes, finished=excluded.finished
WHERE masks.status != 'ok' OR excluded.status = 'ok'
"""

# An ok row is never replaced by a failure: the image is in the output, and a later
# duplicate row (or a rerun with --retry-failed that hits a dead link) must not hide
# it. A failure may be replaced by anything.
_UPSERT = """
INSERT INTO outcomes(id, status, final, detail, http_status, nbytes, out_bytes, width, height,
                     attempts, seconds, subset, ext, source, verified, input, line, finished,
                     orientation, crop, location, sha256, url, original_md5, original_size)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(id) DO UPDATE SET
    status=excluded.status, final=excluded.final, detail=excluded.detail,
    http_status=excluded.http_status, nbytes=excluded.nbytes, out_bytes=excluded.out_bytes,
    width=excluded.width, height=excluded.height,
    attempts=outcomes.attempts + excluded.attempts, seconds=excluded.seconds,
    subset=excluded.subset, ext=excluded.ext, source=excluded.source,
    verified=excluded.verified, input=excluded.input, line=excluded.line,
    finished=excluded.finished, orientation=excluded.orientation, crop=excluded.crop,
    location=excluded.location, sha256=excluded.sha256, url=excluded.url,
    original_md5=excluded.original_md5, original_size=excluded.original_size
WHERE outcomes.status != 'ok' OR excluded.status = 'ok'
"""


def journal_path(state_dir: Path, shard: Shard) -> Path:
    return state_dir / f"journal-{shard.tag}.sqlite"


def journal_files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("journal-*.sqlite"))


def shard_counts(state_dir: Path) -> set[int]:
    """The shard counts the state dir's journals were written with."""
    counts = set()
    for path in journal_files(state_dir):
        tail = path.stem.rsplit("-of-", 1)
        if len(tail) == 2 and tail[1].isdigit():
            counts.add(int(tail[1]))
    return counts


def writer_alive(journal: Path) -> bool:
    """Whether a live process holds the journal's writer lock."""
    try:
        fd = os.open(journal.with_suffix(".lock"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0, check_same_thread=False,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _describe(path: Path, exc: BaseException) -> JournalError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_FULL"):
        return JournalError(f"cannot write the journal {path}: the disk is full", full=True)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return JournalError(f"cannot write the journal {path}: another process held it for over "
                            f"{BUSY_PATIENCE:.0f}s (a long `report`?)")
    if name.startswith("SQLITE_CANTOPEN"):
        return JournalError(f"cannot open the journal {path} or its rollback file ({exc}): too many open files "
                            "(raise `ulimit -n`), or its folder is gone")
    if name.startswith("SQLITE_READONLY"):
        return JournalError(f"cannot write the journal {path}: it is read-only")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return JournalError(f"the journal {path} is damaged ({exc}); move it aside and run again "
                            "(images already in the output are found again)")
    return JournalError(f"cannot write the journal {path}: {type(exc).__name__}: {clean_text(str(exc), 300)}")


class DoneSet:
    """ImageIDs whose outcome needs no new request, as a sorted array of unsigned
    64-bit ints: 8 bytes an id, where a Python set of str would take ~100.

    Lookups keep a finger in the array: the published lists are sorted by ImageID, so
    on a resumed run each lookup is usually one comparison with the next done id
    rather than a binary search (a 9M-row list is skipped twice as fast)."""

    def __init__(self, ids: array.array[int]) -> None:
        self._ids = ids
        self._met = bytearray(len(ids))  # 1 byte an id: whether a row of it was met
        # Invariant: every id before the finger is <= the last id looked up in order,
        # and the id at the finger is greater than it.
        self._finger = 0
        self._last = -1

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw_id: object) -> bool:
        v = _as_u64(raw_id)
        if v is None:
            return False
        i = bisect.bisect_left(self._ids, v)
        return i < len(self._ids) and self._ids[i] == v

    def meet(self, raw_id: str) -> int:
        """0 when the id is not done; 1 the first time a row of a done id is met, 2
        after that (a duplicate row: counted once)."""
        # A resumed run calls this once a row, millions of times: one call, with the
        # common case (the done id at the finger) first.
        if len(raw_id) != 16:
            return 0
        try:
            v = int(raw_id, 16)
        except ValueError:
            return 0
        ids = self._ids
        pos = self._finger
        if v > self._last:
            self._last = v
            if pos >= len(ids):
                return 0
            if ids[pos] != v:
                if ids[pos] > v:
                    return 0
                pos = bisect.bisect_left(ids, v, pos)
                self._finger = pos
                if pos == len(ids) or ids[pos] != v:
                    return 0
            self._finger = pos + 1
        else:  # out of order, or again: a plain binary search
            pos = bisect.bisect_left(ids, v)
            if pos == len(ids) or ids[pos] != v:
                return 0
        if self._met[pos]:
            return 2
        self._met[pos] = 1
        return 1

    @staticmethod
    def merge(sets: Iterable[DoneSet]) -> DoneSet:
        arrays = [s._ids for s in sets]
        if len(arrays) == 1:
            return DoneSet(arrays[0])
        merged = array.array("Q", sorted(v for a in arrays for v in a))
        return DoneSet(merged)


def _as_u64(raw_id: object) -> int | None:
    if not isinstance(raw_id, str) or len(raw_id) != 16:
        return None
    try:
        return int(raw_id, 16)
    except ValueError:
        return None


def load_done(conn: sqlite3.Connection, where: str) -> DoneSet:
    # Rowid order is signed; reading the non-negative half first keeps the unsigned
    # array sorted without sorting 8M Python ints.
    ids = array.array("Q")
    for half in ("id >= 0", "id < 0"):
        cur = conn.execute(f"SELECT id FROM outcomes WHERE {half} AND {where} ORDER BY id")
        while batch := cur.fetchmany(65536):
            ids.extend(v % _U64 for (v,) in batch)
    return DoneSet(ids)


@dataclass(frozen=True, slots=True)
class InputIdentity:
    """What an input file was when a run read it, so that a later `report` can tell
    whether the file at that path is still the same."""

    display: str  # absolute path, as text safe to store
    raw: bytes  # absolute path, as the filesystem's bytes
    size: int | None
    mtime_ns: int | None
    head_md5: str | None

    @classmethod
    def of(cls, path: Path) -> InputIdentity:
        """The identity of the file at `path`, named by its resolved path (symlinks,
        `.` and `..` undone), so that every spelling of one file is one input."""
        # stdin is `-` wherever the run started, not a file called `-` in that folder.
        absolute = str(path) if str(path) == "-" else os.path.abspath(path)
        try:
            st = os.stat(absolute)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            absolute = os.path.realpath(absolute)
        # A pipe's resolved name (pipe:[n]) changes every run: it keeps the name given.
        raw = os.fsencode(absolute)
        display = clean_text(raw.decode("utf-8", "replace"), 4096)
        try:
            # A pipe or stdin must not be read here: its bytes would be lost to the reader.
            if st is None or not stat.S_ISREG(st.st_mode):
                return cls(display, raw, None, None, None)
            with open(absolute, "rb") as f:
                head = hashlib.md5(f.read(_HEAD_BYTES)).hexdigest()
        except OSError:
            return cls(display, raw, None, None, None)
        return cls(display, raw, st.st_size, st.st_mtime_ns, head)


class Journal:
    """The writer's handle. Holds an exclusive lock for its shard, so two processes
    never write the same journal (the same array task started twice, say)."""

    def __init__(self, state_dir: Path, shard: Shard, out: str = "") -> None:
        self.state_dir = state_dir
        self.out = out or str(state_dir)
        self.shard = shard
        self.path = journal_path(state_dir, shard)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the state dir {self.path.parent}: {exc.strerror or exc}") from None
        if self.path.exists() and not self.path.is_file():
            raise OutputError(f"the journal {self.path} is not a file; move it aside or pick another --state-dir")
        self._lock_fd = self._lock(self.path.with_suffix(".lock"))
        self.created = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self.conn = connect(self.path)
            self.conn.execute("PRAGMA journal_mode=DELETE")
            self.conn.execute("PRAGMA synchronous=FULL")
            had = self._check_schema()
            # One transaction: a kill while the tables are made must not leave half a schema.
            self.conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            self._migrate(had)
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES('shard', ?)", (shard.tag,))
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise _describe(self.path, exc) from None
        except OutputError:
            os.close(self._lock_fd)
            raise
        self._inputs: dict[str, int] = {}
        self.started = time.time()
        self._reserve = self.path.with_suffix(".reserve")
        self._make_reserve()

    def _check_schema(self) -> set[str]:
        """Refuses a file that is some other program's database, or from a newer
        oidownload: writing into it could lose what it holds. Returns its tables."""
        why = foreign_schema(self.conn, complete=False)
        if why is not None:
            raise OutputError(not_a_journal(self.path, why))
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return tables
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is not None and str(row[0]).isdigit() and int(row[0]) > SCHEMA_VERSION:
            raise OutputError(f"{self.path} was written by a newer oidownload (journal schema {row[0]}); upgrade oidownload")
        return tables

    def _migrate(self, had: set[str]) -> None:
        if "outcomes" in had and "unchecked_counts" not in had:
            self.conn.execute("INSERT INTO unchecked_counts SELECT coalesce(source, ''), count(*) FROM outcomes "
                              "WHERE status = 'ok' AND verified = 0 GROUP BY 1")
        if self.conn.execute("SELECT 1 FROM source_counts LIMIT 1").fetchone() is None:
            self.conn.execute("INSERT INTO source_counts SELECT coalesce(source, ''), count(*) FROM outcomes "
                              "WHERE status = 'ok' GROUP BY 1")
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                    if (table, name) == ("outcomes", "location"):
                        self._fill_locations()

    def _fill_locations(self) -> None:
        # A journal from before locations existed wrote only the files layout.
        from oidownload.sinks.files import relative_path

        rows = self.conn.execute("SELECT id, subset, ext FROM outcomes WHERE status='ok' AND ext != ''").fetchall()
        self.conn.executemany("UPDATE outcomes SET location=? WHERE id=?",
                              [(relative_path(subset, int_to_id(rid), ext), rid) for rid, subset, ext in rows])

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
        return take_lock(path, "", lambda holder: (
            f"another oidownload process ({holder}) is writing {self.shard.describe()} "
            f"into {self.out}; wait for it, or stop it first"))

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            os.close(self._lock_fd)

    def register_inputs(self, paths: Iterable[Path]) -> None:
        """Records each input's absolute path and identity; rows name their input by
        the path as it was given, and two spellings of one file are one input."""
        try:
            for path in paths:
                ident = InputIdentity.of(path)
                self.conn.execute(
                    "INSERT INTO inputs(path, raw, size, mtime_ns, head_md5) VALUES(?,?,?,?,?) "
                    "ON CONFLICT(path) DO UPDATE SET raw=excluded.raw, size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, head_md5=excluded.head_md5",
                    (ident.display, ident.raw, ident.size, ident.mtime_ns, ident.head_md5),
                )
                row = self.conn.execute("SELECT id FROM inputs WHERE path=?", (ident.display,)).fetchone()
                self._inputs[str(path)] = int(row[0])
        except sqlite3.Error as exc:
            raise _describe(self.path, exc) from None

    def input_id(self, path: str) -> int:
        known = self._inputs.get(path)
        if known is None:
            self.register_inputs([Path(path)])
            known = self._inputs[path]
        return known

    def record(self, outcomes: Iterable[Outcome], state: Mapping[str, str | None] | None = None,
               conflicts: Iterable[Conflict] = ()) -> int:
        """Writes a batch, the sink's state and the conflicts met, in one transaction.
        Any failure rolls the whole batch back (so nothing is half-recorded and the next
        batch starts clean) and raises JournalError saying what it was. A busy file is
        retried. Returns how many conflicts were recorded, those found here included (a
        failure for an image already ok is not recorded over it)."""
        now = time.time()
        good: list[Outcome] = []
        bad: list[Outcome] = []
        for o in outcomes:
            (bad if o.status is Status.BAD_ROW else good).append(o)
        met = list(conflicts)
        deadline = time.monotonic() + BUSY_PATIENCE
        delay = 0.05
        while True:
            try:
                return self._write(good, bad, state or {}, met, now)
            except sqlite3.OperationalError as exc:
                name = getattr(exc, "sqlite_errorname", "")
                # Busy: a reader holds the file. Cannot open: the rollback file, opened at
                # every commit, found no free descriptor; requests in flight free some.
                if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN")) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                raise _describe(self.path, exc) from None
            except Exception as exc:  # whatever it was, it is said, and the next batch starts clean
                raise _describe(self.path, exc) from None

    def _write(self, good: list[Outcome], bad: list[Outcome], state: Mapping[str, str | None],
               met: list[Conflict], now: float) -> int:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT, [self._row(o, now) for o in good])
            kept = [o for o in good if o.status is not Status.OK and conn.execute(
                "SELECT 1 FROM outcomes WHERE id=? AND status='ok'", (id_to_int(o.image_id),)).fetchone()]
            conn.executemany(
                "INSERT OR REPLACE INTO conflicts VALUES(?,?,?,?,?)",
                [(id_to_int(c.image_id), self.input_id(c.file), c.line, clean_text(c.detail), now) for c in met]
                + [(id_to_int(o.image_id), self.input_id(o.file) if o.file else None, o.line or None,
                    clean_text(f"a later outcome, {o.status.value} ({o.detail}), was not recorded: "
                               "the image is already ok"), now) for o in kept],
            )
            masks = [self._mask_row(o, m, now) for o in good if o.status is Status.OK for m in o.masks]
            if masks:  # masks (issue 22): an ok mask is never replaced by a failure
                conn.executemany(_MASK_UPSERT, masks)
            conn.executemany(
                "INSERT OR IGNORE INTO bad_rows VALUES(?,?,?,?,?)",
                [(self.input_id(o.file), o.line, clean_text(o.detail), clean_text(o.image_id, 64), now) for o in bad],
            )
            for key, value in state.items():
                if value is None:
                    conn.execute("DELETE FROM sink_state WHERE key=?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO sink_state VALUES(?, ?)", (key, value))
            conn.execute("COMMIT")
            return len(met) + len(kept)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise

    def _row(self, o: Outcome, now: float) -> tuple[object, ...]:
        return (
            id_to_int(o.image_id), o.status.value, int(is_final(o.status)), clean_text(o.detail),
            o.http_status, o.nbytes, o.out_bytes, o.width, o.height, o.attempts,
            round(o.seconds, 4), clean_text(o.subset, 64), clean_text(o.ext, 16), o.source.value if o.source else None,
            int(o.verified), self.input_id(o.file) if o.file else None, o.line, now,
            o.orientation, ",".join(f"{v:.6f}" for v in o.crop) if o.crop else None,
            clean_text(o.location, 2048) or None, o.sha256, clean_text(o.url, 2048) or None,
            clean_text(o.original_md5, 64) if o.original_md5 else None, o.original_size,
        )

    def _mask_row(self, o: Outcome, m: MaskOutcome, now: float) -> tuple[object, ...]:
        location = mask_location(o.location, o.subset, o.image_id, m.box_id) if m.status is Status.OK else None
        return (id_to_int(o.image_id), clean_text(m.box_id, 64), clean_text(m.label, 64), m.status.value,
                int(is_final(m.status)), clean_text(m.detail), location, m.width, m.height, m.nbytes, now)

    def unfound(self, shard: str, kept: Collection[str], detail: str) -> int:
        """Turns the ok rows located in `shard` ("subset/name.tar") whose ImageID is not
        in `kept` into `damaged` (retryable, fetched again by this very run): recovery
        found their samples gone from the output. Returns how many rows changed."""
        prefix = shard + "#"
        keep = {k.lower() for k in kept}
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            # No index on location: a full scan, paid only when recovery found a loss.
            rows = conn.execute("SELECT id, location FROM outcomes WHERE status='ok' AND substr(location, 1, ?) = ?",
                                (len(prefix), prefix)).fetchall()
            lost = [(clean_text(detail), rid) for rid, loc in rows if str(loc)[len(prefix):].lower() not in keep]
            conn.executemany("UPDATE outcomes SET status='damaged', final=0, detail=? WHERE id=? AND status='ok'", lost)
            conn.execute("COMMIT")
            return len(lost)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise _describe(self.path, exc) from None

    def set_meta(self, key: str, value: str) -> None:
        try:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise _describe(self.path, exc) from None

    def conflicts(self) -> int:
        return int(self._read(lambda: self.conn.execute("SELECT count(*) FROM conflicts").fetchone()[0]))

    def sink_state(self) -> dict[str, str]:
        return self._read(lambda: dict(self.conn.execute("SELECT key, value FROM sink_state")))

    def _read(self, fn: Callable[[], T]) -> T:
        """A read of the writer's own journal; a damaged file is said as such."""
        try:
            return fn()
        except sqlite3.Error as exc:
            raise _describe(self.path, exc) from None

    def set_progress(self, *, running: bool, planned: int | None, skipped: int, processed: int, rate: float | None,
                     hosts: str | None = None) -> None:
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO progress VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                (self.shard.tag, os.getpid(), socket.gethostname(), self.started, time.time(),
                 int(running), planned, skipped, processed, rate, hosts),
            )
        except sqlite3.Error as exc:
            raise _describe(self.path, exc) from None

    # masks (issue 22): the masks still owed for images already written, and their outcomes
    def written_frames(self, image_ids: Iterable[str]) -> list[WrittenFrame]:
        """The ok images among `image_ids`, with their frame and their masks' states
        (box_id → (status, final)): what a rerun with --masks needs to fetch the masks
        not yet ok (or final) of images it will not fetch again."""
        out: list[WrittenFrame] = []
        ids = [id_to_int(i) for i in image_ids]

        def read(chunk: list[int]) -> None:
            marks = ",".join("?" * len(chunk))
            masks: dict[int, dict[str, tuple[str, bool]]] = {}
            for rid, box_id, status, final in self.conn.execute(
                    f"SELECT id, box_id, status, final FROM masks WHERE id IN ({marks})", chunk):
                masks.setdefault(int(rid), {})[str(box_id)] = (str(status), bool(final))
            for rid, subset, location, w, h, orientation, crop in self.conn.execute(
                    "SELECT id, subset, coalesce(location, ''), width, height, coalesce(nullif(orientation, 0), 1), "
                    f"crop FROM outcomes WHERE status='ok' AND id IN ({marks})", chunk):
                box = tuple(float(v) for v in str(crop).split(",")) if crop else None
                out.append(WrittenFrame(int_to_id(int(rid)), str(subset), str(location), int(w or 0), int(h or 0),
                                        int(orientation), box if box is None or len(box) == 4 else None,
                                        masks.get(int(rid), {})))

        for k in range(0, len(ids), 500):
            self._read(functools.partial(read, ids[k : k + 500]))
        return out

    def record_masks(self, written: Iterable[tuple[Outcome, Iterable[MaskOutcome]]]) -> None:
        """Masks written for images already in the journal (their outcome unchanged)."""
        now = time.time()
        rows = [self._mask_row(o, m, now) for o, masks in written for m in masks]
        if not rows:
            return
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_MASK_UPSERT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise _describe(self.path, exc) from None

    def mask_counts(self) -> dict[str, int]:
        return self._read(lambda: {str(s): int(n) for s, n in
                                   self.conn.execute("SELECT status, count(*) FROM masks GROUP BY status")})

    def done_set(self, *, retry_failed: bool) -> DoneSet:
        """Ids this task must not request again: every final outcome, or with
        retry_failed only the ok ones."""
        return self._read(lambda: load_done(self.conn, _done_where(retry_failed)))


def _done_where(retry_failed: bool) -> str:
    return "status='ok'" if retry_failed else "final=1"


def _other_splits(state_dir: Path, shard: Shard) -> list[Path]:
    """The journals of a different sharding than `shard`'s (the run was re-split)."""
    return [p for p in journal_files(state_dir) if not p.name.endswith(f"-of-{shard.count}.sqlite")]


def _read_other(path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    """fn over another task's journal, read-only; a file that is not a journal, or is
    damaged, is said as such."""
    conn = connect(path, readonly=True)
    try:
        why = foreign_schema(conn, complete=True)
        if why is not None:
            raise OutputError(not_a_journal(path, why))
        return fn(conn)
    except sqlite3.Error as exc:
        raise _describe(path, exc) from None
    finally:
        conn.close()


def other_done_sets(state_dir: Path, shard: Shard, *, retry_failed: bool) -> list[DoneSet]:
    """Done ids from journals of a different sharding (the run was re-split): their
    images may now belong to this task and must not be fetched again."""
    return [_read_other(path, lambda conn: load_done(conn, _done_where(retry_failed)))
            for path in _other_splits(state_dir, shard)]


def other_sink_states(state_dir: Path, shard: Shard) -> list[dict[str, str]]:
    """The sink state of the journals of other splits whose task had this task's index.
    Output names carry a task's index, not its split, so after a re-split what such a
    journal committed (the durable length of a shard it left open) sits under this
    task's names: its sink must keep it, not clean it up as its own leftover."""
    prefix = f"journal-{shard.index}-of-"
    return [_read_other(path, lambda conn: {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM sink_state")})
            for path in _other_splits(state_dir, shard) if path.name.startswith(prefix)]


def take_lock(path: Path, purpose: str, busy: Callable[[str], str], *, required: bool = True) -> int:
    """The writer lock of a journal (an fcntl lock on its .lock file), held until the
    descriptor is closed. When another process holds it, OutputError(busy(holder)),
    where holder says who ("pid 12 on node3", prefixed by what it does). Not
    `required`: -1 when the filesystem takes no locks at all (an NFS mount without
    its lock service), rather than calling that busy."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not required and exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            os.close(fd)
            return -1
        holder = clean_text(os.pread(fd, 200, 0).decode("utf-8", "replace").strip(), 200)
        os.close(fd)
        raise OutputError(busy(holder or "unknown")) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{purpose}pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return fd


class HeldJournals:
    """Every journal of a state dir, locked against `download` for as long as a command
    that changes rows after the fact (`verify`) runs; and that command's one write.
    Raises OutputError at once when a download holds one of them."""

    def __init__(self, state_dir: Path, purpose: str) -> None:
        self.paths = journal_files(state_dir)
        self._fds: list[int] = []
        try:
            for path in self.paths:
                self._fds.append(take_lock(path.with_suffix(".lock"), f"{purpose}, ", self._busy(path, purpose)))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _busy(path: Path, purpose: str) -> Callable[[str], str]:
        return lambda holder: (f"another oidownload process ({holder}) is writing {path}; {purpose} changes its "
                               "rows only while no download of that shard runs: wait for it, or stop it first")

    def __enter__(self) -> HeldJournals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def mark_damaged(self, damaged: Mapping[str, str]) -> int:
        """Turns the ok rows of these ImageIDs into `damaged` (retryable, so the next
        download fetches exactly them again), with the reason as detail, in every
        journal that has them: a journal of another sharding counts them done too.
        Returns how many rows changed."""
        rows = [(clean_text(detail), id_to_int(image_id)) for image_id, detail in damaged.items()]
        changed = 0
        for path in self.paths:
            conn = connect(path)
            try:
                # A reader (`report`) may hold the file: wait as long as the message on
                # giving up says (connect's own wait is 30 s).
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_PATIENCE * 1000)}")
                conn.execute("BEGIN IMMEDIATE")
                # rowcount sums the rows each UPDATE changed, not the triggers' writes.
                changed += conn.executemany("UPDATE outcomes SET status='damaged', final=0, detail=? "
                                            "WHERE id=? AND status='ok'", rows).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise _describe(path, exc) from None
            finally:
                conn.close()
        return changed

