"""One image's relationships and points as plain fields (issue 23), in pixels of the
written image: the shape the HF export's `metadata.jsonl` columns and a webdataset
sample's `<ImageID>.json` both have. One function for both, so a sample read from a
shard and a row loaded by `datasets` can never disagree: a relationship is {subject,
subject_mid, subject_bbox, predicate, object, object_mid, object_bbox} with boxes
[x, y, width, height]; a point {point [x, y], label, mid, answer, yes/no/unsure votes}.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from oidownload.dataset.geometry import coords_pixels
from oidownload.dataset.kinds import POINTS, RELATIONSHIPS, AnnotationKind, Point, Relationship
from oidownload.state.reader import Written

Name = Callable[[str], str]  # MID → display name (the MID itself when it has none)


def relationship_fields(r: Relationship, image: Written, name: Name) -> dict[str, Any]:
    """A written-frame relationship as its fields."""
    return {
        "subject": name(r.label1), "subject_mid": r.label1, "subject_bbox": coords_pixels(r.box1, image),
        "predicate": r.relationship,
        "object": name(r.label2), "object_mid": r.label2, "object_bbox": coords_pixels(r.box2, image),
    }


def point_fields(p: Point, image: Written, name: Name) -> dict[str, Any]:
    """A written-frame point as its fields."""
    return {
        "point": [round(p.x * image.width, 3), round(p.y * image.height, 3)], "label": name(p.label),
        "mid": p.label, "answer": p.estimated, "yes_votes": p.yes_votes, "no_votes": p.no_votes,
        "unsure_votes": p.unsure_votes,
    }


def record_fields(kinds: Collection[AnnotationKind[Any]], image: Written, relationships: Iterable[Relationship],
                  points: Iterable[Point], name: Name) -> dict[str, Any]:
    """`relationships` and `points` of one written image, for the kinds the annotations
    hold: an empty list when the image has none, so every row (or sample) of one output
    has the same fields, and a loader can type them."""
    out: dict[str, Any] = {}
    if RELATIONSHIPS in kinds:
        out["relationships"] = [relationship_fields(r, image, name) for r in relationships]
    if POINTS in kinds:
        out["points"] = [point_fields(p, image, name) for p in points]
    return out
