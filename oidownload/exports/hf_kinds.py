"""The HF export's `relationships` and `points` columns (issue 23): each a list of
structs, so `datasets` loads them as sequences of dicts. Boxes are [x, y, width,
height] and points [x, y], in pixels of the written image, as `objects` has them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from oidownload.dataset.fields import record_fields
from oidownload.dataset.kinds import AnnotationKind
from oidownload.exports.base import Annotated

_S = {"dtype": "string"}
_BOX = {"sequence": "float32", "length": 4}
FEATURES: dict[str, dict[str, Any]] = {
    "relationships": {"name": "relationships", "sequence": [
        {"name": "subject", **_S}, {"name": "subject_mid", **_S}, {"name": "subject_bbox", **_BOX},
        {"name": "predicate", **_S},
        {"name": "object", **_S}, {"name": "object_mid", **_S}, {"name": "object_bbox", **_BOX},
    ]},
    "points": {"name": "points", "sequence": [
        {"name": "point", "sequence": "float32", "length": 2}, {"name": "label", **_S}, {"name": "mid", **_S},
        {"name": "answer", **_S}, {"name": "yes_votes", "dtype": "int32"}, {"name": "no_votes", "dtype": "int32"},
        {"name": "unsure_votes", "dtype": "int32"},
    ]},
}


def hf_features(kinds: Sequence[AnnotationKind[Any]]) -> list[dict[str, Any]]:
    return [FEATURES[k.name] for k in kinds]


def hf_columns(it: Annotated, kinds: Sequence[AnnotationKind[Any]], name: Callable[[str], str]) -> dict[str, Any]:
    """This image's columns for the kinds the export holds (an empty list when it has
    none), in the shape a webdataset sample's JSON has them too (dataset/fields.py)."""
    return record_fields(kinds, it.image, it.relationships, it.points, name)
