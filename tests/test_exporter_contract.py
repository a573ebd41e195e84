"""Every registered exporter (oidownload.exports.EXPORTERS) round-trips the same download
(tests/test_exports.py's: 80 real V3 ids with their real boxes) through a real reader
of its format, and the boxes each reader gets back are the COCO export's boxes, in
pixels of the written files, image for image:

    csv          Python's csv
    coco         pycocotools
    yolo         Ultralytics' own label-path rule and line format
    hf           Hugging Face `datasets` (a child process, as a user runs it)
    voc          an XML parser and torchvision.datasets.VOCDetection
    attribution  Python's csv (credits, no boxes)
    yolo-seg     (masks only: refuses a download without segmentation annotations)
    webdataset   the `webdataset` library, on the same corpus downloaded into shards (the
                 files download itself is refused: the format writes into shards)

Every exporter that takes masks (SEGMENTATION in its kinds) also round-trips the masks
tests/maskdata.py writes into the download, each equal to the written PNG:

    coco         pycocotools' annToMask
    hf           Hugging Face `datasets` (the `masks` images)
    yolo-seg     Ultralytics' own label reader (YOLODataset), polygons filled by OpenCV

A new exporter without a reader here fails test_every_exporter_has_a_reader."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.exports import EXPORTERS
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import (
    BOXES,
    DESCRIPTIONS,
    Download,
    class_names,
    journal_rows,
    load_with_datasets,
    require,
    rows_of,
    run_cli,
)
from tests.maskdata import Masked, add_masks
from tests.test_exports import ultralytics_label_path

# name → [(class display name, xmin, ymin, xmax, ymax)] in pixels of the written file, per ImageID
Boxes = dict[str, list[tuple[str, float, float, float, float]]]
TOLERANCE = 0.01  # px: COCO and VOC round to 0.001 px, YOLO and CSV to 1e-6 of a side, HF to float32


def _export(download: Download, fmt: str, *args: object) -> Path:
    res = run_cli("annotations", download.out, "--format", fmt, *args)
    assert res.returncode == 0, res.stderr
    return download.out / "annotations"


def _size(download: Download, image_id: str) -> tuple[int, int]:
    subset = download.source[image_id]["Subset"]
    with Image.open(download.out / subset / image_id[:3] / f"{image_id}.jpg") as im:
        return im.size


def read_csv(download: Download) -> Boxes | None:
    dest = _export(download, "csv")
    names = class_names()
    found: Boxes = {i: [] for i in download.source}
    for path in BOXES:  # one exported file per input file, named after it (with its folder when names repeat)
        out = dest / f"{path.parent.name}-{path.name}"
        for r in rows_of(out):
            w, h = _size(download, r["ImageID"])
            found[r["ImageID"]].append((names[r["LabelName"]], float(r["XMin"]) * w, float(r["YMin"]) * h,
                                        float(r["XMax"]) * w, float(r["YMax"]) * h))
    return found


def read_coco(download: Download) -> Boxes | None:
    from pycocotools.coco import COCO

    coco = COCO(str(_export(download, "coco") / "coco.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    found: Boxes = {}
    for img in coco.loadImgs(coco.getImgIds()):
        assert (img["width"], img["height"]) == _size(download, img["open_images_id"])
        found[img["open_images_id"]] = [
            (cats[a["category_id"]], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))]
    return found


def read_yolo(download: Download) -> Boxes | None:
    import yaml

    root = _export(download, "yolo") / "yolo"
    data = yaml.safe_load((root / "data.yaml").read_text())
    found: Boxes = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        for image in (Path(data["path"]) / data[split]).rglob("*.jpg"):
            with Image.open(image) as im:
                w, h = im.size
            boxes = found.setdefault(image.stem, [])
            for line in Path(ultralytics_label_path(str(image))).read_text().splitlines():
                k, cx, cy, bw, bh = line.split()
                x, y, ww, hh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
                boxes.append((data["names"][int(k)], x - ww / 2, y - hh / 2, x + ww / 2, y + hh / 2))
    return found


_HF = """
import json, sys
import datasets
ds = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])
found = {}
for part in ds.values():
    names = part.features["objects"]["category"].feature.names
    for row in part:
        objects = row["objects"]
        found[row["image_id"]] = [[names[c], *b] for c, b in zip(objects["category"], objects["bbox"])]
print(json.dumps(found))
"""


def read_hf(download: Download) -> Boxes | None:
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    _export(download, "hf")
    cache = download.out.parent / "hf-contract"
    env = {**os.environ, "HF_HOME": str(cache / "home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", _HF, str(download.out), str(cache / "datasets")],
                            capture_output=True, text=True, env=env, timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    rows = json.loads(loaded.stdout.splitlines()[-1])
    return {i: [(name, x, y, x + w, y + h) for name, x, y, w, h in boxes] for i, boxes in rows.items()}


def read_voc(download: Download) -> Boxes | None:
    require(importlib.util.find_spec("torchvision") is not None, "torchvision (pip install '.[test]')")
    from torchvision.datasets import VOCDetection

    root = _export(download, "voc")
    voc = root / "VOCdevkit" / "VOC2007"
    found: Boxes = {}
    subsets = {"train": "train", "val": "validation"}
    for image_set, subset in subsets.items():
        ids = (voc / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split()
        assert ids == sorted(i for i, r in download.source.items() if r["Subset"] == subset)
        dataset = VOCDetection(str(root), year="2007", image_set=image_set)
        assert len(dataset) == len(ids)
        for image_id, (image, target) in zip(ids, dataset, strict=True):
            xml = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()  # the same file, by a plain parser
            ann = target["annotation"]
            assert ann["filename"] == xml.findtext("filename") == f"{image_id}.jpg"
            assert (int(ann["size"]["width"]), int(ann["size"]["height"])) == image.size == _size(download, image_id)
            assert int(ann["size"]["depth"]) == len(image.getbands())
            assert ann["segmented"] == "0"
            objects = ann.get("object", [])
            assert len(objects) == len(xml.findall("object"))
            found[image_id] = []
            for obj in objects:
                assert obj["pose"] == "Unspecified" and obj["difficult"] == "0"
                b = obj["bndbox"]
                found[image_id].append((obj["name"], float(b["xmin"]), float(b["ymin"]), float(b["xmax"]),
                                        float(b["ymax"])))
    trainval = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert sorted(trainval) == sorted(download.source)
    return found


def read_attribution(download: Download) -> Boxes | None:
    rows = rows_of(_export(download, "attribution") / "ATTRIBUTION.csv")
    assert sorted(r["ImageID"] for r in rows) == sorted(journal_rows(download.out))
    return None  # credits only


def read_yolo_seg(download: Download) -> Boxes | None:
    res = run_cli("annotations", download.out, "--format", "yolo-seg", "-d", download.out.parent / "refused-seg")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "pass the segmentation annotations" in res.stderr
    assert not (download.out.parent / "refused-seg" / "yolo-seg").exists()
    return None  # masks only: MASK_READERS


def read_webdataset(download: Download) -> Boxes | None:
    import webdataset as wds

    res = run_cli("annotations", download.out, "--format", "webdataset")
    assert res.returncode == 1 and "Traceback" not in res.stderr and "--output-format webdataset" in res.stderr
    assert not (download.out / "oidownload.classes.txt").exists()  # refused before anything is written
    # The same corpus (same seed, same ids) into shards, annotated there, read back.
    corpus = Corpus.generate(0, mix="tiny", seed=51, ids=list(download.source))
    for image_id, row in download.source.items():
        corpus.entries[image_id].subset = row["Subset"]
    out, manifest = download.out.parent / "wds-contract", download.out.parent / "wds-contract.csv"
    with OriginThread(Origin(corpus)) as origin:
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(V3_COLUMNS)
            for image_id, row in download.source.items():
                ours = dict(zip(V3_COLUMNS, corpus.manifest_row(image_id, origin.base_url), strict=True))
                w.writerow([ours[c] if c in ("OriginalURL", "Thumbnail300KURL") else row[c] for c in V3_COLUMNS])
        res = run_cli("download", manifest, "-o", out, "--output-format", "webdataset", "--resize", "120",
                      "--progress", "none")
        assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "webdataset", "--annotations", BOXES[0], "--annotations", BOXES[1],
                  "--class-descriptions", DESCRIPTIONS)
    assert res.returncode == 0, res.stderr
    found: Boxes = {}
    for s in wds.WebDataset(sorted(str(p) for p in out.rglob("*.tar")), shardshuffle=False).decode():
        objects = s["json"]["objects"]
        found[s["__key__"]] = [(name, x, y, x + w, y + h)
                               for name, (x, y, w, h) in zip(objects["labels"], objects["bbox"], strict=True)]
    return found


READERS: dict[str, Callable[[Download], Boxes | None]] = {
    "csv": read_csv, "coco": read_coco, "yolo": read_yolo, "hf": read_hf, "voc": read_voc,
    "attribution": read_attribution, "yolo-seg": read_yolo_seg, "webdataset": read_webdataset,
}


def test_every_exporter_has_a_reader() -> None:
    assert set(READERS) == set(EXPORTERS)


@pytest.fixture(scope="module")
def coco_boxes(download: Download) -> Boxes:
    boxes = read_coco(download)
    assert boxes is not None
    return boxes


def _same(got: Boxes, want: Boxes) -> None:
    """The same boxes per image, each matched to one of the same class within TOLERANCE."""
    assert set(got) == set(want)
    for image_id, boxes in want.items():
        left = list(got[image_id])
        assert len(left) == len(boxes), image_id
        for b in boxes:
            match = next((g for g in left if g[0] == b[0] and all(abs(p - q) <= TOLERANCE
                                                                   for p, q in zip(g[1:], b[1:], strict=True))), None)
            assert match is not None, (image_id, b, left)
            left.remove(match)


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_exporter_round_trips_through_its_reader(fmt: str, download: Download, coco_boxes: Boxes) -> None:
    if fmt not in READERS:
        pytest.fail(f"exporter {fmt!r} has no reader check in READERS")
    got = READERS[fmt](download)
    if got is None:
        return
    names = class_names()
    source = download.boxes()
    assert {i: sorted(names[r["LabelName"]] for r in rs) for i, rs in source.items()} == {
        i: sorted(b[0] for b in got.get(i, [])) for i in source}
    _same(got, coco_boxes)


def test_voc_keeps_the_box_attributes_and_escapes_untrusted_names(download: Download, tmp_path: Path) -> None:
    """Class names come from a CSV: markup and control characters in one stay text."""
    with open(DESCRIPTIONS, newline="", encoding="utf-8") as f:
        pairs = list(csv.reader(f))
    mid = sorted({r["LabelName"] for rs in download.boxes().values() for r in rs})[0]
    hostile = '<name>&amp; "Car" </object>\x01'
    descriptions = tmp_path / "descriptions.csv"
    with open(descriptions, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([m, hostile if m == mid else n] for m, n in pairs)
    voc = _export(download, "voc", "--class-descriptions", descriptions) / "VOCdevkit" / "VOC2007"
    names = {**class_names(), mid: hostile.replace("\x01", "\ufffd")}  # XML 1.0 cannot hold \x01
    flags = (("truncated", "IsTruncated"), ("occluded", "IsOccluded"), ("group_of", "IsGroupOf"))
    for image_id, rows in download.boxes().items():
        objects = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot().findall("object")
        assert sorted((o.findtext("name"), *(o.findtext(tag) for tag, _ in flags)) for o in objects) == sorted(
            (names[r["LabelName"]], *(str(int(r.get(attr) or 0)) for _, attr in flags)) for r in rows)
    assert not [p for p in voc.parent.parent.iterdir() if p.name.startswith(".VOCdevkit")]  # swapped in whole


def test_every_annotation_kind_is_exported() -> None:
    # Since issues 22 and 23 every kind reaches the exports (a kind that does not is
    # refused by name: tests/test_kinds_contract.py checks that rule with a made-up kind).
    from oidownload.dataset.kinds import EXPORT, KINDS

    assert all(EXPORT in k.supported for k in KINDS.values()), [k.name for k in KINDS.values()
                                                                if EXPORT not in k.supported]


def test_the_gallery_never_imports_the_exporters() -> None:
    """Box geometry lives in dataset/geometry.py, which the gallery and every exporter share."""
    import ast

    root = Path(__file__).parent.parent / "oidownload" / "gallery"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith("oidownload.exports")], path


def test_a_box_row_that_cannot_be_read_is_said_not_lost(tmp_path: Path) -> None:
    # A box whose confidence is not a number is left out of the exports, and the note
    # says how many: nothing disappears without a word.
    from oidownload.dataset.annotations import AnnotationFile
    from oidownload.dataset.geometry import WrittenBoxes
    from oidownload.state.reader import Written

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     "000000000000000a,xclick,/m/01,1,0.1,0.5,0.1,0.5\n"
                     "000000000000000a,xclick,/m/01,high,0.1,0.5,0.1,0.5\n"
                     "000000000000000a,xclick,/m/01,1,0.2,wide,0.1,0.5\n", encoding="utf-8")
    image = Written("000000000000000a", "validation", "validation/000/000000000000000a.jpg", "jpg", 100, 80, 1, None,
                    "original", True, 1000)
    reader = WrittenBoxes({image.image_id: image})
    got = list(reader.read([AnnotationFile.open(boxes)]))
    assert len(got) == 1 and reader.unreadable == 2


# -- narratives (issue 23): the captions round trip ---------------------------------------------------

NARRATIVES = [Path(__file__).parent / "fixtures" / "localized-narratives" / n for n in
              ("open_images_train_v6_captions.sample.jsonl", "open_images_validation_localized_narratives.sample.jsonl")]


def fixture_captions(ids: set[str]) -> dict[str, list[str]]:
    """Every caption of the given images, read with json alone, in file order."""
    found: dict[str, list[str]] = {}
    for path in NARRATIVES:
        for line in path.read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            if obj["image_id"] in ids:
                found.setdefault(obj["image_id"], []).append(obj["caption"])
    return found


def _with_narratives(download: Download, fmt: str, *args: object) -> Path:
    boxes = [a for p in BOXES for a in ("--annotations", p)]
    told = [a for p in NARRATIVES for a in ("--annotations", p)]
    return _export(download, fmt, *boxes, *told, *args)


def test_coco_captions_load_in_pycocotools_with_every_caption_of_every_image(download: Download) -> None:
    from pycocotools.coco import COCO

    dest = _with_narratives(download, "coco")
    want = fixture_captions(set(download.source))
    assert len(want) == 9 and sum(map(len, want.values())) == 13  # several annotators, an empty caption, unicode
    caps = COCO(str(dest / "captions.json"))
    boxes = COCO(str(dest / "coco.json"))
    got: dict[str, list[str]] = {}
    for img in caps.loadImgs(caps.getImgIds()):
        assert boxes.loadImgs([img["id"]])[0]["open_images_id"] == img["open_images_id"]  # the same image ids
        anns = caps.loadAnns(caps.getAnnIds(imgIds=[img["id"]]))
        if anns:
            got[img["open_images_id"]] = [a["caption"] for a in anns]
    assert got == want
    assert len(caps.getImgIds()) == len(download.source)


def test_hf_metadata_gives_an_image_text_dataset(download: Download) -> None:
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    _with_narratives(download, "hf")
    cache = download.out.parent / "hf-captions"
    env = {**os.environ, "HF_HOME": str(cache / "home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    script = ("import json, sys, datasets\nds = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])\n"
              "print(json.dumps({r['image_id']: [r['caption'], r['captions'], r['image'].size[0] > 0] "
              "for part in ds.values() for r in part}))")
    try:
        loaded = subprocess.run([sys.executable, "-c", script, str(download.out), str(cache / "datasets")],
                                capture_output=True, text=True, env=env, timeout=240)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        rows = json.loads(loaded.stdout.splitlines()[-1])
    finally:
        _export(download, "hf", *[a for p in BOXES for a in ("--annotations", p)])  # as the other tests expect it
    want = fixture_captions(set(download.source))
    assert set(rows) == set(download.source)
    for image_id, (caption, captions, has_image) in rows.items():
        assert has_image
        assert captions == want.get(image_id, [])
        assert caption == (want[image_id][0] if image_id in want else "")


def test_csv_export_holds_the_narratives_of_the_downloaded_images(download: Download) -> None:
    dest = _with_narratives(download, "csv")
    got: dict[str, list[str]] = {}
    for path in NARRATIVES:
        for r in rows_of(dest / path.name.replace(".jsonl", ".csv")):
            got.setdefault(r["ImageID"], []).append(r["Caption"])
    assert got == fixture_captions(set(download.source))
# -- relationships and points (issue 23) through pycocotools and `datasets` ----------------------------

def _kind_files(download: Download, tmp: Path) -> tuple[Path, Path, dict[str, int], dict[str, int]]:
    """A relationship file on the download's real boxes (the first and last box of each
    image, and an `is`), and three points an image, with the count per image of each."""
    vrd, points = tmp / "vrd.csv", tmp / "points.csv"
    rels: dict[str, int] = {}
    pts: dict[str, int] = {}
    q = ("XMin", "XMax", "YMin", "YMax")
    with open(vrd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "LabelName1", "LabelName2", *(f"{c}{k}" for k in (1, 2) for c in q), "RelationshipLabel"])
        for image_id, boxes in sorted(download.boxes().items()):
            if len(boxes) >= 2:
                a, b = boxes[0], boxes[-1]
                w.writerow([image_id, a["LabelName"], b["LabelName"], *(a[c] for c in q), *(b[c] for c in q), "on"])
                w.writerow([image_id, a["LabelName"], "/m/083vt", *(a[c] for c in q), *(a[c] for c in q), "is"])
                rels[image_id] = 2
    with open(points, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                    "TextLabel"])
        for k, image_id in enumerate(sorted(download.source)):
            for j in range(3):
                w.writerow([image_id, f"{(k % 7 + 1) / 9:.4f}", f"{(j + 1) / 4:.4f}", "/m/0342h",
                            ("yes", "no", "unsure")[j], "ih", 2 - j, j, 0, ""])
            pts[image_id] = 3
    return vrd, points, rels, pts


def test_relationships_and_points_round_trip_through_pycocotools(download: Download, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    vrd, points, rels, pts = _kind_files(download, tmp_path)
    res = run_cli("annotations", download.out, "--format", "coco", "-d", tmp_path / "coco",
                  "--annotations", BOXES[0], "--annotations", BOXES[1], "--annotations", vrd, "--annotations", points,
                  "--class-descriptions", DESCRIPTIONS)
    assert res.returncode == 0, res.stderr
    coco = COCO(str(tmp_path / "coco" / "coco.json"))
    doc = coco.dataset
    mids = {c["id"]: c["freebase_id"] for c in doc["categories"]}
    by_image = {i["id"]: i["open_images_id"] for i in doc["images"]}
    source = {(r["ImageID"], r["RelationshipLabel"]): r for r in rows_of(vrd)}
    assert len(doc["relationships"]) == sum(rels.values()) > 0
    assert {p["name"] for p in doc["predicates"]} == {"on", "is"}
    for r in doc["relationships"]:
        image_id = by_image[r["image_id"]]
        row = source[(image_id, r["predicate"])]
        subject, obj = coco.loadAnns([r["subject_id"], r["object_id"]])
        w, h = _size(download, image_id)
        assert mids[subject["category_id"]] == row["LabelName1"]
        for ann, k in ((subject, 1), (obj, 2 if r["predicate"] != "is" else 1)):
            x0, x1, y0, y1 = (float(row[f"{c}{k}"]) for c in ("XMin", "XMax", "YMin", "YMax"))
            assert all(abs(u - v) <= 0.5 for u, v in zip(ann["bbox"], (x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h),
                                                         strict=True))
        if r["predicate"] == "is":
            assert r["attribute_mid"] == "/m/083vt" and r["object_id"] == r["subject_id"]
        else:
            assert mids[obj["category_id"]] == row["LabelName2"]
    assert not any(a.get("relationship_box") for a in doc["annotations"])  # every side is a real box
    got_points = [a for a in coco.loadAnns(coco.getAnnIds()) if "point" in a]
    assert len(got_points) == sum(pts.values())
    assert {(a["answer"], a["yes_votes"]) for a in got_points} == {("yes", 2), ("no", 1), ("unsure", 0)}


_HF_KINDS = """
import json, sys
import datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({row["image_id"]: [row["relationships"], row["points"]] for part in ds.values() for row in part}))
"""


def test_relationships_and_points_round_trip_through_datasets(download: Download, tmp_path: Path) -> None:
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    vrd, points, rels, _ = _kind_files(download, tmp_path)
    try:
        _export(download, "hf", "--annotations", BOXES[0], "--annotations", BOXES[1], "--annotations", vrd,
                "--annotations", points, "--class-descriptions", DESCRIPTIONS)
        rows = load_with_datasets(_HF_KINDS, tmp_path / "home", download.out, tmp_path / "datasets")
        assert set(rows) == set(download.source)
        names = class_names()
        for image_id, (relationships, pts_of) in rows.items():
            assert len(relationships) == rels.get(image_id, 0)
            for r in relationships:
                assert r["subject"] == names[r["subject_mid"]] and len(r["subject_bbox"]) == len(r["object_bbox"]) == 4
                assert r["predicate"] in ("on", "is")
            assert [p["answer"] for p in pts_of] == ["yes", "no", "unsure"] and all(len(p["point"]) == 2 for p in pts_of)
    finally:
        _export(download, "hf")  # the boxes-only metadata the other tests read
# -- masks (issue 22) ----------------------------------------------------------------------------------

# ImageID -> [(class display name, the mask's pixels as a bool array)]
Masks = dict[str, list[tuple[str, Any]]]


@pytest.fixture(scope="module")
def masked(download: Download, tmp_path_factory: pytest.TempPathFactory) -> Masked:
    return add_masks(download, tmp_path_factory.mktemp("masks"))


def _mask_export(download: Download, masked: Masked, fmt: str) -> Path:
    res = run_cli("annotations", download.out, "--format", fmt, "--annotations", BOXES[0], "--annotations", BOXES[1],
                  "--annotations", masked.csv, "-d", download.out.parent / f"masks-{fmt}")
    assert res.returncode == 0, res.stderr
    return download.out.parent / f"masks-{fmt}"


def masks_coco(download: Download, masked: Masked) -> Masks:
    from pycocotools.coco import COCO

    coco = COCO(str(_mask_export(download, masked, "coco") / "coco.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    found: Masks = {}
    for a in coco.loadAnns(coco.getAnnIds()):
        if isinstance(a["segmentation"], dict):
            image_id = coco.loadImgs([a["image_id"]])[0]["open_images_id"]
            found.setdefault(image_id, []).append((cats[a["category_id"]], coco.annToMask(a).astype(bool)))
    return found


_HF_MASKS = """
import base64, json, sys
import numpy as np
import datasets
ds = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])
found = {}
for part in ds.values():
    names = part.features["mask_objects"]["category"].feature.names
    for row in part:
        masks = [np.array(m.convert("L")) > 0 for m in row["masks"]]
        found[row["image_id"]] = [[names[c], list(m.shape), base64.b64encode(np.packbits(m)).decode()]
                                  for c, m in zip(row["mask_objects"]["category"], masks, strict=True)]
print(json.dumps(found))
"""


def masks_hf(download: Download, masked: Masked) -> Masks:
    import base64

    import numpy as np

    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    _mask_export(download, masked, "hf")
    cache = download.out.parent / "hf-masks"
    env = {**os.environ, "HF_HOME": str(cache / "home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", _HF_MASKS, str(download.out), str(cache / "datasets")],
                            capture_output=True, text=True, env=env, timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    rows = json.loads(loaded.stdout.splitlines()[-1])
    found: Masks = {}
    for image_id, masks in rows.items():
        for name, (h, w), bits in masks:
            m = np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8))[: h * w].reshape(h, w).astype(bool)
            found.setdefault(image_id, []).append((name, m))
    return found


_YOLO_SEG = """
import json, sys
from ultralytics.data.utils import check_det_dataset
from ultralytics.data import YOLODataset
data = check_det_dataset(sys.argv[1])
out = {}
for split in ("train", "val"):
    for lb in YOLODataset(img_path=data[split], data=data, task="segment", imgsz=320, augment=False).labels:
        stem = lb["im_file"].rsplit("/", 1)[1].split(".")[0]
        out[stem] = [[data["names"][int(c)], s.tolist()] for c, s in zip(lb["cls"].reshape(-1), lb["segments"])]
print(json.dumps(out))
"""


def masks_yolo_seg(download: Download, masked: Masked) -> Masks:
    import numpy as np

    require(importlib.util.find_spec("ultralytics") is not None and importlib.util.find_spec("cv2") is not None,
            "Ultralytics (README: Masks in the exports)")
    import cv2

    root = _mask_export(download, masked, "yolo-seg") / "yolo-seg"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(download.out.parent / "yolo-config"), "YOLO_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _YOLO_SEG, str(root / "data.yaml")], capture_output=True, text=True,
                         timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    found: Masks = {}
    for image_id, segments in json.loads(res.stdout.splitlines()[-1]).items():
        w, h = _size(download, image_id)
        for name, points in segments:  # normalised, as Ultralytics keeps them
            filled = np.zeros((h, w), np.uint8)
            cv2.fillPoly(filled, [np.round(np.array(points) * [w, h]).astype(np.int32)], 1)
            found.setdefault(image_id, []).append((name, filled.astype(bool)))
    return found


# Readers, and the least IoU each must give (1.0: pixel for pixel; a polygon only approximates)
MASK_READERS: dict[str, tuple[Callable[[Download, Masked], Masks], float]] = {
    "coco": (masks_coco, 1.0), "hf": (masks_hf, 1.0), "yolo-seg": (masks_yolo_seg, 0.8),
}


def test_every_mask_exporter_has_a_mask_reader() -> None:
    from oidownload.dataset.kinds import SEGMENTATION

    assert set(MASK_READERS) == {n for n, e in EXPORTERS.items() if SEGMENTATION in e.kinds}


@pytest.mark.parametrize("fmt", sorted(MASK_READERS))
def test_masks_round_trip_through_their_reader(fmt: str, download: Download, masked: Masked) -> None:
    import numpy as np

    read, least = MASK_READERS[fmt]
    got = {i: ms for i, ms in read(download, masked).items() if ms}
    names = class_names()
    want: Masks = {}
    for box_id, mask in masked.masks.items():
        want.setdefault(masked.image_of(box_id), []).append((names[masked.label_of(box_id)], np.array(mask) > 0))
    assert set(got) == set(want)
    for image_id, masks in want.items():
        left = list(got[image_id])
        assert len(left) == len(masks), image_id
        for name, m in masks:
            def iou(g: tuple[str, Any], m: Any = m) -> float:
                return float((g[1] & m).sum() / (g[1] | m).sum()) if g[1].shape == m.shape else 0.0
            best = max((g for g in left if g[0] == name), key=iou, default=None)
            assert best is not None and iou(best) >= least, (fmt, image_id, name)
            left.remove(best)
