"""The annotation-kind registry (oidownload.dataset.kinds) against real files: every real
annotation header in tests/fixtures is exactly one kind, by the one detector that both
the CSV reader (select, export, gallery) and `db load` use; every other fixture gets the
clear error; every kind builds a typed record from a real row (V7 points: no real row
exists here, so its one header is built from the published column list); and a kind a
consumer does not handle yet is refused by name, never misread.

Expected values come from csv.DictReader on the fixture, never from the code under test."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from oidownload.core.errors import ConfigError, InputError
from oidownload.dataset import kinds
from oidownload.dataset.annotations import AnnotationFile, ClassFilter
from oidownload.dataset.db import formats
from tests.conftest import V3, V4

SHARED = Path("/work/shared/fixtures/openimages-v4plus")

# Every real annotation file, and the kind it is.
ANNOTATIONS = {
    V3 / "train" / "annotations-human-bbox.csv": "boxes",  # 8 columns: no attributes
    V3 / "validation" / "annotations-human-bbox.csv": "boxes",  # 13: attributes
    V3 / "train" / "annotations-human.csv": "labels",
    V3 / "train" / "annotations-machine.csv": "labels",
    V3 / "validation" / "annotations-human.csv": "labels",
    V3 / "validation" / "annotations-machine.csv": "labels",
    V4 / "bbox-xclick.roboflow-page.csv": "boxes",
    V4 / "oidv6-train-annotations-bbox.head.csv": "boxes",  # 21: XClick points
    V4 / "train-annotations-human-imagelabels-boxable.head.csv": "labels",
    V4 / "train-annotations-object-segmentation.head.csv": "segmentation",
    V4 / "oidv6-train-annotations-vrd.rows.csv": "relationships",
}
# Real CSVs that are no annotation file: the detector names the known kinds and the closest.
OTHERS = {
    V3 / "train" / "images.csv": None,
    V3 / "validation" / "images.csv": None,
    V4 / "train-images-boxable-with-rotation.head.csv": None,
    V4 / "validation-images-with-rotation.row.csv": None,
    V4 / "oidv6-relationship-triplets.head.csv": "relationships",  # triplets: no ImageID, no boxes
    V3 / "class-descriptions.csv": None,
    V3 / "class-descriptions.quoting-examples.csv": None,
}
# FiftyOne's column list for oidv7-*-annotations-point-labels.csv, ImageId first (sic).
POINT_HEADER = ("ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                "TextLabel")
POINT_ROW = ["0001eeaf4aed83f9", "0.25", "0.5", "/m/01g317", "yes", "ih", "2", "0", "1", ""]


def header_of(path: Path) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f)))


def first_row(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.DictReader(f))


def test_every_fixture_csv_is_in_one_table_here() -> None:
    """A new fixture must say what it is: an annotation kind, or not one."""
    found = {*V3.rglob("*.csv"), *V4.rglob("*.csv")}
    assert found == set(ANNOTATIONS) | set(OTHERS)
    if SHARED.is_dir():  # the shared copies are the same files
        assert {p.name for p in SHARED.glob("*.csv")} <= {p.name for p in found}


def test_every_registered_kind_has_a_real_header_here() -> None:
    # narratives: JSON lines, detected from their keys (tests/test_narratives.py)
    assert set(kinds.KINDS) == {*ANNOTATIONS.values(), "points", "narratives"}


@pytest.mark.parametrize("path", sorted(ANNOTATIONS), ids=lambda p: p.name)
def test_a_real_header_is_exactly_one_kind_for_every_reader(path: Path) -> None:
    header = header_of(path)
    want = kinds.KINDS[ANNOTATIONS[path]]
    assert kinds.detect(header) == [want]
    assert kinds.kind_of(header, str(path)) is want
    assert AnnotationFile.open(path).kind is want  # select, export, gallery
    with open(path, encoding="utf-8") as f:
        found = formats.detect(path.name, f.readline())  # db load
    assert found is not None and found.kind is want and found.kind_name == want.name


def test_the_point_header_is_points_and_its_image_column_is_spelled_imageid() -> None:
    assert kinds.detect(POINT_HEADER) == [kinds.POINTS]
    assert kinds.detect(POINT_HEADER[:-1]) == [kinds.POINTS]  # TextLabel may be absent
    with pytest.raises(InputError, match=r"the closest is points, which also needs ImageId$"):
        kinds.kind_of(("ImageID", *POINT_HEADER[1:]), "points.csv")


@pytest.mark.parametrize("path", sorted(OTHERS), ids=lambda p: p.name)
def test_a_header_of_no_kind_names_the_known_kinds_and_the_closest(path: Path) -> None:
    with pytest.raises(InputError) as err:
        AnnotationFile.open(path)
    message = str(err.value)
    assert str(path) in message and "not an Open Images annotation file" in message
    assert f"({', '.join(kinds.KINDS)})" in message and "the closest is" in message
    if OTHERS[path]:
        assert f"the closest is {OTHERS[path]}, " in message


def test_a_box_file_is_boxes_not_labels_too() -> None:
    """Box headers hold every label column: the more specific kind wins, so one remains."""
    assert set(kinds.LABELS.signature) < set(kinds.BOXES.signature)
    assert kinds.detect((*kinds.BOXES.signature, "IsOccluded")) == [kinds.BOXES]


def _record(path: Path) -> object:
    table = AnnotationFile.open(path)
    fields = next(table.rows())
    record = table.kind.reader(table.columns)(fields)
    assert record is not None
    assert dataclasses.is_dataclass(record) and type(record).__dataclass_params__.frozen  # type: ignore[union-attr]
    assert not hasattr(record, "__dict__")  # slots
    return record


@pytest.mark.parametrize("path", [p for p, k in ANNOTATIONS.items() if k == "boxes"], ids=lambda p: p.name)
def test_a_box_record_from_a_real_row(path: Path) -> None:
    box, row = _record(path), first_row(path)
    assert isinstance(box, kinds.Box)
    assert (box.image_id, box.label, box.source) == (row["ImageID"], row["LabelName"], row["Source"])
    assert box.box == tuple(float(row[c]) for c in ("XMin", "XMax", "YMin", "YMax"))
    assert box.confidence == float(row["Confidence"])
    assert dict(box.attrs) == {a: int(row[a]) for a in kinds.ATTRIBUTES if a in row}
    assert box.flag(kinds.BoxAttribute.IS_GROUP_OF) == int(row.get("IsGroupOf") or 0)


@pytest.mark.parametrize("path", [p for p, k in ANNOTATIONS.items() if k == "labels"], ids=lambda p: p.name)
def test_a_label_record_from_a_real_row(path: Path) -> None:
    label, row = _record(path), first_row(path)
    assert label == kinds.Label(row["ImageID"], row["LabelName"], row["Source"], float(row["Confidence"]))


def test_a_mask_record_from_a_real_row() -> None:
    path = V4 / "train-annotations-object-segmentation.head.csv"
    mask, row = _record(path), first_row(path)
    assert isinstance(mask, kinds.Mask)
    assert (mask.image_id, mask.label, mask.mask_path, mask.box_id) == (
        row["ImageID"], row["LabelName"], row["MaskPath"], row["BoxID"])
    assert (mask.xmin, mask.xmax, mask.ymin, mask.ymax) == tuple(
        float(row[f"Box{c}"]) for c in ("XMin", "XMax", "YMin", "YMax"))
    assert mask.predicted_iou == float(row["PredictedIoU"])
    clicks = [c.split() for c in row["Clicks"].split(";") if c]
    assert len(mask.clicks) == len(clicks) > 3
    assert [(c.x, c.y, c.positive) for c in mask.clicks] == [(float(x), float(y), flag == "1") for x, y, flag in clicks]
    # MaskPath is <ImageID>_<LabelName without slashes>_<BoxID>.png
    assert mask.mask_path == f"{mask.image_id}_{mask.label.replace('/', '')}_{mask.box_id}.png"


def test_a_relationship_record_from_a_real_row() -> None:
    path = V4 / "oidv6-train-annotations-vrd.rows.csv"
    rel, row = _record(path), first_row(path)
    assert isinstance(rel, kinds.Relationship)
    assert (rel.image_id, rel.label1, rel.label2, rel.relationship) == (
        row["ImageID"], row["LabelName1"], row["LabelName2"], row["RelationshipLabel"])
    for k, box in ((1, rel.box1), (2, rel.box2)):
        assert box == tuple(float(row[f"{c}{k}"]) for c in ("XMin", "XMax", "YMin", "YMax"))


def test_a_point_record() -> None:
    point = kinds.POINTS.reader(POINT_HEADER)(POINT_ROW)
    assert point == kinds.Point("0001eeaf4aed83f9", "/m/01g317", 0.25, 0.5, "yes", "ih", 2, 0, 1, "")
    assert kinds.POINTS.reader(POINT_HEADER)(["0001eeaf4aed83f9", "x", *POINT_ROW[2:]]) is None  # malformed: none


def test_class_filter_fields_are_typed() -> None:
    flt = ClassFilter(frozenset({"/m/0k4j"}), exclude=frozenset({"IsOccluded"}))  # type: ignore[arg-type]
    assert flt.exclude == {kinds.BoxAttribute.IS_OCCLUDED}
    assert all(isinstance(a, kinds.BoxAttribute) for a in flt.exclude)
    with pytest.raises(ConfigError, match="unknown box attributes"):
        ClassFilter(frozenset({"/m/0k4j"}), exclude=frozenset({"IsBlue"}))  # type: ignore[arg-type]


# -- consumers that do not handle a kind yet say so ---------------------------------------------------

SEGMENTATION = V4 / "train-annotations-object-segmentation.head.csv"
VRD = V4 / "oidv6-train-annotations-vrd.rows.csv"


def test_every_kind_is_selected_and_loaded() -> None:
    # Since issues 22 and 23 every registered kind is handled by `select` and `db load`.
    assert all({kinds.SELECT, kinds.DB_LOAD} <= k.supported for k in kinds.KINDS.values()), \
        {k.name: sorted(k.supported) for k in kinds.KINDS.values()}


@pytest.mark.parametrize("consumer", [kinds.SELECT, kinds.DB_LOAD, kinds.EXPORT, kinds.GALLERY])
def test_a_consumer_that_does_not_handle_a_kind_refuses_it_by_name(consumer: str) -> None:
    # The rule stays for the next kind: registered before its consumers handle it, it is
    # refused by name, never misread.
    future = dataclasses.replace(kinds.BOXES, name="future", what="future annotations", supported=frozenset())
    with pytest.raises(InputError, match=f"x.csv: future annotations are recognised but not yet supported by "
                                         f"`{consumer}`"):
        future.require(consumer, "x.csv")
    kinds.BOXES.require(consumer, "x.csv")  # a kind that is handled passes
