"""`--format coco`: DEST/coco.json, boxes in pixels of the written images, each mask
instance (segmentation annotations) as its own annotation in compressed RLE, the
relationships and points; and, when the annotations hold localized narratives,
DEST/captions.json (COCO captions)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from oidownload.dataset.attribution import NO_CREDIT, UNKNOWN, license_name
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
from oidownload.dataset.masks import FoundMask
from oidownload.dataset.maskshapes import coco_rle
from oidownload.exports.base import Annotated, ExportContext, categories
from oidownload.exports.coco_kinds import TOLERANCE_PX, CocoKinds, record_mids


class CocoExporter:
    """One JSON file. Each image names its own licence (COCO's `licenses` list holds
    each licence the images use), author, title and `flickr_url`. Each box is also a
    4-point polygon `segmentation` (pycocotools needs one), and IsGroupOf=1 becomes
    iscrowd=1: COCO evaluation then treats the box as a crowd region. A mask is an
    annotation of its own (Open Images' masks and boxes are not linked), its
    `segmentation` pycocotools' compressed RLE and its `bbox` and `area` the mask's."""

    name: ClassVar[str] = "coco"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({BOXES, SEGMENTATION, NARRATIVES, RELATIONSHIPS,
                                                                  POINTS})
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = False

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        self.items: list[Annotated] = []
        self.masks: list[list[dict[str, Any]]] = []  # per item: its mask annotations, without ids

    def add(self, item: Annotated) -> None:
        # The category ids need every class first; a mask is kept as its RLE, not its pixels.
        self.items.append(dataclasses.replace(item, masks=()))
        self.masks.append([_mask_annotation(m) for m in item.masks])

    def abort(self) -> None:
        pass

    def finish(self) -> None:
        ctx = self.ctx
        credit = ctx.credits()
        cats = categories((b for it in self.items for b in it.boxes), ctx.classes,
                          (m["label"] for ms in self.masks for m in ms))
        # relationships and points (issue 23): their classes are categories too
        kinds = any(it.relationships or it.points for it in self.items)
        cats = sorted(set(cats) | record_mids(self.items)) if kinds else cats
        cat_id = {mid: i + 1 for i, mid in enumerate(cats)}
        extra = CocoKinds(ctx.name, cat_id)
        licenses: dict[str, int] = {}
        for it in self.items:
            licenses.setdefault(credit.get(it.image.image_id, NO_CREDIT).license, len(licenses) + 1)
        doc: dict[str, Any] = {
            "info": {"description": "Open Images, downloaded by oidownload", "version": "1.0"},
            "licenses": [{"id": n, "name": license_name(url) if url else UNKNOWN, "url": url}
                         for url, n in licenses.items()],
            "images": [],
            "categories": [
                {"id": cat_id[m], "name": ctx.name(m), "supercategory": "object", "freebase_id": m} for m in cats
            ],
            "annotations": [],
        }
        n = 0
        for k, it in enumerate(self.items, 1):
            image, c = it.image, credit.get(it.image.image_id, NO_CREDIT)
            first = len(doc["annotations"])
            doc["images"].append({
                "id": k, "file_name": image.location, "width": image.width, "height": image.height,
                "license": licenses[c.license], "flickr_url": c.original_url, "flickr_page_url": c.landing_url,
                "title": c.title, "author": c.author, "author_url": c.author_url, "open_images_id": image.image_id,
            })
            for b in it.boxes:
                n += 1
                x, y, bw, bh = pixels(b, image)
                doc["annotations"].append({
                    "id": n, "image_id": k, "category_id": cat_id[b.label],
                    "bbox": [x, y, bw, bh], "area": round(bw * bh, 3),
                    "segmentation": [[x, y, round(x + bw, 3), y, round(x + bw, 3), round(y + bh, 3), x,
                                      round(y + bh, 3)]],
                    "iscrowd": b.flag(BoxAttribute.IS_GROUP_OF), "attributes": dict(b.attrs),
                })
            if it.relationships or it.points:  # relationships and points (issue 23)
                n = extra.add(it, k, doc["annotations"], first)
            for m in self.masks[k - 1]:  # masks (issue 22)
                n += 1
                doc["annotations"].append({"id": n, "image_id": k, "category_id": cat_id[m.pop("label")], **m})
                ctx.result.masks += 1
        ctx.result.boxes = n - extra.points - ctx.result.masks
        if kinds:
            extra.into(doc)
            ctx.result.relationships, ctx.result.points = len(extra.relationships), extra.points
            ctx.result.notes.append(f"{len(extra.relationships)} relationship(s), {extra.points} point(s); "
                                    f"{extra.added_boxes} relationship box(es) matched no box annotation "
                                    f"(within {TOLERANCE_PX} px) and were added")
        with ctx.tree.atomic_file("coco.json") as fh:
            json.dump(doc, fh)
        ctx.result.files.append(ctx.tree.path / "coco.json")
        if any(t.kind is NARRATIVES for t in ctx.tables):
            self._captions(doc["images"])

    # narratives (issue 23)
    def _captions(self, images: list[dict[str, Any]]) -> None:
        """captions.json as COCO's captions files are: the same images (same ids as
        coco.json) and one annotation per narrative, `caption` its text."""
        ctx = self.ctx
        anns: list[dict[str, Any]] = []
        for k, it in enumerate(self.items, 1):
            w, h = it.image.width, it.image.height
            for n in it.narratives:
                ann: dict[str, Any] = {"id": len(anns) + 1, "image_id": k, "caption": n.caption,
                                       "annotator_id": n.annotator_id}
                if n.traces:  # --narrative-traces: [x, y, t] in pixels of the written image, t in seconds
                    ann["traces"] = [[[round(x * w, 2), round(y * h, 2), t] for x, y, t in seg] for seg in n.traces]
                anns.append(ann)
        doc = {"info": {"description": "Open Images localized narratives, by oidownload", "version": "1.0"},
               "images": [{key: img[key] for key in ("id", "file_name", "width", "height", "open_images_id")}
                          for img in images],
               "annotations": anns}
        with ctx.tree.atomic_file("captions.json") as fh:
            json.dump(doc, fh, ensure_ascii=False)
        ctx.result.captions = len(anns)
        ctx.result.files.append(ctx.tree.path / "captions.json")


def _mask_annotation(m: FoundMask) -> dict[str, Any]:
    """A mask as a COCO annotation (less its ids); `label` is taken out for the category."""
    bitmap = m.bitmap
    assert bitmap is not None
    box = bitmap.bbox() or (0, 0, 0, 0)
    return {
        "label": m.record.label, "segmentation": coco_rle(bitmap),
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": bitmap.area(), "iscrowd": 0,
        "open_images_box_id": m.record.box_id, "predicted_iou": m.record.predicted_iou,
    }
