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
from .records import Row
from .rows import ID_RE, RowFilter, iter_rows, read_header
from .shard import Shard


class SelectionFilter(RowFilter):
    """Counts what it skips as done, so --limit counts rows of the selection whether or
    not an earlier run already finished them (a rerun of the same command is a no-op)."""

    def __init__(self, shard: Shard, done: Container[str] | None = None, ids: Container[str] | None = None) -> None:
        self.shard = shard
        self.done = done
        self.ids = ids
        self.done_skipped = 0

    def skip(self, raw_id: str) -> bool:
        if self.ids is not None and raw_id.lower() not in self.ids:
            return True
        if self.shard.count > 1 and not self.shard.owns(raw_id):
            return True
        # The done-set reads an id as a number, which would take '+1…', '0x…', '1_2…', ' 1…'
        # or Arabic-Indic digits for a finished id: only an id the row check accepts
        # may be skipped as done, so every other spelling ends as a bad row.
        if self.done is not None and ID_RE.fullmatch(raw_id) and raw_id in self.done:
            self.done_skipped += 1
            return True
        return False


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
    import os

    from .rows import V4_COLUMNS, Format

    formats = [read_header(p) for p in inputs]
    header = V4_COLUMNS if Format.V4 in formats else formats[0].value
    accept = (lambda r: r.subset in subsets) if subsets else None
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for path, fmt in zip(inputs, formats, strict=True):
            for row in iter_rows(path, fmt, SelectionFilter(Shard(), ids=ids), accept):
                if limit is not None and n >= limit:
                    break
                if isinstance(row, Row):
                    w.writerow(list(row.fields) + [""] * (len(header) - len(row.fields)))
                    n += 1
    os.replace(tmp, dest)
    return n
