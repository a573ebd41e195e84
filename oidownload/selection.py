"""Which rows this run asks for: this task's shard, an optional id list, and not the
ones the journal says are done. Decided from the raw ImageID, before a row is parsed.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import ClassFilter, select_ids
from .classes import MID_RE, ClassDescriptions
from .errors import ConfigError
from .records import Row
from .rows import RowFilter, iter_rows, read_header
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
        if self.done is not None and raw_id in self.done:
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
    warnings: list[str] = field(default_factory=list)
    # Where `ids` came from, in words, for the message of an empty selection.
    ids_from: str = "--ids"


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
        mids = {n.strip() for n in class_names if MID_RE.fullmatch(n.strip())}
        names = [n for n in class_names if not MID_RE.fullmatch(n.strip())]
        described: ClassDescriptions | None = None
        if names:
            if class_descriptions is None:
                raise ConfigError("class names need --class-descriptions (class-descriptions.csv); MIDs like /m/0152hh do not")
            described = ClassDescriptions.load(class_descriptions)
            mids |= described.resolve(names)
        if not annotations:
            raise ConfigError("--class needs --annotations: the box or image-label CSVs to select from")
        flt = ClassFilter(frozenset(mids), **class_filter)  # type: ignore[arg-type]
        found: set[str] = set()
        picked = select_ids(list(annotations), flt, within=ids, found=found)
        result.classes = frozenset(mids)
        result.ids = frozenset(picked)
        result.ids_from = f"the class selection ({len(picked)} images in the annotations)"
        result.notes.append(f"{len(picked)} images carry {len(mids)} selected class(es)")
        unmatched = sorted(mids - found)
        if unmatched:
            shown = ", ".join(f"{described.name(m)} ({m})" if described and described.name(m) != m else m
                              for m in unmatched[:20])
            result.warnings.append(
                f"no row of the annotations ({', '.join(str(a) for a in annotations)[:300]}) carries class(es) "
                f"{shown}{' ...' if len(unmatched) > 20 else ''} with the chosen filters"
            )
    if limit is not None and seed is not None:
        accept = (lambda r: r.subset in subsets) if subsets else None
        rows = (
            row.image_id
            for path in inputs
            for row in iter_rows(path, read_header(path), SelectionFilter(Shard(), ids=result.ids), accept)
            if isinstance(row, Row)
        )
        result.ids = sample(rows, limit, seed)  # nsmallest keeps only `limit` ids in memory
        result.ids_from = f"the sample of seed {seed}"
        result.notes.append(f"sampled {len(result.ids)} of the selection with seed {seed}")
    return result


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
