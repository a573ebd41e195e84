"""The annotation kinds, one registry: a header → exactly one kind (`kind_of`), and a
kind → its columns, its database table, and a typed record built from one row.

    boxes          ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax[,attributes][,XClick...]
    labels         ImageID,Source,LabelName,Confidence (human and machine image labels)
    segmentation   MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks
    relationships  ImageID,LabelName1,LabelName2,XMin1,...,YMax2,RelationshipLabel
    points         ImageId,X,Y,Label,EstimatedYesNo,Source,YesVotes,NoVotes,UnsureVotes,TextLabel (V7)
    narratives     JSON lines {"image_id", "annotator_id", "caption"[, "traces", ...]} (V6 localized
                   narratives): their keys are read as the header ImageID,AnnotatorID,Caption (json_header)

Rows stay `list[str]` through the scans (a selection reads tens of millions of them);
a record is built only for a row a filter kept. A consumer that does not handle a kind
yet says so (`AnnotationKind.require`) instead of misreading its columns. A new kind is
one record type, one builder and one entry in KINDS.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from oidownload.core.errors import InputError


@dataclass(frozen=True)
class Column:
    """One column of a database table, and the CSV column it is loaded from."""

    name: str  # in the database
    csv: str  # in the Open Images files
    type: str  # id, text, real, int or flag (schema._TYPES)
    nullable: bool = False


class BoxAttribute(enum.StrEnum):
    """The 0/1 flags of V4+ boxes (V3 validation too): what --exclude names."""

    IS_OCCLUDED = "IsOccluded"
    IS_TRUNCATED = "IsTruncated"
    IS_GROUP_OF = "IsGroupOf"
    IS_DEPICTION = "IsDepiction"
    IS_INSIDE = "IsInside"


ATTRIBUTES = tuple(a.value for a in BoxAttribute)
COORDS = ("XMin", "XMax", "YMin", "YMax")


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    image_id: str
    label: str  # the MID
    source: str  # verification, crowdsource-verification, machine...
    confidence: float


@dataclass(frozen=True, slots=True)
class Box:
    image_id: str
    label: str
    source: str
    confidence: float
    xmin: float  # normalised to the image (the written one, once geometry moved it)
    xmax: float
    ymin: float
    ymax: float
    attrs: Mapping[str, int] = field(default_factory=dict)  # the attributes present as 0 or 1

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.xmin, self.xmax, self.ymin, self.ymax

    def flag(self, attribute: BoxAttribute) -> int:
        """1 or 0, and 0 when the file has no such column (V3 train)."""
        return self.attrs.get(attribute.value, 0)


@dataclass(frozen=True, slots=True)
class Click:
    x: float
    y: float
    positive: bool  # L=1 in Open Images' `X Y L`; 0 a negative click


@dataclass(frozen=True, slots=True)
class Mask:
    image_id: str
    label: str
    mask_path: str  # the PNG's name inside the split's mask zips
    box_id: str
    xmin: float
    xmax: float
    ymin: float
    ymax: float
    predicted_iou: float | None
    clicks: tuple[Click, ...]


@dataclass(frozen=True, slots=True)
class Relationship:
    image_id: str
    label1: str
    label2: str  # a class MID, or an attribute MID for `is`
    box1: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    box2: tuple[float, float, float, float]
    relationship: str  # at, holds, wears, is...


@dataclass(frozen=True, slots=True)
class Point:
    image_id: str
    label: str
    x: float
    y: float
    estimated: str  # EstimatedYesNo: yes, no or unsure
    source: str
    yes_votes: int
    no_votes: int
    unsure_votes: int
    text_label: str


# -- narratives (issue 23) -----------------------------------------------------------------------


TracePoint = tuple[float, float, float]  # x, y (normalised, may stray slightly outside [0, 1]), t (seconds)


@dataclass(frozen=True, slots=True)
class Narrative:
    image_id: str
    annotator_id: str
    caption: str
    # The mouse trace's segments, kept only when asked (--narrative-traces): () otherwise.
    traces: tuple[tuple[TracePoint, ...], ...] = ()


def parse_traces(text: str) -> tuple[tuple[TracePoint, ...], ...]:
    """The Traces column (compact JSON `[[[x, y, t], ...], ...]`) → segments; ValueError
    for anything else."""
    segments = json.loads(text)
    if not isinstance(segments, list):
        raise ValueError("traces")
    try:
        return tuple(tuple((float(x), float(y), float(t)) for x, y, t in seg) for seg in segments)
    except TypeError:
        raise ValueError("traces") from None


# A narratives file is JSON lines, not CSV: its first object's keys, in these names,
# are its header, so the one detector (`detect`) tells it apart like the CSVs.
NARRATIVE_KEYS = {"image_id": "ImageID", "annotator_id": "AnnotatorID", "caption": "Caption"}


def json_header(first_line: str) -> tuple[str, ...] | None:
    """The header of a JSON-lines file from its first line (the keys we know, in our
    order), or None when the line is no JSON object."""
    if not first_line.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(first_line)
    except ValueError:
        # The head of a line cut at a reader's bound (a full file's traces make lines of
        # hundreds of KB): its top-level keys come first, as the files write them.
        return tuple(name for key, name in NARRATIVE_KEYS.items() if f'"{key}"' in first_line)
    if not isinstance(obj, dict):
        return None
    return tuple(name for key, name in NARRATIVE_KEYS.items() if key in obj)


def _narrative(fields: Sequence[str], at: Mapping[str, int]) -> Narrative:
    traces = fields[at["Traces"]] if "Traces" in at else ""
    return Narrative(fields[at["ImageID"]], fields[at["AnnotatorID"]] if "AnnotatorID" in at else "",
                     fields[at["Caption"]], parse_traces(traces) if traces else ())


# -- kinds -----------------------------------------------------------------------------------------

R = TypeVar("R")
# (the row's fields, header name → index) → a record; ValueError for a malformed row.
Builder = Callable[[Sequence[str], Mapping[str, int]], R]

# The consumers a kind can be supported by, as messages name them.
SELECT, DB_LOAD, EXPORT, GALLERY = "select", "db load", "annotations", "gallery"
_ALL = frozenset({SELECT, DB_LOAD, EXPORT, GALLERY})


@dataclass(frozen=True)
class AnnotationKind(Generic[R]):
    """One kind of annotation file."""

    name: str  # also loaded_files.kind and the table's name
    what: str  # for messages: "segmentation annotations"
    signature: tuple[str, ...]  # the columns a header must have, exact names
    image_column: str
    label_column: str
    build: Builder[R]
    columns: tuple[Column, ...] = ()  # its database table; () while `db load` does not load it
    supported: frozenset[str] = frozenset()  # the consumers that handle it
    table_name: str = ""  # its database table, when not `name` (segmentation: masks)

    @property
    def table(self) -> str:
        return self.table_name or self.name

    def __repr__(self) -> str:
        return f"<kind {self.name}>"

    def require(self, consumer: str, where: str) -> None:
        """InputError unless `consumer` handles this kind."""
        if consumer not in self.supported:
            raise InputError(f"{where}: {self.what} are recognised but not yet supported by `{consumer}`; "
                              "leave the file out")

    def reader(self, header: Sequence[str]) -> Callable[[Sequence[str]], R | None]:
        """Row → record for a file with this header; None for a row it cannot read."""
        at = {name: i for i, name in enumerate(header)}
        build = self.build

        def record(fields: Sequence[str]) -> R | None:
            try:
                return build(fields, at)
            except (ValueError, IndexError):
                return None

        return record


def _flags(fields: Sequence[str], at: Mapping[str, int]) -> dict[str, int]:
    return {a: int(fields[at[a]]) for a in ATTRIBUTES if a in at and fields[at[a]] in ("0", "1")}


def _coords(fields: Sequence[str], at: Mapping[str, int], names: Sequence[str]) -> tuple[float, float, float, float]:
    xmin, xmax, ymin, ymax = (float(fields[at[c]]) for c in names)
    return xmin, xmax, ymin, ymax


def _box(fields: Sequence[str], at: Mapping[str, int]) -> Box:
    xmin, xmax, ymin, ymax = _coords(fields, at, COORDS)
    return Box(fields[at["ImageID"]], fields[at["LabelName"]], fields[at["Source"]], float(fields[at["Confidence"]]),
               xmin, xmax, ymin, ymax, _flags(fields, at))


def _label(fields: Sequence[str], at: Mapping[str, int]) -> Label:
    return Label(fields[at["ImageID"]], fields[at["LabelName"]], fields[at["Source"]],
                 float(fields[at["Confidence"]]))


def _clicks(text: str) -> tuple[Click, ...]:
    out = []
    for click in filter(None, text.split(";")):
        x, y, flag = click.split()
        out.append(Click(float(x), float(y), flag == "1"))
    return tuple(out)


def _mask(fields: Sequence[str], at: Mapping[str, int]) -> Mask:
    iou = fields[at["PredictedIoU"]]
    xmin, xmax, ymin, ymax = _coords(fields, at, [f"Box{c}" for c in COORDS])
    return Mask(fields[at["ImageID"]], fields[at["LabelName"]], fields[at["MaskPath"]], fields[at["BoxID"]],
                xmin, xmax, ymin, ymax, float(iou) if iou else None, _clicks(fields[at["Clicks"]]))


def _quad(fields: Sequence[str], at: Mapping[str, int], k: int) -> tuple[float, float, float, float]:
    return _coords(fields, at, [f"{c}{k}" for c in COORDS])


def _relationship(fields: Sequence[str], at: Mapping[str, int]) -> Relationship:
    return Relationship(fields[at["ImageID"]], fields[at["LabelName1"]], fields[at["LabelName2"]],
                        _quad(fields, at, 1), _quad(fields, at, 2), fields[at["RelationshipLabel"]])


def _point(fields: Sequence[str], at: Mapping[str, int]) -> Point:
    text = fields[at["TextLabel"]] if "TextLabel" in at else ""
    return Point(fields[at["ImageId"]], fields[at["Label"]], float(fields[at["X"]]), float(fields[at["Y"]]),
                 fields[at["EstimatedYesNo"]], fields[at["Source"]], int(fields[at["YesVotes"]]),
                 int(fields[at["NoVotes"]]), int(fields[at["UnsureVotes"]]), text)


LABEL_COLUMNS = (
    Column("image_id", "ImageID", "id"),
    Column("source", "Source", "text"),
    Column("mid", "LabelName", "text"),
    Column("confidence", "Confidence", "real"),
)
BOX_ATTRIBUTE_COLUMNS = tuple(Column(c, a, "flag", nullable=True) for c, a in zip(
    ("is_occluded", "is_truncated", "is_group_of", "is_depiction", "is_inside"), ATTRIBUTES, strict=True))
BOX_COLUMNS = (
    *LABEL_COLUMNS,
    # x_min, not xmin: PostgreSQL reserves xmin and xmax as system columns.
    *(Column(f"{c[0].lower()}_{c[1:].lower()}", c, "real") for c in COORDS),
    *BOX_ATTRIBUTE_COLUMNS,
    *(Column(f"xclick{k}{axis.lower()}", f"XClick{k}{axis}", "real", nullable=True)
      for axis in ("X", "Y") for k in range(1, 5)),
)

LABELS: AnnotationKind[Label] = AnnotationKind(
    "labels", "image-level labels", ("ImageID", "Source", "LabelName", "Confidence"), "ImageID", "LabelName",
    _label, LABEL_COLUMNS, _ALL)
BOXES: AnnotationKind[Box] = AnnotationKind(
    "boxes", "box annotations", (*LABELS.signature, *COORDS), "ImageID", "LabelName", _box, BOX_COLUMNS, _ALL)
# masks (issue 22): selected by and loaded into the `masks` table (image_id first, as
# every table: the loader and DbTable.rows read it there).
MASK_COLUMNS = (
    Column("image_id", "ImageID", "id"),
    Column("mask_path", "MaskPath", "text"),
    Column("mid", "LabelName", "text"),
    Column("box_id", "BoxID", "text"),
    *(Column(f"box_{c[0].lower()}_{c[1:].lower()}", f"Box{c}", "real") for c in COORDS),
    Column("predicted_iou", "PredictedIoU", "real", nullable=True),
    Column("clicks", "Clicks", "text"),
)
SEGMENTATION: AnnotationKind[Mask] = AnnotationKind(
    "segmentation", "segmentation annotations",
    ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU",
     "Clicks"), "ImageID", "LabelName", _mask, MASK_COLUMNS, frozenset({SELECT, DB_LOAD, EXPORT, GALLERY}), "masks")
# relationships and points (issue 23): their tables, and the consumers that read them.
RELATIONSHIP_COLUMNS = (
    Column("image_id", "ImageID", "id"),
    Column("mid1", "LabelName1", "text"),
    Column("mid2", "LabelName2", "text"),
    *(Column(f"{c[0].lower()}_{c[1:].lower()}{k}", f"{c}{k}", "real") for k in (1, 2) for c in COORDS),
    Column("predicate", "RelationshipLabel", "text"),
)
POINT_COLUMNS = (
    Column("image_id", "ImageId", "id"),
    Column("mid", "Label", "text"),
    Column("x", "X", "real"),
    Column("y", "Y", "real"),
    Column("answer", "EstimatedYesNo", "text"),
    Column("source", "Source", "text"),
    Column("yes_votes", "YesVotes", "int"),
    Column("no_votes", "NoVotes", "int"),
    Column("unsure_votes", "UnsureVotes", "int"),
    Column("text_label", "TextLabel", "text", nullable=True),
)
RELATIONSHIPS: AnnotationKind[Relationship] = AnnotationKind(
    "relationships", "visual relationship annotations",
    ("ImageID", "LabelName1", "LabelName2", *(f"{c}{k}" for k in (1, 2) for c in COORDS), "RelationshipLabel"),
    "ImageID", "LabelName1", _relationship, RELATIONSHIP_COLUMNS, _ALL)
# V7 spells the image column ImageId; TextLabel may be absent, so it is not required.
POINTS: AnnotationKind[Point] = AnnotationKind(
    "points", "point labels",
    ("ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes"),
    "ImageId", "Label", _point, POINT_COLUMNS, _ALL)

# narratives (issue 23): no class column; a ClassFilter passes them by (annotations.py).
NARRATIVE_COLUMNS = (
    Column("image_id", "ImageID", "id"),
    Column("annotator_id", "AnnotatorID", "text", nullable=True),
    Column("caption", "Caption", "text"),
    Column("traces", "Traces", "text", nullable=True),  # compact JSON; only with --narrative-traces
)
NARRATIVES: AnnotationKind[Narrative] = AnnotationKind(
    "narratives", "localized narratives", ("ImageID", "Caption"), "ImageID", "", _narrative, NARRATIVE_COLUMNS,
    frozenset({SELECT, DB_LOAD, EXPORT, GALLERY}))

KINDS: dict[str, AnnotationKind[Any]] = {
    k.name: k for k in (BOXES, LABELS, SEGMENTATION, RELATIONSHIPS, POINTS, NARRATIVES)}


def detect(header: Sequence[str]) -> list[AnnotationKind[Any]]:
    """The kinds a header is: those whose signature it has, less any whose signature is
    part of another's (a box file also has every label column). One, for a good file."""
    have = set(header)
    found = [k for k in KINDS.values() if have.issuperset(k.signature)]
    return [k for k in found if not any(set(k.signature) < set(o.signature) for o in found)]


def closest(header: Sequence[str]) -> tuple[AnnotationKind[Any], list[str]]:
    """The kind a header comes nearest to, and the columns it lacks for it."""
    have = set(header)

    def missing(k: AnnotationKind[Any]) -> list[str]:
        return [c for c in k.signature if c not in have]

    best = max(KINDS.values(), key=lambda k: (1 - len(missing(k)) / len(k.signature), -len(missing(k))))
    return best, missing(best)


def kind_of(header: Sequence[str], where: str) -> AnnotationKind[Any]:
    """Exactly one kind for a header, or InputError naming the known kinds and the closest."""
    found = detect(header)
    if len(found) == 1:
        return found[0]
    shown = ",".join(header)[:120]
    if found:
        raise InputError(f"{where}: the header {shown!r} fits several annotation kinds "
                         f"({', '.join(k.name for k in found)}); which one is it?")
    near, lacks = closest(header)
    raise InputError(
        f"{where}: not an Open Images annotation file: its header {shown!r} is none of the known kinds "
        f"({', '.join(KINDS)}); the closest is {near.name}, which also needs {', '.join(lacks)}")
