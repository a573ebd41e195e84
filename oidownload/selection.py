"""Which rows this run asks for: this task's shard, an optional id list, and not the
ones the journal says are done, decided from the raw ImageID before a row is parsed;
and the up-front plan: classes (expanded through a hierarchy) → MIDs → ImageIDs.
"""

from __future__ import annotations

import collections
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import AnnotationSource, ClassFilter, CsvAnnotations, select_ids
from .classes import MID_RE, ClassDescriptions
from .errors import ConfigError
from .hierarchy import Hierarchy, expand
from .idset import SeenIds
from .journal import DoneSet
from .records import Conflict, Row
from .rows import ID_RE, RowFilter, iter_rows, read_header
from .sampling import per_class, sample
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


@dataclass
class Plan:
    """The id-level selection worked out before a run, and what it came from."""

    ids: frozenset[str] | None
    classes: frozenset[str] = frozenset()
    annotations: tuple[Path, ...] = ()
    class_descriptions: Path | None = None
    db: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Where `ids` came from, in words, for the message of an empty selection.
    ids_from: str = "--ids"


@dataclass(frozen=True)
class ClassChoice:
    """What --class and its companion options ask for."""

    names: tuple[str, ...]
    class_descriptions: Path | None = None
    annotations: tuple[Path, ...] = ()
    db: str | None = None
    hierarchy: Path | None = None
    expand: bool = True
    with_parts: bool = False
    filter: dict[str, Any] = field(default_factory=dict)  # ClassFilter's other fields
    limit_per_class: int | None = None


@contextmanager
def open_annotations(annotations: tuple[Path, ...], db: str | None) -> Iterator[AnnotationSource]:
    """The rows to select from: the --annotations CSVs, or the --db database."""
    if db is not None:
        if annotations:
            raise ConfigError("give either --db or --annotations, not both: the database holds the annotations")
        from .db.source import DbAnnotations

        with DbAnnotations.open(db) as source:
            yield source
        return
    yield CsvAnnotations(annotations)


def class_names(source: AnnotationSource, class_descriptions: Path | None) -> ClassDescriptions | None:
    """Names ⇄ MIDs: the --class-descriptions file, else the database's classes table."""
    if class_descriptions is not None:
        return ClassDescriptions.load(class_descriptions)
    loaded = getattr(source, "class_descriptions", None)
    return loaded() if loaded is not None else None


def listed_ids(inputs: tuple[Path, ...], subsets: frozenset[str], ids: Container[str] | None) -> Iterator[str]:
    """The ImageIDs of the input rows in --subset (and in ids, when given), streamed."""
    accept = (lambda r: r.subset in subsets) if subsets else None
    for path in inputs:
        for row in iter_rows(path, read_header(path), SelectionFilter(Shard(), ids=ids), accept):
            if isinstance(row, Row):
                yield row.image_id


def _select_classes(inputs: tuple[Path, ...], subsets: frozenset[str], ids: frozenset[str] | None,
                    choice: ClassChoice, seed: int | None, result: Plan) -> None:
    if not choice.annotations and choice.db is None:
        raise ConfigError("--class needs --annotations (the box or image-label CSVs to select from) or --db")
    with open_annotations(choice.annotations, choice.db) as source:
        requested = {n.strip() for n in choice.names if MID_RE.fullmatch(n.strip())}
        wanted = [n for n in choice.names if not MID_RE.fullmatch(n.strip())]
        names = class_names(source, choice.class_descriptions)
        if wanted:
            if names is None:
                raise ConfigError("class names need --class-descriptions (class-descriptions.csv) or a --db with "
                                  "classes loaded; MIDs like /m/0152hh do not")
            requested |= names.resolve(wanted)
        shown = names.name if names is not None else str
        tree = Hierarchy.load(choice.hierarchy) if choice.hierarchy is not None and choice.expand else None
        grown = expand(sorted(requested), tree, with_parts=choice.with_parts)
        for mid in grown.absent:
            result.notes.append(f"{shown(mid)} ({mid}) is not in the hierarchy: selected by itself")
        if tree is not None:
            result.notes.append(f"{len(requested)} class(es) with their subcategories"
                                f"{' and parts' if choice.with_parts else ''}: {len(grown.mids)} classes")
        flt = ClassFilter(grown.mids, **choice.filter)
        result.classes = grown.mids
        if choice.limit_per_class is None:
            found: set[str] = set()
            picked = select_ids(source, flt, within=ids, found=found)
            result.ids = frozenset(picked)
            result.ids_from = f"the class selection ({len(picked)} images in the annotations)"
            result.notes.append(f"{len(picked)} images carry {len(requested)} selected class(es)")
            matched = {r for m in found for r in grown.owners.get(m, ())}
            unmatched = sorted(requested - matched)
            if unmatched:
                where = choice.db or ", ".join(str(a) for a in choice.annotations)
                listed = ", ".join(f"{shown(m)} ({m})" if shown(m) != m else m for m in unmatched[:20])
                result.warnings.append(
                    f"no row of the annotations ({where[:300]}) carries class(es) "
                    f"{listed}{' ...' if len(unmatched) > 20 else ''} with the chosen filters")
            return
        n = choice.limit_per_class
        chosen = per_class(source, flt, grown.owners, n, seed or 0, lambda wanted: set(listed_ids(inputs, subsets, wanted)), within=ids)
        result.ids = frozenset(chosen.ids)
        result.notes.append(f"{len(chosen.ids)} images: up to {n} per class with seed {seed or 0}")
        for mid, count in chosen.per_class.items():
            why = ""
            if count.picked < n:
                why = " (fewer available)" if count.exhausted else f" (still short after {chosen.passes} passes)"
            unlisted = f"; {count.not_listed} carrying it are not in the input list" if count.not_listed else ""
            result.notes.append(f"  {shown(mid)} ({mid}): {count.picked} of {n}{why}{unlisted}")
        short = [shown(m) for m, c in chosen.per_class.items() if c.picked < n]
        if short:
            result.notes.append(f"{len(short)} class(es) had fewer than {n}: {', '.join(short)}")


def plan(
    inputs: tuple[Path, ...],
    *,
    subsets: frozenset[str],
    ids: frozenset[str] | None,
    choice: ClassChoice,
    limit: int | None,
    seed: int | None,
) -> Plan:
    """Resolves classes to MIDs (and their subcategories with a hierarchy), reads the
    annotations for the images that carry them, intersects with --ids, takes N per class
    or a --limit sample when a --seed is given. Memory grows with the selected images,
    not with the files."""
    result = Plan(ids, annotations=choice.annotations, class_descriptions=choice.class_descriptions, db=choice.db)
    if choice.names:
        _select_classes(inputs, subsets, ids, choice, seed, result)
    elif choice.limit_per_class is not None:
        raise ConfigError("--limit-per-class needs --class (or --classes-file): the classes to balance")
    if limit is not None and seed is not None:
        # nsmallest keeps only `limit` ids in memory
        result.ids = sample(listed_ids(inputs, subsets, result.ids), limit, seed)
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
