"""The COCO export's relationships and points (issue 23), beside its boxes.

A relationship names its two objects by annotation id. Each side is matched to a box
annotation of the same image and class whose pixel box is within 0.5 px of it (the
relationship files repeat the box files' coordinates); a side with no such box gets a
box annotation of its own, marked `relationship_box: true`, which later relationships
reuse. For `is` the object is an attribute: `object_id` is the subject's box, and
`attribute` (its name) and `attribute_mid` say which. A point is an annotation with a
`point` [x, y] in pixels, its answer and votes, and no bbox (filter `point`
annotations out before a box evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from oidownload.dataset.geometry import Coords, coords_pixels
from oidownload.dataset.kinds import Point, Relationship
from oidownload.dataset.relationships import IS
from oidownload.exports.base import Annotated

TOLERANCE_PX = 0.5


def record_mids(items: Iterable[Annotated]) -> set[str]:
    """The classes relationships (both sides, but an attribute) and points name."""
    out: set[str] = set()
    for it in items:
        for r in it.relationships:
            out.add(r.label1)
            if r.relationship != IS:
                out.add(r.label2)
        out.update(p.label for p in it.points)
    return out


@dataclass
class CocoKinds:
    """Collects the `relationships` and `predicates` lists while the annotations are written."""

    name: Callable[[str], str]
    cat_id: dict[str, int]
    relationships: list[dict[str, Any]] = field(default_factory=list)
    predicates: dict[str, int] = field(default_factory=dict)
    added_boxes: int = 0
    points: int = 0

    def add(self, it: Annotated, image_no: int, annotations: list[dict[str, Any]], first: int) -> int:
        """Appends this image's relationship boxes and points to `annotations` (whose
        entries from `first` on are this image's boxes); returns the last id used."""
        mine = annotations[first:]
        n = annotations[-1]["id"] if annotations else 0

        def box_id(mid: str, coords: Coords) -> int:
            nonlocal n
            bbox = coords_pixels(coords, it.image)
            for a in mine:
                if a["category_id"] == self.cat_id[mid] and "bbox" in a and all(
                        abs(u - v) <= TOLERANCE_PX for u, v in zip(a["bbox"], bbox, strict=True)):
                    return int(a["id"])
            n += 1
            x, y, bw, bh = bbox
            ann = {"id": n, "image_id": image_no, "category_id": self.cat_id[mid], "bbox": bbox,
                   "area": round(bw * bh, 3), "iscrowd": 0, "relationship_box": True,
                   "segmentation": [[x, y, round(x + bw, 3), y, round(x + bw, 3), round(y + bh, 3), x,
                                     round(y + bh, 3)]]}
            annotations.append(ann)
            mine.append(ann)
            self.added_boxes += 1
            return n

        for r in it.relationships:
            self.relationships.append(self._relationship(r, image_no, box_id))
        for p in it.points:
            n += 1
            annotations.append(self._point(p, n, image_no, it))
            self.points += 1
        return n

    def _relationship(self, r: Relationship, image_no: int, box_id: Callable[[str, Coords], int]) -> dict[str, Any]:
        subject = box_id(r.label1, r.box1)
        pid = self.predicates.setdefault(r.relationship, len(self.predicates) + 1)
        out: dict[str, Any] = {"id": len(self.relationships) + 1, "image_id": image_no, "subject_id": subject,
                               "predicate": r.relationship, "predicate_id": pid}
        if r.relationship == IS:
            out.update(object_id=subject, attribute=self.name(r.label2), attribute_mid=r.label2)
        else:
            out["object_id"] = box_id(r.label2, r.box2)
        return out

    def _point(self, p: Point, n: int, image_no: int, it: Annotated) -> dict[str, Any]:
        return {"id": n, "image_id": image_no, "category_id": self.cat_id[p.label],
                "point": [round(p.x * it.image.width, 3), round(p.y * it.image.height, 3)],
                "answer": p.estimated, "yes_votes": p.yes_votes, "no_votes": p.no_votes,
                "unsure_votes": p.unsure_votes, "source": p.source, "iscrowd": 0, "area": 0}

    def into(self, doc: dict[str, Any]) -> None:
        doc["predicates"] = [{"id": i, "name": p} for p, i in self.predicates.items()]
        doc["relationships"] = self.relationships
