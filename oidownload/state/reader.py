"""Reading a state dir back: the one read API of `status`, `report`, `annotations`,
`verify` and `gallery`. None of them opens SQLite or rebuilds a path by itself.

Every read is a short transaction over a chunk of rows, so a reader never holds a
running download's journal for long (the writer would have to wait for it).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from oidownload.core.config import OutputKind
from oidownload.core.errors import ConfigError, InputError
from oidownload.core.ids import int_to_id
from oidownload.core.records import Status
from oidownload.inputs.csvrecords import iter_records
from oidownload.inputs.text import is_stream
from oidownload.sinks import Reader, is_remote, open_reader
from oidownload.state.journal import (
    SCHEMA_VERSION,
    connect,
    foreign_schema,
    journal_files,
    not_a_journal,
    shard_counts,
)

STATE_DIR = ".oidownload"
_CHUNK = 20_000
_T = TypeVar("_T")


def local_dest(out: str | Path, dest: Path | None, flag: str) -> Path | None:
    """Checks where a command that writes files (report, annotations, gallery) can put
    them: dest, or (None) its default folder in a local OUT. A bucket cannot take them,
    and each command says so alike, before it reads anything. The default stays None,
    so the command's writer refuses a symlink planted at OUT/<folder>."""
    if dest is None and is_remote(str(out)):
        raise ConfigError(f"{out} is in an object store, where this command cannot write its files: give a local "
                          f"folder with {flag} (the images are read from the bucket)")
    return dest


def default_state_dir(out: str) -> Path:
    """OUT/.oidownload for a local output. An object store cannot hold a journal, so
    a remote output's state lives under $XDG_STATE_HOME (~/.local/state) instead."""
    if not is_remote(out):
        return Path(out) / STATE_DIR
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    scheme, _, rest = out.partition("://")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("_.")[:80]
    digest = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:8]
    return base / "oidownload" / f"{scheme}-{safe}-{digest}"


@dataclass(frozen=True, slots=True)
class StatusCount:
    status: str
    n: int
    bytes: int


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
    hosts: str | None = None  # a journal from before has no such column


@dataclass(frozen=True, slots=True)
class JournalCounts:
    path: Path
    counts: list[StatusCount]
    progress: list[ProgressRow]
    sources: dict[str, int]  # written images per source
    unchecked: dict[str, int] = field(default_factory=dict)  # of those, the ones no hash checked


@dataclass(frozen=True, slots=True)
class DistinctCounts:
    """Counts with each ImageID once, across journals that may overlap."""

    counts: list[StatusCount]
    sources: dict[str, int]
    unchecked: dict[str, int]


@dataclass(frozen=True, slots=True)
class Written:
    """An image the output holds, with what the exports need to place its boxes."""

    image_id: str
    subset: str
    location: str
    ext: str
    width: int
    height: int
    orientation: int
    crop: tuple[float, float, float, float] | None
    source: str
    verified: bool
    out_bytes: int


# masks (issue 22)
@dataclass(frozen=True, slots=True)
class WrittenMask:
    """A mask the output holds (--masks), written in its image's frame: `location` is
    OUT/masks/<subset>/<abc>/<ImageID>_<BoxID>.png relative to OUT (files, stores), or
    `<subset>/<shard>.tar#<ImageID>.<BoxID>.mask.png` (webdataset: the tar member)."""

    image_id: str
    box_id: str
    label: str
    location: str
    width: int
    height: int


@dataclass(frozen=True, order=True, slots=True)
class Entry:
    """One journaled row of one input file, for `report` (ordered by line)."""

    line: int
    image_id: str
    status: str
    detail: str
    http_status: int | None
    attempts: int
    location: str
    source: str


@dataclass(frozen=True, slots=True)
class Joined:
    """A journaled row with its input line's fields, when that line is still its row."""

    entry: Entry
    fields: list[str] | None
    mismatched: bool  # the line now holds another image's row: the input changed


@dataclass(frozen=True, slots=True)
class InputInfo:
    display: str
    raw: bytes | None
    size: int | None
    mtime_ns: int | None
    head_md5: str | None

    @property
    def path(self) -> Path:
        return Path(os.fsdecode(self.raw)) if self.raw else Path(self.display)


@dataclass(frozen=True, slots=True)
class OutputMeta:
    """The output a download recorded in its journal (meta key `output`)."""

    out: str
    kind: OutputKind
    keep_original: bool

    @classmethod
    def parse(cls, value: str) -> OutputMeta | None:
        """None for a value this version cannot read (not JSON, no `out`, an unknown kind)."""
        try:
            d = json.loads(value)
        except ValueError:
            return None
        if not isinstance(d, dict) or "out" not in d:
            return None
        try:
            kind = OutputKind(str(d.get("kind", "files")))
        except ValueError:
            return None
        return cls(str(d["out"]), kind, d.get("keep_original") is True)


# Rows as the journal's schema types them; NULLs are coalesced in the SQL where the
# field takes none.
class _PerSource(NamedTuple):
    source: str
    n: int


class _Latest(NamedTuple):
    """One outcome of an ImageID, to pick its best across journals (distinct_counts)."""

    id: int
    status: str
    nbytes: int
    finished: float
    source: str
    verified: int


class _BadLine(NamedTuple):
    path: str
    line: int


def _written(rid: int, subset: str, location: str, ext: str, width: int, height: int, orientation: int,
             crop: str | None, source: str, verified: int, out_bytes: int) -> Written:
    box = None
    if crop:
        x0, y0, x1, y1 = map(float, crop.split(","))
        box = (x0, y0, x1, y1)
    return Written(int_to_id(rid), subset, location, ext, width, height, orientation, box, source, bool(verified),
                   out_bytes)


def _id_entry(line: int, rid: int, status: str, detail: str, http_status: int | None, attempts: int,
              location: str, source: str) -> Entry:
    """An entry whose ImageID the journal keeps as its integer."""
    return Entry(line, int_to_id(rid), status, detail, http_status, attempts, location, source)


class StateDir:
    def __init__(self, path: Path, out: str = "") -> None:
        self.path = path
        self.out = out or str(path)
        self.journals = journal_files(path)

    @classmethod
    def open(cls, out: str | Path, state_dir: Path | None = None) -> StateDir:
        """The state of an output; InputError when it has no journal."""
        out = str(out)
        path = state_dir or default_state_dir(out)
        found = cls(path, out)
        if not found.journals:
            hint = "" if state_dir else " (if the download used --state-dir, pass the same --state-dir)"
            raise InputError(f"{out} has no journal in {path}: nothing was downloaded there yet{hint}")
        found.check()
        return found

    def check(self) -> None:
        """Refuses any file among the journals that this version cannot read."""
        for journal in self.journals:
            self._check(journal)

    def _check(self, journal: Path) -> None:
        """Refuses a file that is not a journal this version can read, saying why."""
        try:
            conn = connect(journal, readonly=True)
        except sqlite3.Error as exc:
            raise self._damaged(journal, exc) from None
        try:
            why = foreign_schema(conn, complete=True)
        except sqlite3.Error as exc:
            raise self._damaged(journal, exc) from None
        finally:
            conn.close()
        if why is not None:
            raise InputError(not_a_journal(journal, why))
        schema = self._query(journal, "SELECT value FROM meta WHERE key='schema'")
        if schema and str(schema[0][0]).isdigit() and int(str(schema[0][0])) > SCHEMA_VERSION:
            raise InputError(f"{journal} was written by a newer oidownload (journal schema {schema[0][0]}); upgrade oidownload")

    # -- plumbing -------------------------------------------------------------------------
    def _execute(self, journal: Path, sql: str, args: tuple[object, ...]) -> list[Any]:
        # Any: SQLite's values; every caller types them (_rows, _chunks, or as objects).
        try:
            conn = connect(journal, readonly=True)
        except sqlite3.Error as exc:
            raise self._damaged(journal, exc) from None
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._damaged(journal, exc) from None
        finally:
            conn.close()

    def _query(self, journal: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self._execute(journal, sql, args)

    def _rows(self, journal: Path, make: Callable[..., _T], sql: str, args: tuple[object, ...] = ()) -> list[_T]:
        """Each row made into `make`'s type, its columns in `make`'s order."""
        return [make(*row) for row in self._execute(journal, sql, args)]

    @staticmethod
    def _damaged(journal: Path, exc: sqlite3.Error) -> InputError:
        return InputError(
            f"cannot read the journal {journal}: {exc}. If it is damaged, move it aside: the next download "
            "finds the images already in the output again, and `oidownload verify` checks them"
        )

    # -- reads ------------------------------------------------------------------------------
    def counts(self, only: Path | None = None) -> list[JournalCounts]:
        """Counts per status and progress rows, of every journal or `only` one."""
        return [
            JournalCounts(
                j,
                self._rows(j, StatusCount, "SELECT status, n, bytes FROM counts WHERE n > 0"),
                self._rows(j, ProgressRow, "SELECT * FROM progress"),
                self._sources(j),
                self._unchecked(j),
            )
            for j in self.journals
            if only is None or j == only
        ]

    def split(self) -> bool:
        """Whether the journals come from more than one way of splitting the rows (a
        re-split output): then one ImageID may be in several of them."""
        return len(shard_counts(self.path)) > 1

    def distinct_counts(self) -> DistinctCounts:
        """Counts per status, and written images per source, with each ImageID once,
        across journals that may overlap: an id's outcome is its ok if any journal has
        one (the one that fetched it, not a rebuilt journal's record of finding it in
        the output), else its latest. Reads every row (in chunks); `counts` answers at
        once when the journals cannot overlap."""
        tally: dict[str, list[int]] = {}
        sources: dict[str, int] = {}
        unchecked: dict[str, int] = {}

        def add(status: str, nbytes: int) -> None:
            n = tally.setdefault(status, [0, 0])
            n[0] += 1
            n[1] += nbytes

        streams = [self._chunks(j, _Latest, "status, nbytes, finished, coalesce(source, ''), verified", "1")
                   for j in self.journals]
        for _, group in itertools.groupby(heapq.merge(*streams), key=lambda r: r.id):
            rows = list(group)
            oks = [r for r in rows if r.status == "ok"]
            if oks:
                # A rebuilt journal's row knows no source and no bytes: the fetching one wins.
                best = max(oks, key=lambda r: (r.source != "", r.nbytes or 0, bool(r.verified)))
                src = best.source
                sources[src or "unknown"] = sources.get(src or "unknown", 0) + 1
                if not best.verified:
                    unchecked[src or "unknown"] = unchecked.get(src or "unknown", 0) + 1
            else:
                best = max(rows, key=lambda r: r.finished)
            add(best.status, best.nbytes or 0)
        bad: set[_BadLine] = set()
        for j in self.journals:
            bad.update(self._rows(j, _BadLine, "SELECT inputs.path, bad_rows.line FROM bad_rows "
                                               "JOIN inputs ON inputs.id = bad_rows.input"))
        for _ in bad:
            add("bad_row", 0)
        return DistinctCounts([StatusCount(k, n, b) for k, (n, b) in tally.items()], sources, unchecked)

    def _unchecked(self, journal: Path) -> dict[str, int]:
        try:
            rows = self._rows(journal, _PerSource, "SELECT source, n FROM unchecked_counts WHERE n > 0")
        except InputError:  # a journal from before the table: every row once
            rows = self._rows(journal, _PerSource, "SELECT coalesce(source, ''), count(*) FROM outcomes "
                                                   "WHERE status='ok' AND verified=0 GROUP BY 1")
        return {src or "unknown": n for src, n in rows}

    def _sources(self, journal: Path) -> dict[str, int]:
        try:
            rows = self._rows(journal, _PerSource, "SELECT source, n FROM source_counts WHERE n > 0")
        except InputError:
            rows = self._rows(journal, _PerSource,
                              "SELECT coalesce(source, ''), count(*) FROM outcomes WHERE status='ok' GROUP BY 1")
        return {src or "unknown": n for src, n in rows}

    def meta(self, key: str) -> list[str]:
        """A meta value from every journal (each task writes its own)."""
        return [str(r[0]) for j in self.journals for r in self._query(j, "SELECT value FROM meta WHERE key=?", (key,))]

    def outputs(self) -> list[OutputMeta]:
        """The output each task's (last) download recorded, where this version reads it."""
        return [m for m in map(OutputMeta.parse, self.meta("output")) if m is not None]

    def output(self) -> tuple[str, OutputKind]:
        """Where the images went, as the download recorded it."""
        for m in self.outputs():
            return m.out, m.kind
        return self.out, OutputKind.FILES

    def keeps_originals(self) -> bool:
        """Whether the (last) download of any task kept the verified originals."""
        return any(m.keep_original for m in self.outputs())

    def where(self) -> tuple[str, OutputKind]:
        """The output to read images from: the local folder named as OUT (an output that
        was moved or copied is read where it is now, not where it was written), else
        the output the download recorded."""
        out, kind = self.output()
        if not is_remote(self.out) and (Path(self.out).is_dir() or (not is_remote(out) and not Path(out).exists())):
            out = self.out
        return out, kind

    def reader(self) -> Reader:
        return open_reader(*self.where())

    def _chunks(self, journal: Path, make: Callable[..., _T], columns: str, where: str) -> Iterator[_T]:
        """`make(id, *columns)` of a journal's outcomes in id order, read a chunk at a time."""
        last: int | None = None
        while True:
            cond = f"({where})" + ("" if last is None else " AND id > ?")
            rows = self._execute(journal, f"SELECT id, {columns} FROM outcomes WHERE {cond} ORDER BY id LIMIT {_CHUNK}",
                                 () if last is None else (last,))
            for row in rows:
                yield make(*row)
            if len(rows) < _CHUNK:
                return
            last = rows[-1][0]

    def query(self, journal: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """One read-only query of one journal; InputError when it cannot be read."""
        return self._query(journal, sql, args)

    def columns(self, journal: Path) -> set[str]:
        """The outcome columns a journal has: one written by an older version lacks
        those added since, until a download opens it."""
        return {str(r[1]) for r in self._query(journal, "PRAGMA table_info(outcomes)")}

    def outcome_rows(self, journal: Path, columns: str, where: str) -> Iterator[tuple[object, ...]]:
        """(id, *columns) of a journal's outcomes in id order, read a chunk at a time."""
        return self._chunks(journal, _as_tuple, columns, where)

    def written(self) -> Iterator[Written]:
        """Every image whose outcome is ok, across all the journals."""
        cols = ("subset, coalesce(location, ''), ext, coalesce(width, 0), coalesce(height, 0), "
                "coalesce(nullif(orientation, 0), 1), crop, coalesce(source, ''), verified, coalesce(out_bytes, 0)")
        for j in self.journals:
            yield from self._chunks(j, _written, cols, "status='ok'")

    # masks (issue 22)
    def _has_masks(self, journal: Path) -> bool:
        return bool(self._query(journal, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='masks'"))

    def masks(self) -> Iterator[WrittenMask]:
        """Every mask written (status ok), across all the journals, by image then BoxID;
        a journal from before masks (schema < 3) has none."""
        for j in self.journals:
            if not self._has_masks(j):
                continue
            last: tuple[int, str] | None = None
            while True:
                cond = "status='ok'" + ("" if last is None else " AND (id, box_id) > (?, ?)")
                rows = self._execute(j, "SELECT id, box_id, label, coalesce(location, ''), coalesce(width, 0), "
                                        f"coalesce(height, 0) FROM masks WHERE {cond} ORDER BY id, box_id "
                                        f"LIMIT {_CHUNK}", () if last is None else last)
                for rid, box_id, label, location, w, h in rows:
                    yield WrittenMask(int_to_id(int(rid)), str(box_id), str(label), str(location), int(w), int(h))
                if len(rows) < _CHUNK:
                    break
                last = (int(rows[-1][0]), str(rows[-1][1]))

    def mask_counts(self) -> dict[str, int]:
        """Masks by status, across all the journals (empty without --masks)."""
        out: dict[str, int] = {}
        for j in self.journals:
            if self._has_masks(j):
                for status, n in self._query(j, "SELECT status, count(*) FROM masks GROUP BY status"):
                    out[str(status)] = out.get(str(status), 0) + int(str(n))
        return out

    def inputs(self) -> list[InputInfo]:
        seen: dict[str, InputInfo] = {}
        for j in self.journals:
            for info in self._rows(j, InputInfo, "SELECT path, raw, size, mtime_ns, head_md5 FROM inputs ORDER BY id"):
                seen.setdefault(info.display, info)
        return list(seen.values())

    def entries(self, display: str) -> Iterator[Entry]:
        """The journaled rows of one input, in line order, merged across journals."""
        return heapq.merge(*(self._entries(j, display) for j in self.journals))

    def _entries(self, journal: Path, display: str) -> Iterator[Entry]:
        found = self._query(journal, "SELECT id FROM inputs WHERE path=?", (display,))
        if not found:
            return
        input_id = found[0][0]
        yield from heapq.merge(
            self._by_line(journal, _id_entry, "SELECT line, id, status, detail, http_status, attempts, "
                                              "coalesce(location, ''), coalesce(source, '') "
                                              "FROM outcomes WHERE input=? AND line > ? ORDER BY line LIMIT ?", input_id),
            self._by_line(journal, Entry, "SELECT line, raw_id, 'bad_row', detail, NULL, 0, '', '' "
                                          "FROM bad_rows WHERE input=? AND line > ? ORDER BY line LIMIT ?", input_id),
        )

    def conflicts(self, display: str) -> Iterator[Entry]:
        """The rows of one input that lost to an earlier row of their ImageID (status
        `conflict`), in line order, merged across journals."""
        return heapq.merge(*(self._conflicts(j, display) for j in self.journals))

    def _conflicts(self, journal: Path, display: str) -> Iterator[Entry]:
        if not self._query(journal, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='conflicts'"):
            return  # a journal from before conflicts were kept
        found = self._query(journal, "SELECT id FROM inputs WHERE path=?", (display,))
        if found:
            yield from self._by_line(journal, _id_entry, "SELECT line, id, 'conflict', detail, NULL, 0, '', '' "
                                                         "FROM conflicts WHERE input=? AND line > ? ORDER BY line LIMIT ?",
                                     found[0][0])

    def _by_line(self, journal: Path, make: Callable[..., Entry], sql: str, input_id: object) -> Iterator[Entry]:
        last = -1
        while True:
            rows = self._rows(journal, make, sql, (input_id, last, _CHUNK))
            yield from rows
            if len(rows) < _CHUNK:
                return
            last = rows[-1].line

    def joined(self, info: InputInfo, entries: Iterator[Entry] | None = None) -> Iterator[Joined]:
        """The journaled rows of one input (`entries`, default its outcomes) in line order,
        each with its input fields: the file is streamed once, merged by line, and checked
        by ImageID."""
        records = _records_or_nothing(info.path)
        fields_at: tuple[int, list[str] | str] | None = next(records, None)
        for entry in self.entries(info.display) if entries is None else entries:
            while fields_at is not None and fields_at[0] < entry.line:
                fields_at = next(records, None)
            fields = _fields_of(entry, fields_at)
            yield Joined(entry, fields, fields is None and fields_at is not None and entry.status != Status.BAD_ROW)


def _fields_of(entry: Entry, fields_at: tuple[int, list[str] | str] | None) -> list[str] | None:
    """The input fields at the entry's line, if they are that image's."""
    if fields_at is None or fields_at[0] != entry.line or not isinstance(fields_at[1], list):
        return None
    fields = fields_at[1]
    if entry.status == Status.BAD_ROW:
        return fields
    return fields if fields and fields[0].strip().lower() == entry.image_id else None


def _records_or_nothing(path: Path) -> Iterator[tuple[int, list[str] | str]]:
    # A pipe is never opened again: it would wait for a writer, or read another's data.
    if is_stream(path):
        return
    try:
        yield from iter_records(path)
    except InputError:
        return


def _as_tuple(*row: object) -> tuple[object, ...]:
    return row
