"""`oidownload verify OUT --lock LOCK`: checks a copy of an output against a lock, with
no journal (a folder copied to another machine, shards synced from a bucket). Every
image file or shard member is read and hashed on every core; what the lock lists and
the copy lacks is `missing`, what the copy holds and the lock does not is `extra`, and
bytes whose SHA-256 or size differ are `different`.

Memory stays flat: the lock's ImageIDs wait in a temporary SQLite file, not in a dict,
and the copy is read a file (or a shard) per task.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from oidownload.core.config import OutputKind
from oidownload.core.ids import WRITTEN_ID, is_subset
from oidownload.core.records import clean_text
from oidownload.engine.cpus import usable_cpus
from oidownload.engine.workers import follow_parent, pool_method
from oidownload.provenance.lock import Lock
from oidownload.sinks import Blobs, is_remote, open_blobs
from oidownload.sinks.tar import SHARD_RE

CHUNK = 64  # image files per task; a shard is a task of its own
_IMAGE_RE = re.compile(rf"([0-9a-f]{{3}})/(({WRITTEN_ID})\.[a-z0-9]{{1,5}})")
_BATCH = 10_000

# (location, SHA-256, size) of what a worker read; a problem is (kind, location, why).
Seen = tuple[str, str, int]
Found = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # missing, extra, different
    image_id: str
    where: str
    why: str


@dataclass
class LockCheck:
    expected: int = 0
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)


# -- in the workers -----------------------------------------------------------------------

_blobs: Blobs | None = None


def _init(out: str, parent_pid: int) -> None:
    global _blobs
    follow_parent(parent_pid)
    _blobs = open_blobs(out)


def hash_files(keys: list[str]) -> tuple[list[Seen], list[Found]]:
    assert _blobs is not None, "_init was not run"
    seen, found = [], []
    for key in keys:
        try:
            data = _blobs.read(key)
        except OSError as exc:
            found.append(("unreadable", key, clean_text(str(exc), 200)))
            continue
        seen.append((key, hashlib.sha256(data).hexdigest(), len(data)))
    return seen, found


def hash_shard(key: str) -> tuple[list[Seen], list[Found]]:
    """Every image member of one shard, read in order as any tar reader would; a shard
    cut short is a problem of its own, and its members up to the cut still count."""
    assert _blobs is not None, "_init was not run"
    subset = key.rpartition("/")[0]
    shard = key.rpartition("/")[2]
    seen: list[Seen] = []
    found: list[Found] = []
    path = _blobs.local_path(key)
    try:
        with (open(path, "rb") if path is not None else _as_file(_blobs.read(key))) as f, \
                tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                image_id, _, suffix = member.name.partition(".")
                # Masks (issue 22, `<id>.<BoxID>.mask.png`) and captions (`txt`) are no image of their own.
                if not member.isfile() or suffix in ("json", "txt") or suffix.startswith("original.") or ".mask." in suffix:
                    continue
                data = tar.extractfile(member)
                body = data.read() if data is not None else b""
                if len(body) != member.size:
                    raise tarfile.ReadError(f"{member.name} ends after {len(body)} of its {member.size} bytes")
                seen.append((f"{subset}/{shard}#{image_id}", hashlib.sha256(body).hexdigest(), len(body)))
    except FileNotFoundError as exc:
        found.append(("unreadable", key, clean_text(str(exc), 200)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        found.append(("damaged", key, f"cannot be read to its end: {clean_text(str(exc), 200)}"))
    return seen, found


def _as_file(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


# -- in the main process ------------------------------------------------------------------

class _Expected:
    """The lock's written images, by location, in a temporary SQLite file."""

    def __init__(self, folder: str) -> None:
        self.conn = sqlite3.connect(os.path.join(folder, "expected.sqlite"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("CREATE TABLE expected(location TEXT PRIMARY KEY, id TEXT NOT NULL, sha256 TEXT, "
                          "size INTEGER, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")
        self.conn.execute("CREATE INDEX expected_by_id ON expected(id)")

    def load(self, lines: Iterator[dict[str, object]]) -> int:
        n = 0
        batch: list[tuple[object, ...]] = []
        self.conn.execute("BEGIN")
        for line in lines:
            if line.get("status") != "ok" or not line.get("location"):
                continue
            batch.append((str(line["location"]), str(line["id"]), line.get("sha256"), line.get("size")))
            if len(batch) >= _BATCH:
                n += self._insert(batch)
                batch = []
        n += self._insert(batch)
        self.conn.execute("COMMIT")
        return n

    def _insert(self, batch: list[tuple[object, ...]]) -> int:
        self.conn.executemany("INSERT OR IGNORE INTO expected(location, id, sha256, size) VALUES(?,?,?,?)", batch)
        return len(batch)

    def compare(self, seen: list[Seen], describe: Callable[[str], str]) -> list[Problem]:
        problems = []
        for location, sha, size in seen:
            row = self.conn.execute("SELECT id, sha256, size FROM expected WHERE location=?", (location,)).fetchone()
            if row is None:
                image_id = _id_of(location)
                # A sample fetched again after `verify` went into a new shard; its old copy
                # stays in the old one (shards are never rewritten): not an extra image.
                if "#" not in location or self.conn.execute(
                        "SELECT 1 FROM expected WHERE id=?", (image_id,)).fetchone() is None:
                    problems.append(Problem("extra", image_id, describe(location), "not in the lock"))
                continue
            self.conn.execute("UPDATE expected SET seen=1 WHERE location=?", (location,))
            image_id, want_sha, want_size = row
            if want_sha is not None and sha != want_sha:
                problems.append(Problem("different", image_id, describe(location),
                                        f"SHA-256 {sha} ({size} bytes), the lock says {want_sha} ({want_size} bytes)"))
            elif want_sha is None and want_size is not None and size != want_size:
                problems.append(Problem("different", image_id, describe(location),
                                        f"{size} bytes, the lock says {want_size}"))
        return problems

    def mark(self, location: str) -> None:
        self.conn.execute("UPDATE expected SET seen=1 WHERE location=?", (location,))

    def unseen(self) -> Iterator[tuple[str, str]]:
        cur = self.conn.execute("SELECT id, location FROM expected WHERE seen=0 ORDER BY id")
        while rows := cur.fetchmany(_BATCH):
            yield from rows

    def close(self) -> None:
        self.conn.close()


def _id_of(location: str) -> str:
    tail = location.rpartition("#")[2] if "#" in location else location.rpartition("/")[2]
    return tail.partition(".")[0]


def _subsets(blobs: Blobs) -> list[str]:
    return sorted(s for s in blobs.folders("") if is_subset(s))


def _file_tasks(blobs: Blobs) -> Iterator[list[str]]:
    """Chunks of the image files of a `files` copy: <subset>/<abc>/<ImageID>.<ext> only
    (reports, exports and the state dir are not images)."""
    chunk: list[str] = []
    for subset in _subsets(blobs):
        for abc in sorted(blobs.folders(subset)):
            for name, _ in sorted(blobs.files(f"{subset}/{abc}")):
                m = _IMAGE_RE.fullmatch(f"{abc}/{name}")
                if m is None or m.group(3)[:3] != abc:
                    continue
                chunk.append(f"{subset}/{abc}/{name}")
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def _shard_tasks(blobs: Blobs) -> Iterator[str]:
    for subset in _subsets(blobs):
        for name, _ in sorted(blobs.files(subset)):
            if SHARD_RE.fullmatch(name):
                yield f"{subset}/{name}"


def check_against_lock(out: str, lock_file: Path, *, processes: int | None = None,
                       on_progress: Callable[[LockCheck], None] | None = None) -> LockCheck:
    """Checks the copy at OUT against a lock; InputError when the lock cannot be read."""
    started = time.monotonic()
    lock = Lock.open(lock_file)
    kind = OutputKind(str(lock.header.get("output_format") or "files"))
    blobs = open_blobs(out)
    result = LockCheck()
    processes = processes or usable_cpus().count
    with tempfile.TemporaryDirectory(prefix="oidownload-lock-") as tmp:
        expected = _Expected(tmp)
        try:
            result.expected = expected.load(lock.lines())
            # A bucket is listed here while the pool starts its workers (on demand): the
            # object store's runtime threads must not be forked.
            method = "spawn" if is_remote(out) else pool_method()
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method),
                                       initializer=_init, initargs=(out, os.getpid()))
            try:
                _run(pool, processes, kind, blobs, expected, result, on_progress)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
            for image_id, location in expected.unseen():
                result.problems.append(Problem("missing", image_id, _describe(blobs, location), "not in the copy"))
        finally:
            expected.close()
    result.seconds = time.monotonic() - started
    return result


def _describe(blobs: Blobs, location: str) -> str:
    path, sep, member = location.partition("#")
    return blobs.describe(path) + (f"#{member}" if sep else "")


def _run(pool: ProcessPoolExecutor, processes: int, kind: OutputKind, blobs: Blobs, expected: _Expected,
         result: LockCheck, on_progress: Callable[[LockCheck], None] | None) -> None:
    tasks: Iterator[tuple[Callable[[Any], tuple[list[Seen], list[Found]]], object]]
    if kind is OutputKind.WEBDATASET:
        tasks = ((hash_shard, key) for key in _shard_tasks(blobs))
    else:
        tasks = ((hash_files, chunk) for chunk in _file_tasks(blobs))
    pending: set[Future[tuple[list[Seen], list[Found]]]] = set()
    while True:
        # Bounded: a few tasks per worker in flight, the rest not yet listed.
        while len(pending) < 4 * processes and (task := next(tasks, None)) is not None:
            fn, arg = task
            pending.add(pool.submit(fn, arg))
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            seen, found = fut.result()
            result.checked += len(seen)
            result.problems += expected.compare(seen, lambda loc: _describe(blobs, loc))
            for k, where, why in found:
                if k == "unreadable":  # there, but it cannot be read: not also missing
                    expected.mark(where)
                    result.problems.append(Problem("different", _id_of(where), blobs.describe(where), why))
                else:  # a shard cut short: its lost members are missing, each on its own
                    result.problems.append(Problem(k, "", blobs.describe(where), why))
        if on_progress is not None:
            on_progress(result)
