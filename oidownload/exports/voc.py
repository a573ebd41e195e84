"""`--format voc`: a Pascal VOC tree, as torchvision's VOCDetection and other VOC readers
load it: DEST/VOCdevkit/VOC2007/

    Annotations/<ImageID>.xml     one <annotation> an image, an <object> a box
    JPEGImages/<ImageID>.<ext>    relative symlinks to the downloaded files
    ImageSets/Main/<split>.txt    the ImageIDs of each split (validation is val), and trainval

VOC2007 because it is the one year whose readers accept a `test` image set. Boxes are
in pixels of the written file, as decimals (COCO's values: edges, not VOC's 1-based
integer pixels). Class names, file names and folder are untrusted text: ElementTree
escapes them, and characters XML 1.0 cannot hold become U+FFFD.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Any, ClassVar

from oidownload.core.fsio import Tree
from oidownload.dataset.kinds import BOXES, AnnotationKind, Box, BoxAttribute
from oidownload.exports.base import SPLITS, Annotated, ExportContext, LinkedTree
from oidownload.state.reader import Written

YEAR = "2007"
ROOT = f"VOC{YEAR}"
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _num(v: float) -> str:
    return f"{round(v, 3):.3f}".rstrip("0").rstrip(".")


def _sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = _text(text)
    return el


class VocExporter:
    name: ClassVar[str] = "voc"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({BOXES})
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = False

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        self.reader = ctx.local_files()
        self.out = LinkedTree(ctx.tree, "VOCdevkit", self.reader)
        self.new: Tree = self.out.open()
        for rel in ("Annotations", "JPEGImages", "ImageSets/Main"):
            self.out.folder(f"{ROOT}/{rel}")
        self.splits: dict[str, list[str]] = {}
        self.other_ext = 0

    def add(self, item: Annotated) -> None:
        image = item.image
        file_name = f"{image.image_id}.{image.ext}"
        self.out.link(image, f"{ROOT}/JPEGImages/{file_name}")
        doc = self._annotation(image, file_name, item.boxes)
        ET.indent(doc)
        fd = self.new.open(f"{ROOT}/Annotations/{image.image_id}.xml", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as fh:
            ET.ElementTree(doc).write(fh, encoding="utf-8", xml_declaration=True)
        self.splits.setdefault(SPLITS.get(image.subset, image.subset), []).append(image.image_id)
        self.other_ext += image.ext != "jpg"
        self.ctx.result.boxes += len(item.boxes)

    def _annotation(self, image: Written, file_name: str, boxes: tuple[Box, ...]) -> ET.Element:
        doc = ET.Element("annotation")
        _sub(doc, "folder", ROOT)
        _sub(doc, "filename", file_name)
        source = ET.SubElement(doc, "source")
        _sub(source, "database", "Open Images")
        _sub(source, "image_id", image.image_id)
        size = ET.SubElement(doc, "size")
        _sub(size, "width", str(image.width))
        _sub(size, "height", str(image.height))
        _sub(size, "depth", str(self._depth(image)))
        _sub(doc, "segmented", "0")
        for b in boxes:
            obj = ET.SubElement(doc, "object")
            _sub(obj, "name", self.ctx.name(b.label))
            _sub(obj, "pose", "Unspecified")
            _sub(obj, "truncated", str(b.flag(BoxAttribute.IS_TRUNCATED)))
            _sub(obj, "occluded", str(b.flag(BoxAttribute.IS_OCCLUDED)))
            _sub(obj, "difficult", "0")
            _sub(obj, "group_of", str(b.flag(BoxAttribute.IS_GROUP_OF)))  # Open Images' own; VOC has none
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, v, side in (("xmin", b.xmin, image.width), ("ymin", b.ymin, image.height),
                                 ("xmax", b.xmax, image.width), ("ymax", b.ymax, image.height)):
                _sub(bndbox, tag, _num(v * side))
        return doc

    def _depth(self, image: Written) -> int:
        """The written file's channels (a grey JPEG stays grey): read from its header only."""
        from PIL import Image  # here: `import oidownload` stays light

        path = self.reader.local_path(image.location)
        try:
            with Image.open(path) as im:  # type: ignore[arg-type]
                return len(im.getbands())
        except (OSError, ValueError):
            return 3

    def abort(self) -> None:
        self.out.abort()

    def finish(self) -> None:
        main = f"{ROOT}/ImageSets/Main"
        sets = dict(self.splits)
        if "train" in sets or "val" in sets:
            sets["trainval"] = sets.get("train", []) + sets.get("val", [])
        for split, ids in sorted(sets.items()):
            with self.new.atomic_file(f"{main}/{split}.txt") as fh:
                fh.write("".join(f"{i}\n" for i in sorted(ids)))
        self.out.commit()
        result, root = self.ctx.result, self.out.path / ROOT
        result.files += [root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"]
        if self.other_ext:
            result.notes.append(f"{self.other_ext} images are not .jpg files: torchvision's VOCDetection looks for "
                                "JPEGImages/<id>.jpg (download with --format jpeg for it)")
