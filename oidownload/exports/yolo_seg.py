"""`--format yolo-seg`: DEST/yolo-seg/ as Ultralytics' segment task reads it (issue 22)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from oidownload.core.errors import ConfigError
from oidownload.dataset.kinds import SEGMENTATION, AnnotationKind
from oidownload.dataset.maskshapes import polygon
from oidownload.exports.base import Annotated, ExportContext, categories
from oidownload.exports.yolo import YoloExporter


class YoloSegExporter(YoloExporter):
    """The yolo layout (linked images, labels beside them, data.yaml), with one line a
    mask instance: `class x1 y1 x2 y2 ...`, the mask's outer contour normalised to the
    written image; a mask in several pieces is one polygon that joins them (as
    Ultralytics' own COCO converter does). A format of its own, not `yolo` with masks:
    Ultralytics reads a label file with any polygon line as all polygons, so box lines
    and mask lines cannot share one, and a detection dataset stays as it was."""

    name: ClassVar[str] = "yolo-seg"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({SEGMENTATION})
    folder: ClassVar[str] = "yolo-seg"

    def start(self, ctx: ExportContext) -> None:
        if not any(t.kind is SEGMENTATION for t in ctx.tables):
            raise ConfigError("--format yolo-seg writes masks: pass the segmentation annotations "
                              "(…-annotations-object-segmentation.csv) with --annotations")
        super().start(ctx)
        self.polygons: dict[str, list[tuple[str, str]]] = {}  # ImageID -> (class, "x1 y1 ...")

    def add(self, item: Annotated) -> None:
        w, h = item.image.width, item.image.height
        own = []
        for m in item.masks:
            assert m.bitmap is not None
            points = polygon(m.bitmap)
            if points is not None:
                own.append((m.record.label, " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in points)))
        self.polygons[item.image.image_id] = own
        super().add(dataclasses.replace(item, masks=()))  # the pixels are not kept

    def categories(self) -> list[str]:
        return categories((), self.ctx.classes, (label for own in self.polygons.values() for label, _ in own))

    def lines(self, it: Annotated, index: dict[str, int]) -> str:
        return "".join(f"{index[label]} {coords}\n" for label, coords in self.polygons[it.image.image_id])

    def count(self) -> None:
        self.ctx.result.masks = sum(len(own) for own in self.polygons.values())
