"""`oidownload annotations`: the boxes and labels of the images that downloaded, in the
Open Images CSV layout, COCO JSON or YOLO txt, in the frame of the written pixels.

Sizes come from the journal (after resizing and turning). A box is moved into the
written frame in two steps: into the kept region when `--resize-mode fill` cropped,
then through the turn `--orientation upright` applied.
"""

from __future__ import annotations

import csv
import enum
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fsio
from .annotations import ATTRIBUTES, AnnotationSource, AnnotationTable, Kind
from .classes import ClassDescriptions
from .errors import ConfigError, InputError, OutputError
from .fsio import atomic_file
from .state import StateDir, Written

Box = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax, normalised


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    COCO = "coco"
    YOLO = "yolo"


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


def _turn_point(code: int, x: float, y: float) -> tuple[float, float]:
    turn = _TURNS.get(code)
    return turn(x, y) if turn else (x, y)


def to_written_frame(box: Box, image: Written) -> Box | None:
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
    (ax, ay), (bx, by) = _turn_point(image.orientation, xmin, ymin), _turn_point(image.orientation, xmax, ymax)
    return min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)


def _point_to_written(x: float, y: float, image: Written) -> tuple[float, float]:
    if image.crop is not None:
        cx0, cy0, cx1, cy1 = image.crop
        x, y = (x - cx0) / (cx1 - cx0), (y - cy0) / (cy1 - cy0)
    return _turn_point(image.orientation, x, y)


@dataclass
class ExportResult:
    dest: Path
    images: int = 0
    boxes: int = 0
    labels: int = 0
    dropped: int = 0  # boxes a crop cut away entirely
    files: list[Path] = field(default_factory=list)


@dataclass
class BoxRow:
    image: Written
    label: str
    box: Box
    attrs: dict[str, int]


def box_rows(files: Sequence[AnnotationTable], images: dict[str, Written], result: ExportResult,
             mids: frozenset[str] | None) -> Iterator[BoxRow]:
    """The boxes of the given images (of the given classes) in the written frame; boxes a
    crop cut away are counted in result.dropped. The gallery draws exactly these."""
    for f in files:
        if f.kind is not Kind.BOXES:
            continue
        i_id, i_label = f.index("ImageID"), f.index("LabelName")
        i_box = [f.index(c) for c in ("XMin", "XMax", "YMin", "YMax")]
        i_attr = {a: f.index(a) for a in ATTRIBUTES if f.has(a)}
        for fields in f.rows(images):
            if mids is not None and fields[i_label] not in mids:
                continue
            try:
                raw = (float(fields[i_box[0]]), float(fields[i_box[1]]), float(fields[i_box[2]]), float(fields[i_box[3]]))
            except ValueError:
                continue
            image = images[fields[i_id]]
            box = to_written_frame(raw, image)
            if box is None:
                result.dropped += 1
                continue
            attrs = {a: int(fields[i]) for a, i in i_attr.items() if fields[i] in ("0", "1")}
            yield BoxRow(image, fields[i_label], box, attrs)


def export(
    out: str | Path,
    fmt: ExportFormat,
    source: AnnotationSource,
    *,
    dest: Path | None = None,
    names: ClassDescriptions | None = None,
    classes: frozenset[str] | None = None,
    state_dir: Path | None = None,
) -> ExportResult:
    images = {w.image_id: w for w in StateDir.open(out, state_dir).written()}
    if not images:
        raise InputError(f"{out} has no downloaded images (no row with status ok in its journal)")
    files = source.tables()
    if not files:
        raise ConfigError("no annotations: pass --annotations or --db (they are remembered when download had them)")
    if dest is None:
        if "://" in str(out):
            raise ConfigError(f"{out} is not a local folder: pass -d/--dest for the annotations")
        dest = Path(out) / "annotations"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dest}: {exc.strerror or exc}") from None
    result = ExportResult(dest, images=len(images))
    try:
        if fmt is ExportFormat.CSV:
            _write_csv(files, images, dest, result, classes)
        elif fmt is ExportFormat.COCO:
            _write_coco(files, images, dest, result, classes, names)
        else:
            _write_yolo(files, images, dest, result, classes, names)
    except OSError as exc:
        raise OutputError(f"cannot write the export in {dest}: {exc.strerror or exc}") from None
    return result


def _write_csv(files: Sequence[AnnotationTable], images: dict[str, Written], dest: Path, result: ExportResult,
               mids: frozenset[str] | None) -> None:
    """The Open Images rows of the downloaded images, coordinates in the written frame."""
    for f in files:
        target = dest / f.name
        i_id, i_label = f.index("ImageID"), f.index("LabelName")
        coords = [f.index(c) for c in ("XMin", "XMax", "YMin", "YMax")] if f.kind is Kind.BOXES else []
        clicks = [(f.index(f"XClick{k}X"), f.index(f"XClick{k}Y")) for k in range(1, 5) if f.has(f"XClick{k}X")]
        with atomic_file(target) as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(f.columns)
            for fields in f.rows(images):
                if mids is not None and fields[i_label] not in mids:
                    continue
                image = images[fields[i_id]]
                if coords:
                    try:
                        box = to_written_frame(tuple(float(fields[i]) for i in coords), image)  # type: ignore[arg-type]
                    except ValueError:
                        continue
                    if box is None:
                        result.dropped += 1
                        continue
                    for i, v in zip(coords, box, strict=True):
                        fields[i] = f"{v:.6f}"
                    for ix, iy in clicks:
                        try:
                            x, y = _point_to_written(float(fields[ix]), float(fields[iy]), image)
                        except ValueError:
                            continue  # an empty click stays empty
                        fields[ix], fields[iy] = f"{x:.6f}", f"{y:.6f}"
                    result.boxes += 1
                else:
                    result.labels += 1
                w.writerow(fields)
        result.files.append(target)


def _categories(rows: list[BoxRow], mids: frozenset[str] | None) -> list[str]:
    return sorted(mids) if mids is not None else sorted({r.label for r in rows})


def _write_coco(files: Sequence[AnnotationTable], images: dict[str, Written], dest: Path, result: ExportResult,
                mids: frozenset[str] | None, names: ClassDescriptions | None) -> None:
    rows = list(box_rows(files, images, result, mids))
    cats = _categories(rows, mids)
    cat_id = {mid: i + 1 for i, mid in enumerate(cats)}
    order = sorted(images)
    img_id = {image_id: i + 1 for i, image_id in enumerate(order)}
    doc: dict[str, Any] = {
        "info": {"description": "Open Images, downloaded by oidownload", "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC BY 2.0", "url": "https://creativecommons.org/licenses/by/2.0/"}],
        "images": [
            {"id": img_id[i], "file_name": images[i].location, "width": images[i].width, "height": images[i].height,
             "license": 1, "open_images_id": i}
            for i in order
        ],
        "categories": [
            {"id": cat_id[m], "name": names.name(m) if names else m, "supercategory": "object", "freebase_id": m}
            for m in cats
        ],
        "annotations": [],
    }
    for n, r in enumerate(rows, 1):
        w, h = r.image.width, r.image.height
        x, y = r.box[0] * w, r.box[2] * h
        bw, bh = (r.box[1] - r.box[0]) * w, (r.box[3] - r.box[2]) * h
        doc["annotations"].append({
            "id": n, "image_id": img_id[r.image.image_id], "category_id": cat_id[r.label],
            "bbox": [round(x, 3), round(y, 3), round(bw, 3), round(bh, 3)], "area": round(bw * bh, 3),
            "iscrowd": r.attrs.get("IsGroupOf", 0), "attributes": r.attrs,
        })
    result.boxes = len(rows)
    target = dest / "coco.json"
    with atomic_file(target) as fh:
        json.dump(doc, fh)
    result.files.append(target)


def _write_yolo(files: Sequence[AnnotationTable], images: dict[str, Written], dest: Path, result: ExportResult,
                mids: frozenset[str] | None, names: ClassDescriptions | None) -> None:
    """labels/<subset>/<abc>/<ImageID>.txt next to the images' own layout, one line a box:
    `class x_center y_center width height` (normalised); classes.txt names the classes."""
    rows = list(box_rows(files, images, result, mids))
    cats = _categories(rows, mids)
    index = {mid: i for i, mid in enumerate(cats)}
    per_image: dict[str, list[str]] = {i: [] for i in images}
    for r in rows:
        xmin, xmax, ymin, ymax = r.box
        per_image[r.image.image_id].append(
            f"{index[r.label]} {(xmin + xmax) / 2:.6f} {(ymin + ymax) / 2:.6f} {xmax - xmin:.6f} {ymax - ymin:.6f}"
        )
    labels = dest / "labels"
    # Each file atomically, in folders entered without following symlinks: like the
    # images, the labels never land outside the export folder.
    root_fd = fsio.open_root(dest)
    try:
        for image_id, lines in per_image.items():
            dir_fd = fsio.open_dir(root_fd, ("labels", images[image_id].subset, image_id[:3]), create=True)
            try:
                # Empty: an image without boxes.
                fsio.write_in(dir_fd, f"{image_id}.txt", "".join(line + "\n" for line in lines).encode())
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)
    classes_txt = dest / "classes.txt"
    with atomic_file(classes_txt) as fh:
        fh.write("".join(f"{names.name(m) if names else m}\n" for m in cats))
    result.boxes = len(rows)
    result.files += [classes_txt, labels]
