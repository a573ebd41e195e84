"""Masks for the exports' download (conftest's `download`: files output, real V3 ids and
boxes), made the way a `--masks` download leaves them: a segmentation CSV with the real
columns and MaskPath names for some of the written images, and a 1-bit PNG in the
written frame at OUT/masks/<subset>/<abc>/<ImageID>_<BoxID>.png for each row but one.

Until the fetching side lands, the test writes those PNGs itself (`add_masks`); after
it, a real `download --masks` against zips served by the local origin can replace this.
Shapes: an ellipse inside the row's box, one mask in two pieces, and one ring (a hole).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from oidownload.sinks.files import mask_suffix, member_path
from tests.conftest import Download

SEG_COLUMNS = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
               "PredictedIoU", "Clicks"]


@dataclass
class Masked:
    csv: Path
    rows: list[dict[str, str]]  # every segmentation row written, the missing one included
    masks: dict[str, Image.Image] = field(default_factory=dict)  # BoxID -> the written mode "1" mask
    missing: str = ""  # the BoxID whose row has no file
    two_pieces: str = ""
    ring: str = ""

    def image_of(self, box_id: str) -> str:
        return next(r["ImageID"] for r in self.rows if r["BoxID"] == box_id)

    def label_of(self, box_id: str) -> str:
        return next(r["LabelName"] for r in self.rows if r["BoxID"] == box_id)


def written_size(download: Download, image_id: str) -> tuple[int, int]:
    return _size(download.out, download.source[image_id]["Subset"], image_id)


def _size(out: Path, subset: str, image_id: str) -> tuple[int, int]:
    with Image.open(out / subset / image_id[:3] / f"{image_id}.jpg") as im:
        return im.size


def add_masks(download: Download, dest: Path, images: int = 8) -> Masked:
    """Writes the CSV in dest and the masks into download.out; returns what it wrote."""
    boxes = download.boxes()
    # Masks in each split: Hugging Face's imagefolder cannot type a column empty in one.
    chosen = sorted(i for subset in ("train", "validation") for i in [
        j for j in sorted(boxes) if boxes[j] and download.source[j]["Subset"] == subset][: images // 2])
    return write_masks(download.out, [(i, download.source[i]["Subset"], boxes[i]) for i in chosen], dest)


def write_masks(out: Path, picks: list[tuple[str, str, list[dict[str, str]]]], dest: Path) -> Masked:
    """For each (ImageID, subset, its box rows): masks for up to two of its boxes."""
    masked = Masked(dest / "train-annotations-object-segmentation.csv", [])
    for n, (image_id, subset, rows) in enumerate(picks):
        w, h = _size(out, subset, image_id)
        big = [r for r in rows
               if (float(r["XMax"]) - float(r["XMin"])) * w >= 14 and (float(r["YMax"]) - float(r["YMin"])) * h >= 14]
        for k, r in enumerate(big[:2]):
            box_id = hashlib.sha256(f"{image_id}{k}".encode()).hexdigest()[:8]
            x0, x1, y0, y1 = (float(r[c]) for c in ("XMin", "XMax", "YMin", "YMax"))
            mid = r["LabelName"]
            masked.rows.append({
                "MaskPath": f"{image_id}_{mid.replace('/', '')}_{box_id}.png", "ImageID": image_id, "LabelName": mid,
                "BoxID": box_id, "BoxXMin": f"{x0:.6f}", "BoxXMax": f"{x1:.6f}", "BoxYMin": f"{y0:.6f}",
                "BoxYMax": f"{y1:.6f}", "PredictedIoU": "0.81",
                "Clicks": f"{(x0 + x1) / 2:.5f} {(y0 + y1) / 2:.5f} 1;{x0:.5f} {y0:.5f} 0"})
            if n == 1 and k == 0:
                masked.missing = box_id  # a row whose mask the output does not hold
                continue
            mask = Image.new("1", (w, h), 0)
            draw = ImageDraw.Draw(mask)
            px0, px1, py0, py1 = round(x0 * w), round(x1 * w) - 1, round(y0 * h), round(y1 * h) - 1
            if not masked.two_pieces:
                masked.two_pieces = box_id
                mid_x = (px0 + px1) // 2
                draw.ellipse((px0, py0, mid_x - 3, py1), fill=1)
                draw.rectangle((mid_x + 3, py0, px1, py1), fill=1)
            elif not masked.ring and min(px1 - px0, py1 - py0) >= 16:
                masked.ring = box_id
                draw.ellipse((px0, py0, px1, py1), fill=1)
                cx, cy = (px0 + px1) // 2, (py0 + py1) // 2
                draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=0)
            else:
                draw.ellipse((px0, py0, px1, py1), fill=1)
            folders, name = member_path(subset, image_id, mask_suffix(box_id))
            path = out.joinpath(*folders, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            mask.save(path)
            masked.masks[box_id] = mask
    with open(masked.csv, "w", newline="", encoding="utf-8") as f:
        w_ = csv.DictWriter(f, SEG_COLUMNS, lineterminator="\n")
        w_.writeheader()
        w_.writerows(masked.rows)
    assert masked.missing and masked.two_pieces and masked.ring
    return masked
