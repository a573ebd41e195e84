"""Open Images annotation files (box and image-label CSVs, V3 or V4+ layout, plain or
.gz), streamed: which images a class selection picks, and the rows of given images.

    boxes:  ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax
            [,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside[,XClick1X...]]
    labels: ImageID,Source,LabelName,Confidence

Rows stay lists of strings until they match, so a scan of tens of millions of rows
keeps only the selected ImageIDs in memory.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, InputError
from .rows import first_line, iter_records

ATTRIBUTES = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
MACHINE_SOURCES = frozenset({"machine"})


class Kind(enum.Enum):
    BOXES = "boxes"
    LABELS = "labels"


class LabelSource(enum.StrEnum):
    HUMAN = "human"
    MACHINE = "machine"
    ANY = "any"


@dataclass(frozen=True)
class AnnotationFile:
    path: Path
    kind: Kind
    columns: tuple[str, ...]

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


def select_ids(files: list[Path], flt: ClassFilter, within: Container[str] | None = None) -> set[str]:
    """ImageIDs with at least one matching row in any of the files."""
    if not flt.mids:
        raise ConfigError("no classes to select by")
    picked: set[str] = set()
    usable = 0
    for path in files:
        f = AnnotationFile.open(path)
        test = flt.predicate(f)
        if test is None:
            continue
        usable += 1
        i_id = f.index("ImageID")
        for fields in f.rows(within):
            if test(fields):
                picked.add(fields[i_id].lower())
    if not usable:
        raise ConfigError("--boxes-only needs at least one box file (with XMin,XMax,YMin,YMax) among --annotations")
    return picked
