"""Open Images annotation files (plain or .gz), streamed: which images a class selection
picks, and the rows of given images. What a file is comes from its header, by the one
detector of `oidownload.dataset.kinds` (boxes, image labels and point labels select
by class here; relationships through `dataset.relationships`; segmentation not yet). `AnnotationSource` is where such rows
come from: these files (`CsvAnnotations`), or the database (`oidownload.db.source`);
selection and export only see the protocol.

Rows stay lists of strings until they match, so a scan of tens of millions of rows
keeps only the selected ImageIDs in memory.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from oidownload.core.errors import ConfigError
from oidownload.dataset.kinds import (
    ATTRIBUTES,
    BOXES,
    LABELS,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    SEGMENTATION,
    SELECT,
    AnnotationKind,
    BoxAttribute,
    kind_of,
)
from oidownload.dataset.points import PointAnswer, point_test
from oidownload.inputs.csvrecords import iter_records
from oidownload.inputs.text import first_line

__all__ = ["ATTRIBUTES", "BOXES", "LABELS", "AnnotationFile", "AnnotationSource", "AnnotationTable",
           "ClassFilter", "CsvAnnotations", "LabelSource", "open_table", "select_ids"]

MACHINE_SOURCES = frozenset({"machine"})


class LabelSource(enum.StrEnum):
    HUMAN = "human"
    MACHINE = "machine"
    ANY = "any"


class AnnotationTable(Protocol):
    """One file's worth of rows: its kind, its header, and its rows of given images."""

    @property
    def name(self) -> str: ...  # the file name the CSV export writes
    @property
    def where(self) -> str: ...  # the whole path (an archive's member as `archive!member`)
    @property
    def kind(self) -> AnnotationKind[Any]: ...
    @property
    def columns(self) -> tuple[str, ...]: ...
    def index(self, name: str) -> int: ...
    def has(self, name: str) -> bool: ...
    def rows(self, ids: Container[str] | None = None) -> Iterator[list[str]]: ...


class AnnotationSource(Protocol):
    def matches(self, flt: ClassFilter, within: Container[str] | None = None) -> Iterator[tuple[str, str]]:
        """(lower-case ImageID, LabelName) of every row the filter accepts, in any order."""
        ...

    def tables(self) -> Sequence[AnnotationTable]: ...


@dataclass(frozen=True)
class AnnotationFile:
    path: Path
    kind: AnnotationKind[Any]
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        name = self.path.name
        return name[:-3] if name.endswith(".gz") else name

    @property
    def where(self) -> str:
        return str(self.path)

    def index(self, name: str) -> int:
        return self.columns.index(name)

    def has(self, name: str) -> bool:
        return name in self.columns

    @classmethod
    def open(cls, path: Path) -> AnnotationFile:
        first = first_line(path)
        header = tuple(h.strip() for h in next(csv.reader([first]), []))
        return cls(path, kind_of(header, str(path)), header)

    def rows(self, ids: Container[str] | None = None) -> Iterator[list[str]]:
        """Field lists of well-formed rows (of the given images, when ids is set)."""
        i_id = self.index(self.kind.image_column)
        # The raw first field is skipped unparsed; a kind whose ImageID comes later
        # (segmentation: MaskPath first) is filtered once split.
        skip: Callable[[str], bool] | None = (lambda raw: raw not in ids) if ids is not None and i_id == 0 else None
        later = ids if ids is not None and i_id != 0 else None
        n = len(self.columns)
        for _, fields in iter_records(self.path, skip):
            if isinstance(fields, list) and len(fields) == n and (later is None or fields[i_id] in later):
                yield fields


def open_table(path: Path, narrative_traces: bool = False) -> AnnotationTable:
    """An annotation file of any kind: a CSV by its header, or (issue 23) a localized
    narratives JSON-lines file by its first object's keys (its traces kept when asked)."""
    from oidownload.dataset.narratives import is_json_lines, open_narratives

    if is_json_lines(path):
        return open_narratives(path, narrative_traces)
    return AnnotationFile.open(path)


@dataclass(frozen=True)
class ClassFilter:
    """Which annotation rows pick their image."""

    mids: frozenset[str]
    label_source: LabelSource = LabelSource.ANY
    min_confidence: float = 0.5
    boxes_only: bool = False
    exclude: frozenset[BoxAttribute] = field(default_factory=frozenset)  # strings are taken and checked
    # relationships and points (issue 23): which point-label rows count
    point_answer: PointAnswer = PointAnswer.YES
    min_yes_votes: int = 0

    def __post_init__(self) -> None:
        unknown = {a for a in self.exclude if a not in ATTRIBUTES}
        if unknown:
            raise ConfigError(f"unknown box attributes {sorted(unknown)}; known: {', '.join(ATTRIBUTES)}")
        object.__setattr__(self, "exclude", frozenset(BoxAttribute(a) for a in self.exclude))

    def predicate(self, f: AnnotationTable) -> Callable[[list[str]], bool] | None:
        """A test on one row's fields, or None when the file cannot contribute."""
        f.kind.require(SELECT, f.where)
        if f.kind is NARRATIVES:
            return None  # no class in a caption: selected by narratives.NarrativeChoice
        if self.boxes_only and f.kind is not BOXES:
            return None
        # relationships and points (issue 23): relationship rows select through
        # --relationship (dataset.relationships), not --class; points have their own columns.
        if f.kind is RELATIONSHIPS:
            return None
        if f.kind is POINTS:
            return point_test(f, self.mids, self.point_answer, self.min_yes_votes)
        if f.kind is SEGMENTATION:  # masks (issue 22): a mask of the class picks its image
            i_mid, mids = f.index("LabelName"), self.mids
            return lambda fields: fields[i_mid] in mids
        if self.exclude and f.kind is BOXES and not all(f.has(a) for a in self.exclude):
            missing = sorted(a for a in self.exclude if not f.has(a))
            raise ConfigError(f"{f.where} has no {', '.join(missing)} column (V3 train boxes carry no attributes); drop the --exclude option for it")
        i_label, i_src, i_conf = f.index("LabelName"), f.index("Source"), f.index("Confidence")
        attr_idx = [f.index(a) for a in self.exclude] if f.kind is BOXES else []
        mids, src, low = self.mids, self.label_source, self.min_confidence

        def test(fields: list[str]) -> bool:
            if fields[i_label] not in mids:
                return False
            if src is not LabelSource.ANY and (fields[i_src] in MACHINE_SOURCES) != (src is LabelSource.MACHINE):
                return False
            try:
                if float(fields[i_conf]) < low:
                    return False
            except ValueError:
                return False
            return not any(fields[i] == "1" for i in attr_idx)

        return test


@dataclass
class CsvAnnotations:
    """The annotation CSVs given with --annotations, streamed on every call."""

    paths: Sequence[Path]
    narrative_traces: bool = False  # narratives (issue 23): keep their traces (big)

    def tables(self) -> list[AnnotationTable]:
        return [open_table(p, self.narrative_traces) for p in self.paths]

    def matches(self, flt: ClassFilter, within: Container[str] | None = None) -> Iterator[tuple[str, str]]:
        tests = [(f, flt.predicate(f)) for f in self.tables()]  # every file's columns checked before any scan
        if not any(test for _, test in tests):
            if flt.boxes_only:
                raise ConfigError("--boxes-only needs at least one box file (with XMin,XMax,YMin,YMax) among --annotations")
            raise ConfigError("--class needs a box, image-label or point-label file among --annotations "
                              "(relationship files select with --relationship)")
        for f, test in tests:
            if test is None:
                continue
            i_id, i_label = f.index(f.kind.image_column), f.index(f.kind.label_column)
            for fields in f.rows(within):
                if test(fields):
                    yield fields[i_id].lower(), fields[i_label]


def select_ids(source: AnnotationSource, flt: ClassFilter, within: Container[str] | None = None,
               found: set[str] | None = None) -> set[str]:
    """ImageIDs with at least one matching row in the source. `found`, when given, gains
    the MID of every matching row (so a caller can name the classes that matched nothing)."""
    if not flt.mids:
        raise ConfigError("no classes to select by")
    picked: set[str] = set()
    for image_id, label in source.matches(flt, within):
        picked.add(image_id)
        if found is not None:
            found.add(label)
    return picked
