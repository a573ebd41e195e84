"""`--format hf`: Hugging Face imagefolder metadata beside the images, and a dataset card."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import Callable
from typing import Any, ClassVar

from oidownload.dataset.attribution import NO_CREDIT
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.geometry import pixels
from oidownload.dataset.kinds import (
    BOXES,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    SEGMENTATION,
    AnnotationKind,
    BoxAttribute,
)
from oidownload.exports.base import Annotated, ExportContext, categories
from oidownload.exports.hf_kinds import hf_columns, hf_features
from oidownload.sinks.files import MASKS_DIR, split_location

HF_CARD_MARK = "written by `oidownload annotations --format hf`"


class HfExporter:
    """OUT/<subset>/metadata.jsonl beside each subset's images, where Hugging Face's
    imagefolder looks for it (its splits come from those folder names): one line an
    image with `file_name`, `image_id`, its size, credits and `objects` as the HF
    detection guides name them (pixel boxes `bbox` [x, y, width, height], `category`
    an index into the class names, `labels` the names); and OUT/README.md, a dataset
    card whose features make `category` a ClassLabel of those names."""

    name: ClassVar[str] = "hf"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({BOXES, SEGMENTATION, NARRATIVES, RELATIONSHIPS,
                                                                  POINTS})
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = True  # imagefolder reads metadata.jsonl beside the images: -d does not apply

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        ctx.local_files()
        self.items: list[Annotated] = []
        self.with_masks = any(t.kind is SEGMENTATION for t in ctx.tables)  # masks (issue 22)

    def add(self, item: Annotated) -> None:
        # The category indices need every class first; of a mask, its file is enough.
        self.items.append(dataclasses.replace(item, masks=tuple(dataclasses.replace(m, bitmap=None)
                                                                for m in item.masks)))

    def abort(self) -> None:
        pass

    def finish(self) -> None:
        ctx, tree, result = self.ctx, self.ctx.tree, self.ctx.result
        credit = ctx.credits()
        if self.with_masks:
            self.with_masks = self._every_subset_has_masks()
        cats = categories((b for it in self.items for b in it.boxes), ctx.classes,
                          (m.record.label for it in self.items for m in it.masks))
        index = {mid: i for i, mid in enumerate(cats)}
        narrated = any(t.kind is NARRATIVES for t in ctx.tables)
        # relationships and points (issue 23): columns only when the annotations hold them
        extra = [k for k in (RELATIONSHIPS, POINTS) if any(t.kind is k for t in ctx.tables)]
        with contextlib.ExitStack() as stack:
            writers: dict[str, Any] = {}
            for it in self.items:
                image = it.image
                folder, file_name = split_location(image.location)
                if folder not in writers:
                    # Beside the images, in OUT/<subset>: a symlink there is refused, not followed.
                    writers[folder] = stack.enter_context(tree.atomic_file(f"{folder}/metadata.jsonl",
                                                                           create_dirs=False))
                    result.files.append(tree.path / folder / "metadata.jsonl")
                    if self.with_masks:
                        self._link_masks(folder)
                c = credit.get(image.image_id, NO_CREDIT)
                own = it.boxes
                # narratives (issue 23): `caption` the first, `captions` every one (a text
                # column for image-text training, and all annotators' for those who want them)
                told = {"caption": it.narratives[0].caption if it.narratives else "",
                        "captions": [n.caption for n in it.narratives]} if narrated else {}
                writers[folder].write(json.dumps({
                    **(_masks(it, index, ctx.name) if self.with_masks else {}),
                    "file_name": file_name, "image_id": image.image_id, "width": image.width, "height": image.height,
                    "objects": {"bbox": [pixels(b, image) for b in own], "category": [index[b.label] for b in own],
                                "labels": [ctx.name(b.label) for b in own],
                                "is_group_of": [b.flag(BoxAttribute.IS_GROUP_OF) for b in own]},
                    "title": c.title, "author": c.author, "license": c.license, "url": c.landing_url, **told,
                    **hf_columns(it, extra, ctx.name),
                }, ensure_ascii=False) + "\n")
        result.boxes = sum(len(it.boxes) for it in self.items)
        result.captions = sum(len(it.narratives) for it in self.items)
        result.relationships = sum(len(it.relationships) for it in self.items)
        result.points = sum(len(it.points) for it in self.items)
        result.masks = sum(len(it.masks) for it in self.items) if self.with_masks else 0
        card = tree.path / "README.md"  # the dataset card, at the root load_dataset is pointed at
        label_names = _label_names(cats, ctx.names)
        there = tree.lstat("README.md")
        if there is not None and (not stat.S_ISREG(there.st_mode) or HF_CARD_MARK not in
                                  tree.read_bytes("README.md", 4096).decode("utf-8", "replace")):
            result.notes.append(f"{card} is not ours, so it was left as it is: without the card's features, "
                                "`category` loads as integers (class names: the `labels` field)")
            return
        with tree.atomic_file("README.md") as fh:
            fh.write(_hf_card(sorted(writers), label_names, extra, narrated, self.with_masks))
        result.files.append(card)

    # -- masks (issue 22) --------------------------------------------------------------------------

    def _every_subset_has_masks(self) -> bool:
        """`datasets` refuses metadata files whose columns differ in type, and a column
        of only empty lists has none: a subset without a single mask would make every
        subset unloadable. Then the masks are left out, and the note says why."""
        have: dict[str, int] = {}
        for it in self.items:
            folder = split_location(it.image.location)[0]
            have[folder] = have.get(folder, 0) + len(it.masks)
        bare = sorted(f for f, n in have.items() if not n)
        if bare and any(have.values()):
            self.ctx.result.notes.append(
                f"no mask in {', '.join(bare)}: metadata.jsonl leaves the masks out, as `datasets` cannot type a "
                "column that is empty in one split (export a selection where every split has masks)")
        return not bare

    def _link_masks(self, folder: str) -> None:
        """OUT/<subset>/masks, a relative symlink to OUT/masks/<subset>: imagefolder loads
        only files below the folder of their metadata.jsonl (no `..`), and the masks live
        beside the subsets, not in them. Nothing else reads through it: every walk of the
        output skips symlinks."""
        tree, rel, target = self.ctx.tree, f"{folder}/{MASKS_DIR}", f"../{MASKS_DIR}/{folder}"
        there = tree.lstat(rel)
        if there is None:
            tree.symlink(target, rel)
        elif not stat.S_ISLNK(there.st_mode) or os.readlink(tree.path / rel) != target:
            self.ctx.result.notes.append(f"{tree.path / rel} is not the link to {target} this export makes, so it "
                                         "was left as it is: the masks of that subset may not load")


def _label_names(cats: list[str], names: ClassDescriptions | None) -> list[str]:
    """ClassLabel names, one per category index: the display name, made unique with the
    MID where two classes share one (a ClassLabel refuses repeated names)."""
    shown = [names.name(m) if names else m for m in cats]
    repeated = {n for n in shown if shown.count(n) > 1}
    return [f"{n} ({m})" if n in repeated else n for n, m in zip(shown, cats, strict=True)]


def _masks(it: Annotated, index: dict[str, int], name: Callable[[str], str]) -> dict[str, Any]:
    """The image's masks: `masks_file_names`, which imagefolder loads as the list of images
    `masks` (paths below the subset's folder, through its `masks` link), and
    `mask_objects`, one entry a mask in the same order."""
    image = it.image
    return {
        "masks_file_names": [f"{MASKS_DIR}/{m.file.split('/', 2)[2]}" for m in it.masks],
        "mask_objects": {
            "box_id": [m.record.box_id for m in it.masks], "category": [index[m.record.label] for m in it.masks],
            "labels": [name(m.record.label) for m in it.masks],
            "box": [[round(m.record.xmin * image.width, 3), round(m.record.ymin * image.height, 3),
                     round((m.record.xmax - m.record.xmin) * image.width, 3),
                     round((m.record.ymax - m.record.ymin) * image.height, 3)] for m in it.masks],
        },
    }


def _hf_card(splits: list[str], label_names: list[str], extra: list[AnnotationKind[Any]],
             narrated: bool = False, with_masks: bool = False) -> str:
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
        # narratives (issue 23)
        *([{"name": "caption", **string}, {"name": "captions", "sequence": "string"}] if narrated else []),
        *hf_features(extra),
    ]
    if with_masks:  # masks (issue 22)
        features[5:5] = [
            {"name": "masks", "list": "image"},
            {"name": "mask_objects", "sequence": [
                {"name": "box_id", **string},
                {"name": "category", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(label_names)}}}},
                {"name": "labels", **string},
                {"name": "box", "sequence": "float32", "length": 4},
            ]},
        ]
    config = {"config_name": "default", "features": features,
              "data_files": [{"split": s, "path": f"{s}/**"} for s in splits]}
    return (f"---\n# {HF_CARD_MARK}; it is replaced by the next such export\n"
            f"{json.dumps({'configs': [config]}, ensure_ascii=False, indent=1)}\n---\n\n"
            "Images downloaded from Open Images with oidownload; boxes in `objects` "
            "(`bbox` [x, y, width, height] in pixels, `category` a ClassLabel).\n\n"
            "```python\nimport datasets\nds = datasets.load_dataset(\"path/to/this/folder\")\n"
            "names = ds[\"train\"].features[\"objects\"][\"category\"].feature.names\n```\n")
