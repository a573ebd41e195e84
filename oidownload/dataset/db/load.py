"""`oidownload db load PATH...`: files, folders and V3 .tar.gz archives → the database.

Every path is recognised before anything is loaded. Each file loads in one transaction
that also records it in loaded_files, so a killed load leaves no partial rows and a
rerun skips what committed; a file whose size or mtime changed is reloaded, its old
rows replaced. Indexes are built once, after the data. Files stream in constant memory.
"""

from __future__ import annotations

import functools
import gc
import gzip
import hashlib
import io
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, cast

from oidownload.core.errors import InputError
from oidownload.dataset.db import Database, connect, schema
from oidownload.dataset.db.formats import (
    LABEL_COPY_COLUMNS,
    STANDARD_LABELS,
    Bad,
    Detected,
    FileKind,
    Tally,
    annotation_rows,
    class_rows,
    detect,
    image_rows,
    label_rows,
    table_columns,
)
from oidownload.dataset.hierarchy import Hierarchy
from oidownload.dataset.kinds import DB_LOAD, KINDS, LABELS, NARRATIVES, AnnotationKind
from oidownload.dataset.narratives import NARRATIVE_LINE, narrative_rows
from oidownload.inputs.csvrecords import then_lines
from oidownload.inputs.text import MAX_LINE, bounded_lines, open_text

# Class names first (box rows are checked against them), then annotations (3), mid lists last.
_ORDER = {FileKind.CLASSES.value: 0, FileKind.HIERARCHY.value: 1, FileKind.IMAGES.value: 2, FileKind.MID_LIST.value: 9}
_SUFFIXES = (".csv", ".csv.gz", ".gz", ".json", ".tar.gz", ".tgz", ".txt", ".jsonl")
BAD_ROWS_SHOWN = 10  # per file; the rest are counted
_TEXT_BUFFER = 1 << 20


@dataclass
class Item:
    """One thing to load: a file, or a member of an archive."""

    key: str  # loaded_files.path
    detected: Detected
    size: int
    mtime_ns: int
    # The text's lines, header included, bounded as the download bounds them: None
    # stands for a line over rows.MAX_LINE characters, read past and never held.
    lines: Callable[[], AbstractContextManager[Iterator[str | None]]]
    # Of the bytes read (after any gunzip), as the lines are: the same content under
    # two names (an archive's member and the file unpacked from it) is loaded once.
    digest: Any = field(default_factory=hashlib.sha256)


@dataclass
class FileResult:
    key: str
    kind: str
    state: str  # loaded, reloaded, unchanged, skipped
    rows: int = 0
    bad_rows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of this process: the PostgreSQL server's own work is not in it
    bad_samples: list[str] = field(default_factory=list)
    same_as: str = ""  # a duplicate's: the file already loaded with the same content


@dataclass
class LoadResult:
    files: list[FileResult] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _first_line(f: IO[str], name: str) -> str:
    """At most MAX_LINE characters: a longer first line is no header detect() knows."""
    try:
        return f.readline(MAX_LINE)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read: {exc}") from None


def _plain_item(path: Path, narrative_traces: bool = False) -> Item:
    key = str(path.resolve())
    st = path.stat()
    digest = hashlib.sha256()
    if path.name.endswith(".json"):
        Hierarchy.load(path)  # refuse a wrong shape before anything is loaded
        return Item(key, Detected(FileKind.HIERARCHY, ()), st.st_size, st.st_mtime_ns,
                    lambda: _file_lines(path, digest), digest)
    with open_text(path) as f:
        first = _first_line(f, str(path))
    found = detect(path.name, first)
    if found is None:
        raise InputError(
            f"{path}: not a file oidownload can load (found {first.strip()[:100]!r}); expected an Open Images "
            "image list, label or box CSV, class descriptions or the class hierarchy JSON; leave it out"
        )
    if isinstance(found.kind, AnnotationKind):
        found.kind.require(DB_LOAD, str(path))
    limit = NARRATIVE_LINE if found.kind is NARRATIVES else MAX_LINE  # a narrative with traces is a long line
    if found.kind is NARRATIVES and narrative_traces:  # kept only when asked: a full file's traces are 16 GB
        found = Detected(NARRATIVES, (*found.columns, "Traces"))
    return Item(key, found, st.st_size, st.st_mtime_ns, lambda: _file_lines(path, digest, limit), digest)


@contextmanager
def _file_lines(path: Path, digest: Any, limit: int = MAX_LINE) -> Iterator[Iterator[str | None]]:
    try:
        with open(path, "rb") as probe:
            gz = probe.read(2) == b"\x1f\x8b"
        binary = cast(IO[bytes], gzip.open(path, "rb") if gz else open(path, "rb"))  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    hashed = io.BufferedReader(_Hashing(binary, digest), _TEXT_BUFFER)
    with io.TextIOWrapper(hashed, encoding="utf-8-sig", errors="oidownload-replace", newline="") as f:
        yield bounded_lines(f, limit)


@contextmanager
def _member_lines(first: str, rest: TextIO) -> Iterator[Iterator[str | None]]:
    yield then_lines([first], rest)  # `first` may be the head of an over-long line: read past its rest


def expand(paths: Iterable[Path], narrative_traces: bool = False) -> tuple[list[Item], list[Path]]:
    """Plain files (recognised now, or refused) and archives (read as they load)."""
    items: list[Item] = []
    archives: list[Path] = []
    for top in paths:
        if not top.exists():
            raise InputError(f"{top}: no such file or folder")
        # Hidden files and folders are passed over: `metadata` keeps the V3 archives it
        # unpacked in DEST/.archives/, and loading them too would load every row twice.
        found = sorted(p for p in top.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(top).parts)) if top.is_dir() else [top]
        for path in found:
            if top.is_dir() and not path.name.endswith(_SUFFIXES):
                raise InputError(f"{path}: not a file oidownload can load (in {top}); move it out or name the files")
            if _is_archive(path):
                archives.append(path)
            else:
                items.append(_plain_item(path, narrative_traces))
    keys = [i.key for i in items]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise InputError(f"{dup} is named twice")
    return items, archives


def _archive_items(path: Path) -> Iterator[tuple[Item | None, str]]:
    """The members of a tar archive, streamed (no extraction to disk): an Item for each
    known one, or None with the reason it is skipped. Each is loaded before the next
    is read, as a streamed tar cannot go back."""
    st = path.stat()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = f"{path.resolve()}!{member.name}"
                raw = tar.extractfile(member)
                if raw is None:
                    continue
                if member.name.endswith(".json"):
                    yield None, f"{name}: a JSON member; load the hierarchy file by itself"
                    continue
                digest = hashlib.sha256()
                hashed = io.BufferedReader(_Hashing(_gunzip_if_needed(raw), digest), _TEXT_BUFFER)
                text = io.TextIOWrapper(hashed, encoding="utf-8-sig", errors="replace", newline="")
                first = text.readline(MAX_LINE)
                found = detect(Path(member.name).name, first)
                if found is None:
                    yield None, f"{name}: not a file oidownload can load; skipped"
                    continue
                if isinstance(found.kind, AnnotationKind) and DB_LOAD not in found.kind.supported:
                    yield None, f"{name}: {found.kind.what} are recognised but not yet supported by `{DB_LOAD}`; skipped"
                    continue
                mtime = int(member.mtime) * 1_000_000_000 ^ st.st_size  # changes when the archive does
                yield Item(name, found, member.size, mtime, functools.partial(_member_lines, first, text), digest), ""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InputError(f"{path}: not a readable tar archive ({exc})") from None


class _Forward(io.RawIOBase):
    """A forward-only view of a streamed tar member: tarfile's own object answers
    seekable() by asking a stream that cannot, which TextIOWrapper does ask."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Hashing(io.RawIOBase):
    """A read-only view of a stream that feeds every byte read to a hash."""

    def __init__(self, f: IO[bytes], digest: Any) -> None:
        self._f = f
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        self._digest.update(data)
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


class _Same(Exception):
    """The content just read was loaded before under another name."""

    def __init__(self, other: str) -> None:
        super().__init__(other)
        self.other = other


DUPLICATE = "duplicate"  # loaded_files.kind of a file skipped for its content; columns: the other's path


def _gunzip_if_needed(raw: IO[bytes]) -> IO[bytes]:
    buffered = io.BufferedReader(_Forward(raw), _TEXT_BUFFER)
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    return buffered


class Loader:
    def __init__(self, db: Database, *, strict: bool, log: Callable[[str], None]) -> None:
        self.db = db
        self.strict = strict
        self.log = log
        self.hierarchy_changed = False
        self._known_mids: set[str] | None = None

    def known_mids(self) -> set[str] | None:
        if self._known_mids is None:
            mids = {r[0] for r in self.db.execute("SELECT mid FROM classes")}
            self._known_mids = mids or None
        return self._known_mids

    def load(self, item: Item) -> FileResult:
        kind, name = item.detected.kind, item.detected.kind_name
        if kind in (FileKind.MID_LIST, FileKind.TRIPLETS):
            return FileResult(item.key, name, "skipped")
        old = self.db.execute("SELECT id, size, mtime_ns, kind, columns FROM loaded_files WHERE path = ?", (item.key,))
        # A narratives file asked for again with (or without) its traces is loaded again.
        same_columns = kind is not NARRATIVES or str(old[0][4]) == ",".join(item.detected.columns) if old else True
        if old and (old[0][1], old[0][2]) == (item.size, item.mtime_ns) and same_columns:
            if old[0][3] == DUPLICATE:
                return FileResult(item.key, name, DUPLICATE, same_as=str(old[0][4]))
            return FileResult(item.key, name, "unchanged")
        started, cpu = time.monotonic(), time.process_time()
        result = FileResult(item.key, name, "reloaded" if old else "loaded")
        try:
            self._load(item, old, result)
        except _Same as same:
            self._skip(item, old, same.other)
            return FileResult(item.key, name, DUPLICATE, same_as=same.other)
        if kind is FileKind.CLASSES:
            self._known_mids = None
        if kind is FileKind.HIERARCHY:
            self.hierarchy_changed = True
        result.seconds, result.cpu_seconds = time.monotonic() - started, time.process_time() - cpu
        return result

    def _skip(self, item: Item, old: list[tuple[Any, ...]], other: str) -> None:
        """Records a file whose content was loaded under another name: skipped, and
        skipped again while its size and mtime stay the same."""
        with self.db.transaction():
            if old:
                self._delete(item.detected, int(old[0][0]))
                self.db.execute("UPDATE loaded_files SET kind = ?, columns = ?, size = ?, mtime_ns = ?, rows = 0, "
                                "bad_rows = 0, loaded_at = ? WHERE id = ?",
                                (DUPLICATE, other, item.size, item.mtime_ns, _now(), int(old[0][0])))
            else:
                self.db.execute("INSERT INTO loaded_files (path, kind, columns, size, mtime_ns, loaded_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (item.key, DUPLICATE, other, item.size, item.mtime_ns, _now()))

    def _load(self, item: Item, old: list[tuple[Any, ...]], result: FileResult) -> None:
        kind = item.detected.kind_name
        with self.db.transaction():
            if old:
                file_id = int(old[0][0])
                self._delete(item.detected, file_id)
                self.db.execute("UPDATE loaded_files SET kind = ?, columns = ?, size = ?, mtime_ns = ?, loaded_at = ? "
                                "WHERE id = ?", (kind, ",".join(item.detected.columns), item.size,
                                                 item.mtime_ns, _now(), file_id))
            else:
                self.db.execute("INSERT INTO loaded_files (path, kind, columns, size, mtime_ns, loaded_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                (item.key, kind, ",".join(item.detected.columns), item.size, item.mtime_ns, _now()))
                file_id = int(self.db.execute("SELECT id FROM loaded_files WHERE path = ?", (item.key,))[0][0])
            try:
                with item.lines() as lines:
                    self._rows(item, lines, file_id, result)
            except (EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError) as exc:
                raise InputError(f"{item.key}: the compressed data is truncated or corrupt ({exc}); "
                                 "nothing of this file was loaded") from None
            except OSError as exc:
                raise InputError(f"{item.key}: read failed: {exc.strerror or exc}") from None
            content = item.digest.hexdigest()
            same = self.db.execute("SELECT path FROM loaded_files WHERE content_sha256 = ? AND id <> ? AND kind = ?",
                                   (content, file_id, kind))
            if same:
                raise _Same(str(same[0][0]))  # rolls this file's rows back
            self.db.execute("UPDATE loaded_files SET rows = ?, bad_rows = ?, content_sha256 = ? WHERE id = ?",
                            (result.rows, result.bad_rows, content, file_id))

    def _delete(self, detected: Detected, file_id: int) -> None:
        name = detected.kind_name
        tables = {FileKind.CLASSES.value: "classes", FileKind.HIERARCHY.value: "class_hierarchy"}
        table = tables.get(name) or (KINDS[name].table if name in KINDS else name)
        self.db.execute(f"DELETE FROM {table} WHERE file_id = ?", (file_id,))

    def _rows(self, item: Item, lines: Iterator[str | None], file_id: int, result: FileResult) -> None:
        kind, header = item.detected.kind, item.detected.columns
        if kind is FileKind.HIERARCHY:
            tree = Hierarchy.load(Path(item.key))  # a plain file (archives skip JSON), read within its bound
            edges = [(p, c, r.value, file_id) for p, c, r in tree.edges()]
            self.db.executemany(
                "INSERT INTO class_hierarchy (parent, child, relation, file_id) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (parent, child, relation) DO UPDATE SET file_id = excluded.file_id", edges)
            result.rows = len(edges)
            return
        tally = Tally()
        bad = self._bad(item, result)
        if kind is NARRATIVES:  # narratives (issue 23): JSON lines, no header line
            with _no_gc():
                self.db.bulk("narratives", [c.name for c in NARRATIVES.columns] + ["file_id"],
                             narrative_rows(lines, file_id, bad, tally, "Traces" in header))
            result.rows, result.bad_rows = tally.rows, tally.bad
            return
        if header:
            next(lines, None)  # the header, already recognised
        if kind is FileKind.CLASSES:
            self.db.executemany(
                "INSERT INTO classes (mid, name, file_id) VALUES (?, ?, ?) "
                "ON CONFLICT (mid) DO UPDATE SET name = excluded.name, file_id = excluded.file_id",
                list(class_rows(lines, bool(header), file_id, bad, tally)))
        elif kind is FileKind.ATTRIBUTES:  # relationships and points (issue 23)
            self.db.executemany(
                "INSERT INTO attributes (mid, name, file_id) VALUES (?, ?, ?) "
                "ON CONFLICT (mid) DO UPDATE SET name = excluded.name, file_id = excluded.file_id",
                list(class_rows(lines, bool(header), file_id, bad, tally)))
        elif kind is FileKind.IMAGES:
            with _no_gc():  # millions of short-lived tuples: the cycle collector only costs time here
                self.db.bulk("images", [*(c.name for c in schema.IMAGES), "file_id"],
                             image_rows(lines, header, file_id, item.key, bad, tally))
        elif kind is LABELS and header == STANDARD_LABELS:
            with _no_gc():
                if self.db.postgres:
                    self.db.copy_text("labels", LABEL_COPY_COLUMNS,
                                      label_rows(lines, file_id, bad, tally, copy_text=True))
                else:
                    self.db.bulk_flat("labels", [*(c.name for c in schema.LABELS), "file_id"],
                                      label_rows(lines, file_id, bad, tally, copy_text=False))
        elif isinstance(kind, AnnotationKind):
            columns = [*(c.name for c in table_columns(kind, header)), "file_id"]
            with _no_gc():
                self.db.bulk(kind.table, columns,
                             annotation_rows(lines, kind, header, file_id, self.known_mids(), bad, tally))
        result.rows, result.bad_rows = tally.rows, tally.bad

    def _bad(self, item: Item, result: FileResult) -> Bad:
        def report(line: int, why: str) -> None:
            message = f"{item.key}:{line}: {why}"
            if self.strict:
                raise InputError(f"{message} (--strict: nothing of this file was loaded)")
            if len(result.bad_samples) < BAD_ROWS_SHOWN:
                result.bad_samples.append(message)

        return report


@contextmanager
def _no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rebuild_closure(db: Database) -> int:
    """class_closure from class_hierarchy: every (ancestor, descendant) pair, itself included."""
    edges = db.execute("SELECT parent, child, relation FROM class_hierarchy")
    children = {c for _, c, _ in edges}
    roots = sorted({p for p, _, _ in edges} - children)
    db.execute("DELETE FROM class_closure")
    if not roots:
        return 0
    tree = Hierarchy.from_edges(roots[0], edges)
    rows = [(a, d, r.depth, r.via_part) for a, d, r in tree.closure()]
    db.executemany("INSERT INTO class_closure (ancestor, descendant, depth, via_part) VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def load(url: str | None, paths: list[Path], *, strict: bool = False,
         log: Callable[[str], None] = lambda _: None, narrative_traces: bool = False) -> LoadResult:
    started = time.monotonic()
    items, archives = expand(paths, narrative_traces)  # every plain file recognised before anything loads
    db = connect(url, create=True)
    try:
        schema.create(db)
        loader = Loader(db, strict=strict, log=log)
        out = LoadResult()
        for item in sorted(items, key=lambda i: _ORDER.get(i.detected.kind_name, 3)):
            out.files.append(_report(loader.load(item), log))
        for archive in sorted(archives, key=lambda p: "class" not in p.name):  # names before boxes
            for member, why in _archive_items(archive):
                if member is None:
                    log(f"oidownload: {why}")
                    continue
                out.files.append(_report(loader.load(member), log))
        if loader.hierarchy_changed:
            with db.transaction():
                rebuild_closure(db)
        log("oidownload: building indexes ...")
        out.indexes = schema.build_indexes(db)
        out.seconds = time.monotonic() - started
        return out
    finally:
        db.close()


def _report(r: FileResult, log: Callable[[str], None]) -> FileResult:
    for sample in r.bad_samples:
        log(f"oidownload: bad row: {sample}")
    more = r.bad_rows - len(r.bad_samples)
    extra = f" ({more} more bad rows not shown)" if more > 0 else ""
    if r.state == DUPLICATE:
        log(f"oidownload: note: skipped {r.key}: the same content as {r.same_as}, already loaded")
    elif r.state in ("loaded", "reloaded"):
        rate = f", {r.rows / r.seconds:,.0f} rows/s" if r.seconds > 0 and r.rows else ""
        rate += f" ({r.rows / r.cpu_seconds:,.0f} a CPU second)" if r.cpu_seconds > 0 and r.rows else ""
        log(f"oidownload: {r.state} {r.key} ({r.kind}): {r.rows} rows, {r.bad_rows} bad{rate}{extra}")
    else:
        log(f"oidownload: {r.state}: {r.key} ({r.kind})")
    return r

