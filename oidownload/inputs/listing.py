"""What the input lists hold, read as the run reads them: this task's shard, an optional
id list, and not the ones the journal says are done, decided from the raw ImageID
before a row is parsed; the ids of a subset; why a selection came out empty; the
selected rows written back out.
"""

from __future__ import annotations

import collections
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Protocol

from oidownload.core.errors import ConfigError
from oidownload.core.ids import ID_RE
from oidownload.core.records import Conflict, Row
from oidownload.core.shard import Shard
from oidownload.inputs.idset import SeenIds
from oidownload.inputs.rows import RowFilter, iter_rows, read_header


class DoneIds(Protocol):
    """The journal's done-set, as the filter asks it (state.journal.DoneSet)."""

    def meet(self, raw_id: str) -> int: ...


class SelectionFilter(RowFilter):
    """Counts what it skips as done, so --limit counts rows of the selection whether or
    not an earlier run already finished them (a rerun of the same command is a no-op).

    One ImageID is one image: a later row of an id already met in this run, or already
    done, is skipped without a request and counted once (`duplicates`). The first row
    wins; a later one whose OriginalURL or OriginalMD5 differs is a `Conflict`."""

    def __init__(self, shard: Shard, done: DoneIds | None = None, ids: Container[str] | None = None) -> None:
        self.shard = shard
        self.done = done
        self.ids = ids
        self.done_skipped = 0
        self.duplicates = 0
        self.seen = SeenIds()

    def skip(self, raw_id: str) -> bool:
        if self.ids is not None and raw_id.lower() not in self.ids:
            return True
        if self.shard.count > 1 and not self.shard.owns(raw_id):
            return True
        # The done-set reads an id as a number, which would take '+1…', '0x…', '1_2…', ' 1…'
        # or Arabic-Indic digits for a finished id: only an id the row check accepts
        # may be skipped as done, so every other spelling ends as a bad row.
        if self.done is not None and ID_RE.fullmatch(raw_id):
            met = self.done.meet(raw_id)
            if met == 1:
                self.done_skipped += 1
            elif met == 2:
                self.duplicates += 1
            return met != 0
        return False

    def admit(self, row: Row) -> Row | Conflict | None:
        """The row when it is the first of its ImageID in this run; None for a repeat
        that agrees with the first; a Conflict for one that does not."""
        fingerprint = hash((row.original_url, row.original_md5)) & 0xFFFFFFFF
        first = self.seen.first(row.image_id, fingerprint)
        if first is None:
            return row
        self.duplicates += 1
        if first == fingerprint:
            return None
        return Conflict(row.image_id, row.file, row.line,
                        f"{row.file}:{row.line}: ImageID {row.image_id} came earlier in this run with another "
                        "OriginalURL or OriginalMD5; the first row wins and this one was not fetched")


def listed_ids(inputs: tuple[Path, ...], subsets: frozenset[str], ids: Container[str] | None) -> Iterator[str]:
    """The ImageIDs of the input rows in --subset (and in ids, when given), streamed."""
    accept = (lambda r: r.subset in subsets) if subsets else None
    for path in inputs:
        for row in iter_rows(path, read_header(path), SelectionFilter(Shard(), ids=ids), accept):
            if isinstance(row, Row):
                yield row.image_id


class _Counting(RowFilter):
    """Keeps rows of the id selection (or all) and counts what it sees."""

    def __init__(self, ids: Container[str] | None) -> None:
        self.ids = ids
        self.rows = 0
        self.in_ids = 0

    def skip(self, raw_id: str) -> bool:
        self.rows += 1
        if self.ids is not None and raw_id.lower() not in self.ids:
            return True
        self.in_ids += 1
        return False


def empty_cause(inputs: tuple[Path, ...], *, subsets: frozenset[str], ids: frozenset[str] | None,
                ids_from: str = "--ids") -> str | None:
    """None when some row of the inputs is selected, whichever task's share it falls in;
    otherwise why none is: the subsets the input has, or the ids that are not in it.
    Reads the inputs once more, which only a run that selected nothing pays for."""
    counting = _Counting(ids)
    seen: collections.Counter[str] = collections.Counter()
    for path in inputs:
        for row in iter_rows(path, read_header(path), counting, None):
            if isinstance(row, Row):
                if not subsets or row.subset in subsets:
                    return None
                seen[row.subset] += 1
    names = ", ".join(str(p) for p in inputs)[:300]
    if not counting.rows:
        return f"the input ({names}) has no rows"
    if ids is not None and not ids:
        return f"{ids_from} picked no image"
    if ids is not None and not counting.in_ids:
        return (f"none of the {len(ids)} image(s) of {ids_from} is in the input ({names}, {counting.rows} rows); "
                "is it a list of another subset or version?")
    found = ", ".join(f"{s!r} ({n} rows)" for s, n in seen.most_common(10))
    close = sorted({s for s in seen for want in subsets if s.lower() == want.lower()})
    hint = f"; did you mean --subset {' --subset '.join(close)}? (subsets match exactly)" if close else ""
    where = " of the selected images" if ids is not None else ""
    return f"--subset {' '.join(sorted(subsets))} matched no row; the Subset values{where} in the input are {found}{hint}"


def write_selected(inputs: tuple[Path, ...], dest: Path, *, subsets: frozenset[str],
                   ids: frozenset[str] | None, limit: int | None) -> int:
    """The selected rows, fields as they were read, under the inputs' header (V4+ when
    the inputs mix V3 and V4+: V3 rows get an empty Rotation)."""
    import csv

    from oidownload.core.fsio import atomic_file
    from oidownload.inputs.rows import V4_COLUMNS, Format

    for path in inputs:
        if _same_file(path, dest):
            raise ConfigError(f"-o {dest} is the input {path}: writing it would lose the rows being read; "
                              "pick another file")
    formats = [read_header(p) for p in inputs]
    header = V4_COLUMNS if Format.V4 in formats else formats[0].value
    accept = (lambda r: r.subset in subsets) if subsets else None
    n = 0
    with atomic_file(dest) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for path, fmt in zip(inputs, formats, strict=True):
            for row in iter_rows(path, fmt, SelectionFilter(Shard(), ids=ids), accept):
                if limit is not None and n >= limit:
                    break
                if isinstance(row, Row):
                    w.writerow(list(row.fields) + [""] * (len(header) - len(row.fields)))
                    n += 1
    return n


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (another spelling, a symlink, a hard link)."""
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet): not the same file
