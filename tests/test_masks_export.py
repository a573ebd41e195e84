"""Masks in the exports (issue 22), read back by the real consumers: pycocotools (every
RLE decodes to the written PNG; COCOeval of the ground truth as detections gives segm
AP 1.0), Ultralytics (its dataset check and label reader accept the yolo-seg export;
one epoch of yolov8n-seg at imgsz 320 on CPU trains on it), and the CSV rows. The masks
are written into the exports' download by tests/maskdata.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oidownload.dataset.maskshapes import Bitmap, coco_rle, joined, outer_contours, polygon
from tests.conftest import BOXES, Download, rows_of, run_cli
from tests.maskdata import Masked, add_masks, written_size


@pytest.fixture(scope="module")
def masked(download: Download, tmp_path_factory: pytest.TempPathFactory) -> Masked:
    return add_masks(download, tmp_path_factory.mktemp("masks"))


def export(download: Download, masked: Masked, fmt: str, dest: Path, *args: object) -> tuple[Path, str]:
    res = run_cli("annotations", download.out, "--format", fmt, "--annotations", BOXES[0], "--annotations", BOXES[1],
                  "--annotations", masked.csv, "-d", dest, *args)
    assert res.returncode == 0, res.stderr
    return dest, res.stderr


def pixels(mask: Image.Image) -> np.ndarray:
    return np.array(mask.convert("L")) > 0


# -- the pure shapes ---------------------------------------------------------------------------------


def test_rle_and_contours_equal_pycocotools_and_opencv() -> None:
    """Random masks (noise, so many pieces, holes and one-pixel lines): the RLE text is
    byte-for-byte pycocotools' own, and the outer contours are OpenCV's (RETR_EXTERNAL,
    CHAIN_APPROX_SIMPLE), point for point."""
    from pycocotools import mask as coco_mask

    cv2 = pytest.importorskip("cv2") if os.environ.get("CI") != "true" else __import__("cv2")
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        a = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        bitmap = Bitmap(w, h, a.tobytes())
        assert coco_rle(bitmap)["counts"] == coco_mask.encode(np.asfortranarray(a))["counts"].decode()
        theirs, _ = cv2.findContours(a, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        assert sorted(sorted(c) for c in outer_contours(bitmap)) == sorted(
            sorted(map(tuple, c.reshape(-1, 2).tolist())) for c in theirs)


def test_pieces_are_joined_into_one_polygon_that_keeps_their_area() -> None:
    cv2 = pytest.importorskip("cv2") if os.environ.get("CI") != "true" else __import__("cv2")
    from PIL import ImageDraw

    im = Image.new("L", (200, 120))
    d = ImageDraw.Draw(im)
    for box in ((5, 5, 60, 50), (80, 10, 120, 100), (150, 60, 190, 110), (20, 80, 50, 110)):
        d.ellipse(box, fill=1)
    bitmap = Bitmap.of(im)
    pieces = outer_contours(bitmap)
    assert len(pieces) == 4
    poly = polygon(bitmap)
    assert poly is not None and poly == joined([p for p in pieces if len(p) >= 3])
    filled = np.zeros((120, 200), np.uint8)
    cv2.fillPoly(filled, [np.array(poly, np.int32)], 1)
    a = np.array(im) > 0
    assert (filled.astype(bool) & a).sum() / (filled.astype(bool) | a).sum() > 0.97


# -- COCO --------------------------------------------------------------------------------------------


def test_coco_rle_decodes_to_the_written_png(download: Download, masked: Masked, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    dest, stderr = export(download, masked, "coco", tmp_path / "coco")
    coco = COCO(str(dest / "coco.json"))
    cats = {c["id"]: c["freebase_id"] for c in coco.loadCats(coco.getCatIds())}
    got = {a["open_images_box_id"]: a for a in coco.loadAnns(coco.getAnnIds()) if isinstance(a["segmentation"], dict)}
    assert set(got) == set(masked.masks)  # the missing one is left out, and said
    assert "1 mask(s) named by the segmentation rows are not in the output" in stderr
    for box_id, a in got.items():
        img = coco.loadImgs([a["image_id"]])[0]
        assert img["open_images_id"] == masked.image_of(box_id) and cats[a["category_id"]] == masked.label_of(box_id)
        want = pixels(masked.masks[box_id])
        assert (coco.annToMask(a).astype(bool) == want).all()
        ys, xs = np.nonzero(want)
        assert a["area"] == want.sum()
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    # The box annotations stay as they were.
    boxes = [a for a in coco.loadAnns(coco.getAnnIds()) if isinstance(a["segmentation"], list)]
    assert len(boxes) == sum(len(rs) for rs in download.boxes().values())


def test_coco_ground_truth_as_detections_gives_segm_ap_1(download: Download, masked: Masked, tmp_path: Path) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dest, _ = export(download, masked, "coco", tmp_path / "coco")
    gt = COCO(str(dest / "coco.json"))
    anns = gt.loadAnns(gt.getAnnIds())
    assert sum(isinstance(a["segmentation"], dict) for a in anns) == len(masked.masks)
    # Every annotation, the masks' RLE and the boxes' polygons, as a detection (in RLE, as results must be).
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": gt.annToRLE(a),
             "score": 1.0} for a in anns]
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


# -- Ultralytics YOLO segmentation --------------------------------------------------------------------


def _ultralytics() -> None:
    from tests.conftest import require

    require(importlib.util.find_spec("ultralytics") is not None and importlib.util.find_spec("cv2") is not None,
            "Ultralytics (pip install ultralytics; see README, Masks in the exports)")


def test_yolo_seg_polygons_cover_the_masks(download: Download, masked: Masked, tmp_path: Path) -> None:
    import cv2
    import yaml

    dest, _ = export(download, masked, "yolo-seg", tmp_path / "y")
    root = dest / "yolo-seg"
    data = yaml.safe_load((root / "data.yaml").read_text())
    names = data["names"]
    seen = 0
    for image_id in {masked.image_of(b) for b in masked.masks}:
        subset = download.source[image_id]["Subset"]
        split = {"validation": "val"}.get(subset, subset)
        assert data[split] == f"images/{subset}"
        label = root / "labels" / subset / image_id[:3] / f"{image_id}.txt"
        w, h = written_size(download, image_id)
        lines = label.read_text().splitlines()
        mine = {b: m for b, m in masked.masks.items() if masked.image_of(b) == image_id}
        assert len(lines) == len(mine)
        for line in lines:
            k, *coords = line.split()
            points = np.array([float(v) for v in coords]).reshape(-1, 2) * [w, h]
            filled = np.zeros((h, w), np.uint8)
            cv2.fillPoly(filled, [np.round(points).astype(np.int32)], 1)
            # The line is one of the image's masks: the one it covers best.
            box_id, iou = max(((b, (filled.astype(bool) & pixels(m)).sum() / (filled.astype(bool) | pixels(m)).sum())
                               for b, m in mine.items()), key=lambda t: t[1])
            assert iou >= 0.8, (image_id, box_id, iou)
            assert names[int(k)] == next(n for n in [_name(masked.label_of(box_id))] if n)
            seen += 1
    assert seen == len(masked.masks)


def _name(mid: str) -> str:
    from tests.conftest import class_names

    return class_names()[mid]


def test_ultralytics_checks_and_reads_the_yolo_seg_export(download: Download, masked: Masked, tmp_path: Path) -> None:
    _ultralytics()
    dest, _ = export(download, masked, "yolo-seg", tmp_path / "y")
    check = """
import json, sys
from ultralytics.data.utils import check_det_dataset
from ultralytics.data import YOLODataset
data = check_det_dataset(sys.argv[1])
out = {}
for split in ("train", "val"):
    ds = YOLODataset(img_path=data[split], data=data, task="segment", imgsz=320, augment=False)
    out[split] = [[len(lb["segments"]), lb["cls"].reshape(-1).astype(int).tolist()] for lb in ds.labels]
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", check, str(dest / "yolo-seg" / "data.yaml")], capture_output=True,
                         text=True, timeout=240, env=_yolo_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.splitlines()[-1])
    per_split = {"train": 0, "val": 0}
    for b in masked.masks:
        per_split[{"validation": "val"}.get(download.source[masked.image_of(b)]["Subset"], "train")] += 1
    assert {s: sum(n for n, _ in rows) for s, rows in got.items()} == per_split
    assert sum(len(rows) for rows in got.values()) == len(download.source)  # every image, masked or not


def _yolo_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics-config"), "YOLO_OFFLINE": "1"}


@pytest.mark.slow
def test_one_epoch_of_yolov8n_seg_trains_on_the_export(download: Download, masked: Masked, tmp_path: Path) -> None:
    _ultralytics()
    dest, _ = export(download, masked, "yolo-seg", tmp_path / "y")
    train = """
import sys
from ultralytics import YOLO
model = YOLO("yolov8n-seg.yaml")
r = model.train(data=sys.argv[1], epochs=1, imgsz=320, batch=8, workers=0, device="cpu", plots=False,
                project=sys.argv[2], name="run", exist_ok=True, amp=False, val=True, verbose=False,
                fraction=0.25)  # 10 of the 40 train images: the test is that it trains, not how well
print("SEG-METRICS", r.results_dict if r is not None else None)
"""
    res = subprocess.run([sys.executable, "-c", train, str(dest / "yolo-seg" / "data.yaml"), str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=900, env=_yolo_env(tmp_path))
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "runs" / "run" / "weights" / "last.pt").is_file()
    assert "metrics/mAP50(M)" in res.stdout


# -- CSV ---------------------------------------------------------------------------------------------


def test_csv_copies_the_segmentation_rows_in_the_written_frame(download: Download, masked: Masked,
                                                               tmp_path: Path) -> None:
    dest, _ = export(download, masked, "csv", tmp_path / "csv")
    got = rows_of(dest / masked.csv.name)
    assert [r["BoxID"] for r in got] == [r["BoxID"] for r in masked.rows]  # every row of a written image
    for g, r in zip(got, masked.rows, strict=True):
        assert g["MaskPath"] == r["MaskPath"] and g["LabelName"] == r["LabelName"]
        # No crop and no turn in this download: the written frame is the original's.
        for c in ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"):
            assert float(g[c]) == pytest.approx(float(r[c]), abs=1e-6)
        assert [c.split()[2] for c in g["Clicks"].split(";")] == ["1", "0"]


# -- Hugging Face ------------------------------------------------------------------------------------


def test_hf_leaves_the_masks_out_when_a_split_has_none(download: Download, masked: Masked, tmp_path: Path) -> None:
    """`datasets` cannot type a column that is empty in a whole split: rather than a
    dataset that does not load, no masks, and a note that says why."""
    import csv

    train_only = tmp_path / "train-only-segmentation.csv"
    rows = [r for r in masked.rows if download.source[r["ImageID"]]["Subset"] == "train"]
    with open(train_only, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(masked.rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    res = run_cli("annotations", download.out, "--format", "hf", "--annotations", BOXES[0], "--annotations",
                  BOXES[1], "--annotations", train_only)
    assert res.returncode == 0, res.stderr
    assert "no mask in validation: metadata.jsonl leaves the masks out" in res.stderr
    for subset in ("train", "validation"):
        first = json.loads((download.out / subset / "metadata.jsonl").read_text().splitlines()[0])
        assert "masks_file_names" not in first and "objects" in first
    assert '"name": "masks"' not in (download.out / "README.md").read_text()
