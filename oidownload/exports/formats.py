"""`oidownload annotations`: the boxes and labels of the images that downloaded, in the
frame of the written pixels, as frameworks load them: the Open Images CSV layout, COCO
JSON (per-image licence and author), an Ultralytics YOLO tree (links to the images,
labels, data.yaml), Hugging Face imagefolder metadata.jsonl; and the credits file.

Sizes come from the journal (after resizing and turning). A box is moved into the
written frame in two steps: into the kept region when `--resize-mode fill` cropped,
then through the turn `--orientation upright` applied.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oidownload.core.errors import ConfigError, InputError, OutputError
from oidownload.core.fsio import Place, Tree
from oidownload.dataset.annotations import ATTRIBUTES, AnnotationSource, AnnotationTable, Kind
from oidownload.dataset.attribution import (
    NO_CREDIT,
    UNKNOWN,
    Credit,
    credits,
    license_name,
    write_attribution,
)
from oidownload.dataset.classes import ClassDescriptions
from oidownload.inputs.text import STDIN, input_name, is_stream
from oidownload.sinks import Reader
from oidownload.sinks.files import split_location
from oidownload.state.reader import StateDir, Written

Box = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax, normalised


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    COCO = "coco"
    YOLO = "yolo"
    HF = "hf"
    ATTRIBUTION = "attribution"


# Ultralytics' names for the splits; other subsets keep their own name as the key.
YOLO_SPLITS = {"train": "train", "validation": "val", "test": "test"}


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
    notes: list[str] = field(default_factory=list)  # worth telling the user


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
    image_lists: Sequence[Path] | None = None,
) -> ExportResult:
    state = StateDir.open(out, state_dir)
    images = {w.image_id: w for w in state.written()}
    if not images:
        raise InputError(f"{out} has no downloaded images (no row with status ok in its journal)")
    files = source.tables() if fmt is not ExportFormat.ATTRIBUTION else []
    if not files and fmt is not ExportFormat.ATTRIBUTION:
        raise ConfigError("no annotations: pass --annotations or --db (they are remembered when download had them)")
    if fmt is ExportFormat.HF:
        # imagefolder reads metadata.jsonl beside the images: -d does not apply.
        reader = _local_files(state, images, fmt)
        result = ExportResult(Path(state.where()[0]), images=len(images))
        try:
            with Tree.at(result.dest, create=False) as tree:
                _write_hf(files, images, tree, result, classes, names, reader,
                          dict(credits(state, image_lists, images)))
        except OSError as exc:
            raise OutputError(f"cannot write metadata.jsonl in {result.dest}: {exc.strerror or exc}") from None
        return result
    if dest is None and "://" in str(out):
        raise ConfigError(f"{out} is not a local folder: pass -d/--dest for the annotations")
    place = Place.of(out, "annotations", dest)
    try:
        tree = place.open()  # OUT/annotations a symlink: refused, never written (or deleted) through
    except OSError as exc:
        raise OutputError(f"cannot create {place.path}: {exc.strerror or exc}") from None
    dest = place.path
    result = ExportResult(dest, images=len(images))
    try:
        with tree:
            _write_export(fmt, state, files, images, tree, result, classes, names, image_lists)
    except OSError as exc:
        raise OutputError(f"cannot write the export in {dest}: {exc.strerror or exc}") from None
    return result


def _write_export(fmt: ExportFormat, state: StateDir, files: Sequence[AnnotationTable], images: dict[str, Written],
                  tree: Tree, result: ExportResult, classes: frozenset[str] | None,
                  names: ClassDescriptions | None, image_lists: Sequence[Path] | None) -> None:
    if fmt is ExportFormat.CSV:
        _write_csv(files, images, tree, result, classes)
    elif fmt is ExportFormat.COCO:
        _write_coco(files, images, tree, result, classes, names, dict(credits(state, image_lists, images)))
    elif fmt is ExportFormat.YOLO:
        _write_yolo(files, images, tree, result, classes, names, _local_files(state, images, fmt))
    else:
        credit = write_attribution(state, images, tree, image_lists)
        result.files += [credit.csv, credit.html]
        if credit.uncredited:
            piped = [input_name(i.display) for i in state.inputs()
                     if i.display == STDIN or i.display.startswith("/dev/fd/") or is_stream(i.path)]
            why = (f"they were read from {', '.join(piped)}, which is read once: save the same image list "
                   "to a file and pass it with --images FILE" if piped and image_lists is None
                   else "their input rows are gone (pass the image lists with --images)")
            result.notes.append(f"{credit.uncredited} images have no credit: {why} "
                                "(their ImageIDs are in ATTRIBUTION.csv with empty fields)")


def _local_files(state: StateDir, images: dict[str, Written], fmt: ExportFormat) -> Reader:
    """The output's reader, when its images are local files that an export can point at."""
    reader = state.reader()
    if reader.local_path(next(iter(images.values())).location) is None:
        where, kind = state.where()
        raise InputError(
            f"--format {fmt.value} points at image files, but {where} holds {kind.value} output "
            f"{'in a bucket' if '://' in where else 'shards'}: download with --output-format files into a "
            "local folder for this format (webdataset shards load as they are with webdataset or wids)")
    return reader


def csv_names(files: Sequence[AnnotationTable]) -> list[str]:
    """One output name per table, never two alike: V3's splits share their file names
    (train/annotations-human-bbox.csv, validation/...), so a name met more than once
    takes the folder it came from as a prefix, and a number when even that repeats."""
    seen = Counter(f.name for f in files)
    names: list[str] = []
    for f in files:
        name = f.name
        if seen[name] > 1:
            folders = [p for p in re.split(r"[/\\!]", f.where)[:-1] if p and p not in (".", "..")]
            if folders:
                name = f"{folders[-1]}-{name}"
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, dot + ext) if dot else (name, "")
        n = 2
        while name in names:
            name = f"{stem}-{n}{ext}"
            n += 1
        names.append(name)
    return names


def _write_csv(files: Sequence[AnnotationTable], images: dict[str, Written], tree: Tree, result: ExportResult,
               mids: frozenset[str] | None) -> None:
    """The Open Images rows of the downloaded images, coordinates in the written frame."""
    for f, name in zip(files, csv_names(files), strict=True):
        target = tree.path / name
        i_id, i_label = f.index("ImageID"), f.index("LabelName")
        coords = [f.index(c) for c in ("XMin", "XMax", "YMin", "YMax")] if f.kind is Kind.BOXES else []
        clicks = [(f.index(f"XClick{k}X"), f.index(f"XClick{k}Y")) for k in range(1, 5) if f.has(f"XClick{k}X")]
        with tree.atomic_file(name) as fh:
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


def _pixels(r: BoxRow) -> list[float]:
    """The box as COCO's [x, y, width, height] in pixels of the written image."""
    w, h = r.image.width, r.image.height
    return [round(r.box[0] * w, 3), round(r.box[2] * h, 3), round((r.box[1] - r.box[0]) * w, 3),
            round((r.box[3] - r.box[2]) * h, 3)]


def _write_coco(files: Sequence[AnnotationTable], images: dict[str, Written], tree: Tree, result: ExportResult,
                mids: frozenset[str] | None, names: ClassDescriptions | None, credit: dict[str, Credit]) -> None:
    """One JSON file. Each image names its own licence (COCO's `licenses` list holds
    each licence the images use), author, title and `flickr_url`. Each box is also a
    4-point polygon `segmentation` (pycocotools needs one), and IsGroupOf=1 becomes
    iscrowd=1: COCO evaluation then treats the box as a crowd region."""
    rows = list(box_rows(files, images, result, mids))
    cats = _categories(rows, mids)
    cat_id = {mid: i + 1 for i, mid in enumerate(cats)}
    order = sorted(images)
    img_id = {image_id: i + 1 for i, image_id in enumerate(order)}
    licenses: dict[str, int] = {}
    for i in order:
        licenses.setdefault(credit.get(i, NO_CREDIT).license, len(licenses) + 1)
    doc: dict[str, Any] = {
        "info": {"description": "Open Images, downloaded by oidownload", "version": "1.0"},
        "licenses": [{"id": n, "name": license_name(url) if url else UNKNOWN, "url": url}
                     for url, n in licenses.items()],
        "images": [],
        "categories": [
            {"id": cat_id[m], "name": names.name(m) if names else m, "supercategory": "object", "freebase_id": m}
            for m in cats
        ],
        "annotations": [],
    }
    for i in order:
        c = credit.get(i, NO_CREDIT)
        doc["images"].append({
            "id": img_id[i], "file_name": images[i].location, "width": images[i].width, "height": images[i].height,
            "license": licenses[c.license], "flickr_url": c.original_url, "flickr_page_url": c.landing_url,
            "title": c.title, "author": c.author, "author_url": c.author_url, "open_images_id": i,
        })
    for n, r in enumerate(rows, 1):
        x, y, bw, bh = _pixels(r)
        doc["annotations"].append({
            "id": n, "image_id": img_id[r.image.image_id], "category_id": cat_id[r.label],
            "bbox": [x, y, bw, bh], "area": round(bw * bh, 3),
            "segmentation": [[x, y, round(x + bw, 3), y, round(x + bw, 3), round(y + bh, 3), x, round(y + bh, 3)]],
            "iscrowd": r.attrs.get("IsGroupOf", 0), "attributes": r.attrs,
        })
    result.boxes = len(rows)
    target = tree.path / "coco.json"
    with tree.atomic_file("coco.json") as fh:
        json.dump(doc, fh)
    result.files.append(target)


def _yolo_lines(rows: list[BoxRow], images: dict[str, Written], cats: list[str]) -> dict[str, list[str]]:
    index = {mid: i for i, mid in enumerate(cats)}
    per_image: dict[str, list[str]] = {i: [] for i in images}
    for r in rows:
        xmin, xmax, ymin, ymax = r.box
        per_image[r.image.image_id].append(
            f"{index[r.label]} {(xmin + xmax) / 2:.6f} {(ymin + ymax) / 2:.6f} {xmax - xmin:.6f} {ymax - ymin:.6f}"
        )
    return per_image


def _write_yolo(files: Sequence[AnnotationTable], images: dict[str, Written], tree: Tree, result: ExportResult,
                mids: frozenset[str] | None, names: ClassDescriptions | None, reader: Reader) -> None:
    """DEST/yolo/ as Ultralytics reads it: images/<split>/<abc>/<ImageID>.<ext> are
    relative symlinks to the downloaded files (no copies; a file that a later download
    replaces is followed), labels/<split>/<abc>/<ImageID>.txt sit where Ultralytics
    looks (the last /images/ of the path becomes /labels/, the extension .txt), one
    line a box: `class x_center y_center width height`, normalised. data.yaml has the
    absolute `path`, a key per split and `names`. Built beside and swapped in whole,
    so no link or label of an earlier export is left over; all through the folder's
    descriptor, so nothing is written or deleted through a symlink."""
    rows = list(box_rows(files, images, result, mids))
    cats = _categories(rows, mids)
    final = tree.path / "yolo"
    tmp = tree.mkdtemp(".yolo.")
    try:
        with tree.sub(tmp, create=False) as new:
            made: set[str] = set()
            splits: set[str] = set()
            for image_id, lines in _yolo_lines(rows, images, cats).items():
                image = images[image_id]
                target = reader.local_path(image.location)
                assert target is not None  # _local_files checked the output
                rel = f"{image.subset}/{image_id[:3]}"
                if rel not in made:
                    new.mkdirs(f"images/{rel}")
                    new.mkdirs(f"labels/{rel}")
                    made.add(rel)
                new.symlink(os.path.relpath(target, final / "images" / rel), f"images/{rel}/{image_id}.{image.ext}")
                fd = new.open(f"labels/{rel}/{image_id}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write("".join(line + "\n" for line in lines))
                splits.add(image.subset)
            with new.atomic_file("data.yaml") as fh:
                fh.write(_data_yaml(final, splits, [names.name(m) if names else m for m in cats], result))
        _swap_in(tree, tmp, "yolo")
    except BaseException:
        with contextlib.suppress(OSError):
            tree.rmtree(tmp)
        raise
    result.boxes = len(rows)
    result.files += [final / "data.yaml", final / "images", final / "labels"]


def _yaml_str(text: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: quotes, colons, '#' and
    # non-ASCII names stay one string.
    return json.dumps(text)


def _data_yaml(root: Path, splits: set[str], names: list[str], result: ExportResult) -> str:
    lines = ["# Ultralytics YOLO dataset written by `oidownload annotations --format yolo`",
             f"path: {_yaml_str(os.path.abspath(root))}"]
    keys = {YOLO_SPLITS.get(s, s): s for s in sorted(splits)}
    if "train" not in keys:
        # Ultralytics refuses a data.yaml without `train`, even for `yolo val`.
        stand_in = keys.get("val") or next(iter(keys.values()))
        lines.append(f"train: {_yaml_str(f'images/{stand_in}')}  # no train subset was downloaded")
        result.notes.append(f"data.yaml: no train subset was downloaded, so `train` points at images/{stand_in}")
    for key in [k for k in ("train", "val", "test") if k in keys] + sorted(set(keys) - {"train", "val", "test"}):
        lines.append(f"{key}: {_yaml_str(f'images/{keys[key]}')}")
    lines.append("names:")
    lines += [f"  {i}: {_yaml_str(name)}" for i, name in enumerate(names)]
    return "\n".join(lines) + "\n"


def _swap_in(tree: Tree, new: str, final: str) -> None:
    """Replaces the folder `final` in tree (if any) by `new`, a sibling; the old one is
    removed without following its links, and a symlink at `final` is removed itself."""
    old = None
    st = tree.lstat(final)
    if st is not None and stat.S_ISDIR(st.st_mode):
        old = tree.mkdtemp(".yolo.old.")
        tree.replace(final, f"{old}/{final}")
    elif st is not None:
        tree.unlink(final)
    tree.replace(new, final)
    if old is not None:
        with contextlib.suppress(OSError):
            tree.rmtree(old)


def _write_hf(files: Sequence[AnnotationTable], images: dict[str, Written], tree: Tree, result: ExportResult,
              mids: frozenset[str] | None, names: ClassDescriptions | None, reader: Reader,
              credit: dict[str, Credit]) -> None:
    """OUT/<subset>/metadata.jsonl beside each subset's images, where Hugging Face's
    imagefolder looks for it (its splits come from those folder names): one line an
    image with `file_name`, `image_id`, its size, credits and `objects` as the HF
    detection guides name them (pixel boxes `bbox` [x, y, width, height], `category`
    an index into the class names, `labels` the names); and OUT/README.md, a dataset
    card whose features make `category` a ClassLabel of those names."""
    rows = list(box_rows(files, images, result, mids))
    cats = _categories(rows, mids)
    index = {mid: i for i, mid in enumerate(cats)}
    boxes: dict[str, list[BoxRow]] = {i: [] for i in images}
    for r in rows:
        boxes[r.image.image_id].append(r)
    with contextlib.ExitStack() as stack:
        writers: dict[str, Any] = {}
        for image_id in sorted(images):
            image = images[image_id]
            folder, file_name = split_location(image.location)
            if folder not in writers:
                # Beside the images, in OUT/<subset>: a symlink there is refused, not followed.
                writers[folder] = stack.enter_context(tree.atomic_file(f"{folder}/metadata.jsonl", create_dirs=False))
                result.files.append(tree.path / folder / "metadata.jsonl")
            c = credit.get(image_id, NO_CREDIT)
            own = boxes[image_id]
            writers[folder].write(json.dumps({
                "file_name": file_name, "image_id": image_id, "width": image.width, "height": image.height,
                "objects": {"bbox": [_pixels(r) for r in own], "category": [index[r.label] for r in own],
                            "labels": [names.name(r.label) if names else r.label for r in own],
                            "is_group_of": [r.attrs.get("IsGroupOf", 0) for r in own]},
                "title": c.title, "author": c.author, "license": c.license, "url": c.landing_url,
            }, ensure_ascii=False) + "\n")
    result.boxes = len(rows)
    card = tree.path / "README.md"  # the dataset card, at the root load_dataset is pointed at
    label_names = _label_names(cats, names)
    there = tree.lstat("README.md")
    if there is not None and (not stat.S_ISREG(there.st_mode) or HF_CARD_MARK not in
                              tree.read_bytes("README.md", 4096).decode("utf-8", "replace")):
        result.notes.append(f"{card} is not ours, so it was left as it is: without the card's features, `category` "
                            "loads as integers (class names: the `labels` field)")
        return
    with tree.atomic_file("README.md") as fh:
        fh.write(_hf_card(sorted(writers), label_names))
    result.files.append(card)


HF_CARD_MARK = "written by `oidownload annotations --format hf`"


def _label_names(cats: list[str], names: ClassDescriptions | None) -> list[str]:
    """ClassLabel names, one per category index: the display name, made unique with the
    MID where two classes share one (a ClassLabel refuses repeated names)."""
    shown = [names.name(m) if names else m for m in cats]
    repeated = {n for n in shown if shown.count(n) > 1}
    return [f"{n} ({m})" if n in repeated else n for n, m in zip(shown, cats, strict=True)]


def _hf_card(splits: list[str], label_names: list[str]) -> str:
    """A dataset card (README.md) whose YAML `configs` entry gives the features, which
    `datasets.load_dataset("OUT")` applies; JSON is YAML, so no YAML writer is needed.
    Its data_files name the subset folders only (not annotations/, original/ or yolo/)."""
    string = {"dtype": "string"}
    features = [
        {"name": "image", "dtype": "image"},
        {"name": "image_id", **string},
        {"name": "width", "dtype": "int32"},
        {"name": "height", "dtype": "int32"},
        {"name": "objects", "sequence": [
            {"name": "bbox", "sequence": "float32", "length": 4},
            {"name": "category", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(label_names)}}}},
            {"name": "labels", **string},
            {"name": "is_group_of", "dtype": "int8"},
        ]},
        *({"name": k, **string} for k in ("title", "author", "license", "url")),
    ]
    config = {"config_name": "default", "features": features,
              "data_files": [{"split": s, "path": f"{s}/**"} for s in splits]}
    return (f"---\n# {HF_CARD_MARK}; it is replaced by the next such export\n"
            f"{json.dumps({'configs': [config]}, ensure_ascii=False, indent=1)}\n---\n\n"
            "Images downloaded from Open Images with oidownload; boxes in `objects` "
            "(`bbox` [x, y, width, height] in pixels, `category` a ClassLabel).\n\n"
            "```python\nimport datasets\nds = datasets.load_dataset(\"path/to/this/folder\")\n"
            "names = ds[\"train\"].features[\"objects\"][\"category\"].feature.names\n```\n")
