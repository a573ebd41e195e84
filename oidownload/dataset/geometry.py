"""Normalised coordinates of the source image → the frame of the written file: into the
kept region when `--resize-mode fill` cropped, then through the turn `--orientation
upright` applied (the EXIF-style code the journal records). Every exporter and the
gallery move boxes and points through here, so they agree on every pixel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.kinds import (
    BOXES,
    POINTS,
    RELATIONSHIPS,
    AnnotationKind,
    Box,
    Narrative,
    Point,
    Relationship,
    TracePoint,
)
from oidownload.state.reader import Written

if TYPE_CHECKING:
    from oidownload.dataset.relationships import RelationshipQuery

Coords = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax, normalised
R = TypeVar("R")

# Where a normalised point (x, y) of the stored frame lands after each EXIF-style turn
# (the codes process.py records): 8 is 90 degrees counter-clockwise, 6 clockwise.
_TURNS: dict[int, Callable[[float, float], tuple[float, float]]] = {
    2: lambda x, y: (1 - x, y),
    3: lambda x, y: (1 - x, 1 - y),
    4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x),
    6: lambda x, y: (1 - y, x),
    7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}


def turn_point(code: int, x: float, y: float) -> tuple[float, float]:
    turn = _TURNS.get(code)
    return turn(x, y) if turn else (x, y)


def to_written_frame(box: Coords, image: Written) -> Coords | None:
    """The box in the written image's frame, normalised; None when a crop cut it away."""
    xmin, xmax, ymin, ymax = box
    if image.crop is not None:
        cx0, cy0, cx1, cy1 = image.crop
        sx, sy = cx1 - cx0, cy1 - cy0
        xmin, xmax = (min(1.0, max(0.0, (v - cx0) / sx)) for v in (xmin, xmax))
        ymin, ymax = (min(1.0, max(0.0, (v - cy0) / sy)) for v in (ymin, ymax))
        if xmax <= xmin or ymax <= ymin:
            return None
    if image.orientation == 1:
        return xmin, xmax, ymin, ymax
    (ax, ay), (bx, by) = turn_point(image.orientation, xmin, ymin), turn_point(image.orientation, xmax, ymax)
    return min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)


def point_to_written(x: float, y: float, image: Written) -> tuple[float, float]:
    """A point (an XClick) in the written frame; a crop may put it outside [0, 1]."""
    if image.crop is not None:
        cx0, cy0, cx1, cy1 = image.crop
        x, y = (x - cx0) / (cx1 - cx0), (y - cy0) / (cy1 - cy0)
    return turn_point(image.orientation, x, y)


# -- narratives (issue 23) ------------------------------------------------------------------------


def written_traces(narrative: Narrative, image: Written) -> tuple[Narrative, int]:
    """The narrative with its trace in the written frame, and how many points a fill
    crop cut away (dropped; a segment left empty goes too). Without a crop every point
    stays, even the few a trace has just outside [0, 1]: nothing was cut there."""
    if not narrative.traces:
        return narrative, 0
    dropped = 0
    segments: list[tuple[TracePoint, ...]] = []
    for seg in narrative.traces:
        kept = []
        for x, y, t in seg:
            if image.crop is not None:
                cx0, cy0, cx1, cy1 = image.crop
                if not (cx0 <= x <= cx1 and cy0 <= y <= cy1):
                    dropped += 1
                    continue
            wx, wy = point_to_written(x, y, image)
            kept.append((wx, wy, t))
        if kept:
            segments.append(tuple(kept))
    return dataclasses.replace(narrative, traces=tuple(segments)), dropped


def written_box(box: Box, image: Written) -> Box | None:
    """The record with its box in the written frame; None when a crop cut it away."""
    moved = to_written_frame(box.box, image)
    if moved is None:
        return None
    xmin, xmax, ymin, ymax = moved
    return dataclasses.replace(box, xmin=xmin, xmax=xmax, ymin=ymin, ymax=ymax)


def pixels(box: Box, image: Written) -> list[float]:
    """A written-frame box as COCO's [x, y, width, height] in pixels of the written image."""
    return coords_pixels(box.box, image)


def coords_pixels(box: Coords, image: Written) -> list[float]:
    """Written-frame (xmin, xmax, ymin, ymax) as [x, y, width, height] in pixels."""
    xmin, xmax, ymin, ymax = box
    w, h = image.width, image.height
    return [round(xmin * w, 3), round(ymin * h, 3), round((xmax - xmin) * w, 3), round((ymax - ymin) * h, 3)]


@dataclass
class WrittenBoxes:
    """The boxes of the given images (of the given classes) as records in the written
    frame, in file order; `dropped` counts those a crop cut away, `unreadable` the rows
    with a value that is not a number (said, never silently lost). The exports and the
    gallery read boxes only through here, so the gallery draws exactly the exported ones."""

    images: Mapping[str, Written]
    mids: frozenset[str] | None = None
    dropped: int = 0
    unreadable: int = 0

    def read(self, tables: Iterable[AnnotationTable]) -> Iterator[Box]:
        images, mids = self.images, self.mids
        for f in tables:
            if f.kind is not BOXES:
                continue
            i_label = f.index("LabelName")
            record = BOXES.reader(f.columns)
            for fields in f.rows(images):
                if mids is not None and fields[i_label] not in mids:
                    continue  # filtered on the strings: only kept rows become records
                box = record(fields)
                if box is None:
                    self.unreadable += 1
                    continue
                moved = written_box(box, images[box.image_id])
                if moved is None:
                    self.dropped += 1
                    continue
                yield moved


# -- relationships and points (issue 23) --------------------------------------------------------------


def written_relationship(rel: Relationship, image: Written) -> Relationship | None:
    """Both boxes in the written frame; None when a crop cut either away (a relationship
    with one object gone is no relationship)."""
    box1, box2 = to_written_frame(rel.box1, image), to_written_frame(rel.box2, image)
    if box1 is None or box2 is None:
        return None
    return dataclasses.replace(rel, box1=box1, box2=box2)


def point_inside(x: float, y: float, image: Written) -> tuple[float, float] | None:
    """A point label's place in the written frame; None when a crop left it outside."""
    x, y = point_to_written(x, y, image)
    return (x, y) if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 else None


def written_point(point: Point, image: Written) -> Point | None:
    """The point in the written frame; None when a crop left it outside the image."""
    moved = point_inside(point.x, point.y, image)
    return None if moved is None else dataclasses.replace(point, x=moved[0], y=moved[1])


@dataclass
class KeptRecords(Generic[R]):
    """The rows of one kind a selection keeps (a relationship with a selected class on
    either side, a point of a selected class, and what `keep` accepts) as records in the
    stored frame, in file order; `unreadable` counts the rows with a value that is not a
    number. The exports move them at once; a download into shards keeps them until each
    image's frame is known (dataset/samplefields.py), so both keep the same rows."""

    kind: AnnotationKind[R]
    mids: frozenset[str] | None = None
    keep: Callable[[R], bool] | None = None  # a further test on the record (--relationship)
    unreadable: int = 0

    def read(self, tables: Iterable[AnnotationTable], ids: Container[str] | None) -> Iterator[R]:
        mids = self.mids
        for f in tables:
            if f.kind is not self.kind:
                continue
            labels = [f.index(c) for c in (("LabelName1", "LabelName2") if self.kind is RELATIONSHIPS else ("Label",))]
            record = self.kind.reader(f.columns)
            for fields in f.rows(ids):
                if mids is not None and not any(fields[i] in mids for i in labels):
                    continue  # filtered on the strings: only kept rows become records
                rec = record(fields)
                if rec is None:
                    self.unreadable += 1
                    continue
                if self.keep is None or self.keep(rec):
                    yield rec


@dataclass
class WrittenRecords(Generic[R]):
    """The records KeptRecords keeps of the given images, in the written frame, in file
    order; `dropped` and `unreadable` as WrittenBoxes counts them."""

    kind: AnnotationKind[R]
    move: Callable[[R, Written], R | None]
    images: Mapping[str, Written]
    mids: frozenset[str] | None = None
    keep: Callable[[R], bool] | None = None
    dropped: int = 0
    unreadable: int = 0

    def image_id(self, record: R) -> str:
        return image_id_of(record)

    def read(self, tables: Iterable[AnnotationTable]) -> Iterator[R]:
        kept = KeptRecords(self.kind, self.mids, self.keep)
        try:
            for rec in kept.read(tables, self.images):
                moved = self.move(rec, self.images[image_id_of(rec)])
                if moved is None:
                    self.dropped += 1
                    continue
                yield moved
        finally:
            self.unreadable += kept.unreadable


def image_id_of(record: object) -> str:
    return str(getattr(record, "image_id"))  # noqa: B009 -- relationships and points both have it; R is unbounded


def relationship_test(wanted: Sequence[RelationshipQuery] | None) -> Callable[[Relationship], bool] | None:
    """`wanted`: keep only the relationships one of these queries matches (None: all)."""
    return None if wanted is None else (
        lambda r: any(q.test(r.label1, r.label2, r.relationship) for q in wanted))


def written_relationships(images: Mapping[str, Written], mids: frozenset[str] | None = None,
                          wanted: Sequence[RelationshipQuery] | None = None) -> WrittenRecords[Relationship]:
    """`wanted`: keep only the relationships one of these queries matches."""
    return WrittenRecords(RELATIONSHIPS, written_relationship, images, mids, relationship_test(wanted))


def written_points(images: Mapping[str, Written], mids: frozenset[str] | None = None) -> WrittenRecords[Point]:
    return WrittenRecords(POINTS, written_point, images, mids)
