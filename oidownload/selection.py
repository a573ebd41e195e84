"""Which rows this run asks for: this task's shard, an optional id list, and not the
ones the journal says are done. Decided from the raw ImageID, before a row is parsed.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import ClassFilter, select_ids
from .classes import MID_RE, ClassDescriptions
from .errors import ConfigError
from .idset import SeenIds
from .journal import DoneSet
from .records import Conflict, Row
from .rows import RowFilter, iter_rows, read_header
from .shard import Shard


class SelectionFilter(RowFilter):
    """Counts what it skips as done, so --limit counts rows of the selection whether or
    not an earlier run already finished them (a rerun of the same command is a no-op).

    One ImageID is one image: a later row of an id already met in this run, or already
    done, is skipped without a request and counted once (`duplicates`). The first row
    wins; a later one whose OriginalURL or OriginalMD5 differs is a `Conflict`."""

    def __init__(self, shard: Shard, done: DoneSet | None = None, ids: Container[str] | None = None) -> None:
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
        if self.done is not None:
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


def sample_key(seed: int, image_id: str) -> bytes:
    """A stable pseudo-random rank: the same seed picks the same images whatever the
    order of the rows, the number of input files or the number of shards."""
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def sample(ids: Iterable[str], limit: int, seed: int) -> frozenset[str]:
    return frozenset(heapq.nsmallest(limit, ids, key=lambda i: sample_key(seed, i)))


@dataclass
class Plan:
    """The id-level selection worked out before a run, and what it came from."""

    ids: frozenset[str] | None
    classes: frozenset[str] = frozenset()
    annotations: tuple[Path, ...] = ()
    class_descriptions: Path | None = None
    notes: list[str] = field(default_factory=list)


def plan(
    inputs: tuple[Path, ...],
    *,
    subsets: frozenset[str],
    ids: frozenset[str] | None,
    class_names: list[str],
    class_descriptions: Path | None,
    annotations: tuple[Path, ...],
    class_filter: dict[str, object],
    limit: int | None,
    seed: int | None,
) -> Plan:
    """Resolves classes to MIDs, scans the annotation files for the images that carry
    them, intersects with --ids, and samples --limit rows when a --seed is given.
    Memory grows with the selected images, not with the files."""
    result = Plan(ids, annotations=annotations, class_descriptions=class_descriptions)
    if class_names:
        mids = {n for n in class_names if MID_RE.fullmatch(n.strip())}
        names = [n for n in class_names if not MID_RE.fullmatch(n.strip())]
        if names:
            if class_descriptions is None:
                raise ConfigError("class names need --class-descriptions (class-descriptions.csv); MIDs like /m/0152hh do not")
            mids |= ClassDescriptions.load(class_descriptions).resolve(names)
        if not annotations:
            raise ConfigError("--class needs --annotations: the box or image-label CSVs to select from")
        flt = ClassFilter(frozenset(mids), **class_filter)  # type: ignore[arg-type]
        picked = select_ids(list(annotations), flt, within=ids)
        result.classes = frozenset(mids)
        result.ids = frozenset(picked)
        result.notes.append(f"{len(picked)} images carry {len(mids)} selected class(es)")
    if limit is not None and seed is not None:
        accept = (lambda r: r.subset in subsets) if subsets else None
        rows = (
            row.image_id
            for path in inputs
            for row in iter_rows(path, read_header(path), SelectionFilter(Shard(), ids=result.ids), accept)
            if isinstance(row, Row)
        )
        result.ids = sample(rows, limit, seed)  # nsmallest keeps only `limit` ids in memory
        result.notes.append(f"sampled {len(result.ids)} of the selection with seed {seed}")
    return result


def write_selected(inputs: tuple[Path, ...], dest: Path, *, subsets: frozenset[str],
                   ids: frozenset[str] | None, limit: int | None) -> int:
    """The selected rows, fields as they were read, under the inputs' header (V4+ when
    the inputs mix V3 and V4+: V3 rows get an empty Rotation)."""
    import csv

    from .fsio import atomic_file
    from .rows import V4_COLUMNS, Format

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
