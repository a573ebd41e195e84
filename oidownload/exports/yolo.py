"""`--format yolo`: DEST/yolo/ as Ultralytics reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from oidownload.dataset.kinds import BOXES, AnnotationKind
from oidownload.exports.base import (
    SPLITS,
    Annotated,
    ExportContext,
    ExportResult,
    LinkedTree,
    categories,
)


class YoloExporter:
    """images/<split>/<abc>/<ImageID>.<ext> are relative symlinks to the downloaded files
    (LinkedTree), labels/<split>/<abc>/<ImageID>.txt sit where Ultralytics looks (the
    last /images/ of the path becomes /labels/, the extension .txt), one line a box:
    `class x_center y_center width height`, normalised. data.yaml has the absolute
    `path`, a key per split and `names`. Built beside and swapped in whole."""

    name: ClassVar[str] = "yolo"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({BOXES})
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = False
    folder: ClassVar[str] = "yolo"  # in DEST

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        self.out = LinkedTree(ctx.tree, self.folder, ctx.local_files())
        self.items: list[Annotated] = []

    def add(self, item: Annotated) -> None:
        self.items.append(item)  # the class indices need every class first

    def abort(self) -> None:
        self.out.abort()

    def finish(self) -> None:
        ctx, out = self.ctx, self.out
        cats = self.categories()
        index = {mid: i for i, mid in enumerate(cats)}
        new = out.open()
        splits: set[str] = set()
        for it in self.items:
            image = it.image
            rel = f"{image.subset}/{image.image_id[:3]}"
            out.folder(f"labels/{rel}")
            out.link(image, f"images/{rel}/{image.image_id}.{image.ext}")
            fd = new.open(f"labels/{rel}/{image.image_id}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.lines(it, index))
            splits.add(image.subset)
        with new.atomic_file("data.yaml") as fh:
            fh.write(_data_yaml(out.path, splits, [ctx.name(m) for m in cats], ctx.result, self.name))
        out.commit()
        self.count()
        ctx.result.files += [out.path / "data.yaml", out.path / "images", out.path / "labels"]

    # The hooks a format with other label lines overrides (yolo_seg.py).
    def categories(self) -> list[str]:
        return categories((b for it in self.items for b in it.boxes), self.ctx.classes)

    def lines(self, it: Annotated, index: dict[str, int]) -> str:
        return "".join(f"{index[b.label]} {(b.xmin + b.xmax) / 2:.6f} {(b.ymin + b.ymax) / 2:.6f} "
                       f"{b.xmax - b.xmin:.6f} {b.ymax - b.ymin:.6f}\n" for b in it.boxes)

    def count(self) -> None:
        self.ctx.result.boxes = sum(len(it.boxes) for it in self.items)


def _yaml_str(text: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: quotes, colons, '#' and
    # non-ASCII names stay one string.
    return json.dumps(text)


def _data_yaml(root: Path, splits: set[str], names: list[str], result: ExportResult, fmt: str = "yolo") -> str:
    lines = [f"# Ultralytics YOLO dataset written by `oidownload annotations --format {fmt}`",
             f"path: {_yaml_str(os.path.abspath(root))}"]
    keys = {SPLITS.get(s, s): s for s in sorted(splits)}
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
