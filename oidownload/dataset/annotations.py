"""Open Images annotation files (box and image-label CSVs, V3 or V4+ layout, plain or
.gz), streamed: which images a class selection picks, and the rows of given images.
`AnnotationSource` is where such rows come from: these files (`CsvAnnotations`), or the
database (`oidownload.db.source`); selection and export only see the protocol.

    boxes:  ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax
            [,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside[,XClick1X...]]
    labels: ImageID,Source,LabelName,Confidence

Rows stay lists of strings until they match, so a scan of tens of millions of rows
keeps only the selected ImageIDs in memory.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from oidownload.core.errors import ConfigError, InputError
from oidownload.inputs.csvrecords import iter_records
from oidownload.inputs.text import first_line

ATTRIBUTES = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
MACHINE_SOURCES = frozenset({"machine"})


class Kind(enum.Enum):
    BOXES = "boxes"
    LABELS = "labels"


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
    def kind(self) -> Kind: ...
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
    kind: Kind
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
        needed = ("ImageID", "Source", "LabelName", "Confidence")
        if not all(c in header for c in needed):
            raise InputError(
                f"{path}: not an Open Images annotation file; expected a header with "
                f"{','.join(needed)} (image labels) and XMin,XMax,YMin,YMax (boxes), found {first.strip()[:120]!r}"
            )
        kind = Kind.BOXES if all(c in header for c in ("XMin", "XMax", "YMin", "YMax")) else Kind.LABELS
        return cls(path, kind, header)

    def rows(self, ids: Container[str] | None = None) -> Iterator[list[str]]:
        """Field lists of well-formed rows (of the given images, when ids is set)."""
        skip: Callable[[str], bool] | None = (lambda raw: raw not in ids) if ids is not None else None
        n = len(self.columns)
        for _, fields in iter_records(self.path, skip):
            if isinstance(fields, list) and len(fields) == n:
                yield fields


@dataclass(frozen=True)
class ClassFilter:
    """Which annotation rows pick their image."""

    mids: frozenset[str]
    label_source: LabelSource = LabelSource.ANY
    min_confidence: float = 0.5
    boxes_only: bool = False
    exclude: frozenset[str] = field(default_factory=frozenset)  # attribute names from ATTRIBUTES

    def __post_init__(self) -> None:
        unknown = self.exclude - set(ATTRIBUTES)
        if unknown:
            raise ConfigError(f"unknown box attributes {sorted(unknown)}; known: {', '.join(ATTRIBUTES)}")

    def predicate(self, f: AnnotationFile) -> Callable[[list[str]], bool] | None:
        """A test on one row's fields, or None when the file cannot contribute."""
        if self.boxes_only and f.kind is not Kind.BOXES:
            return None
        if self.exclude and f.kind is Kind.BOXES and not all(f.has(a) for a in self.exclude):
            missing = sorted(a for a in self.exclude if not f.has(a))
            raise ConfigError(f"{f.path} has no {', '.join(missing)} column (V3 train boxes carry no attributes); drop the --exclude option for it")
        i_label, i_src, i_conf = f.index("LabelName"), f.index("Source"), f.index("Confidence")
        attr_idx = [f.index(a) for a in self.exclude] if f.kind is Kind.BOXES else []
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

    def tables(self) -> list[AnnotationFile]:
        return [AnnotationFile.open(p) for p in self.paths]

    def matches(self, flt: ClassFilter, within: Container[str] | None = None) -> Iterator[tuple[str, str]]:
        tests = [(f, flt.predicate(f)) for f in self.tables()]  # every file's columns checked before any scan
        if not any(test for _, test in tests):
            raise ConfigError("--boxes-only needs at least one box file (with XMin,XMax,YMin,YMax) among --annotations")
        for f, test in tests:
            if test is None:
                continue
            i_id, i_label = f.index("ImageID"), f.index("LabelName")
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
