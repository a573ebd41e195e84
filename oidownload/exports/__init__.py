"""`oidownload annotations`: the boxes and labels of the images that downloaded, in the
frame of the written pixels (dataset.geometry), as frameworks load them. One exporter
per format, one file each, in EXPORTERS (the CLI's --format choices): a new format is
a new file and one entry here.

Sizes come from the journal (after resizing and turning). `export` reads the boxes
once, as typed records in the written frame, and hands each written image with its
boxes to the exporter (base.Exporter: start, add, finish).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from oidownload.core.errors import ConfigError, InputError, OutputError
from oidownload.core.fsio import Place, Tree
from oidownload.dataset.annotations import AnnotationSource
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.geometry import (
    WrittenBoxes,
    WrittenRecords,
    written_points,
    written_relationships,
    written_traces,
)
from oidownload.dataset.kinds import (
    BOXES,
    EXPORT,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    SEGMENTATION,
    Box,
    Point,
    Relationship,
)
from oidownload.dataset.masks import FoundMask, WrittenMasks
from oidownload.dataset.narratives import narratives_of
from oidownload.dataset.relationships import RelationshipQuery
from oidownload.exports.attribution import AttributionExporter
from oidownload.exports.base import Annotated, ExportContext, Exporter, ExportResult
from oidownload.exports.coco import CocoExporter
from oidownload.exports.csv_export import CsvExporter
from oidownload.exports.hf import HfExporter
from oidownload.exports.voc import VocExporter
from oidownload.exports.webdataset import WebdatasetExporter
from oidownload.exports.yolo import YoloExporter
from oidownload.exports.yolo_seg import YoloSegExporter
from oidownload.sinks import is_remote
from oidownload.state.reader import StateDir

R = TypeVar("R")

__all__ = ["EXPORTERS", "Annotated", "ExportContext", "ExportResult", "Exporter", "export"]

EXPORTERS: dict[str, type[Exporter]] = {
    e.name: e for e in (CsvExporter, CocoExporter, YoloExporter, HfExporter, AttributionExporter, VocExporter,
                        YoloSegExporter, WebdatasetExporter)
}


def export(
    out: str | Path,
    fmt: str,
    source: AnnotationSource,
    *,
    dest: Path | None = None,
    names: ClassDescriptions | None = None,
    classes: frozenset[str] | None = None,
    state_dir: Path | None = None,
    image_lists: Sequence[Path] | None = None,
    only: frozenset[str] | None = None,  # narratives (issue 23): the images --with-narrative kept
    relationships: Sequence[RelationshipQuery] | None = None,
) -> ExportResult:
    if fmt not in EXPORTERS:
        raise ConfigError(f"--format {fmt}: no such export; known: {', '.join(sorted(EXPORTERS))}")
    exporter = EXPORTERS[fmt]()
    state = StateDir.open(out, state_dir)
    images = {w.image_id: w for w in state.written()}
    if not images:
        raise InputError(f"{out} has no downloaded images (no row with status ok in its journal)")
    if only is not None:
        images = {i: w for i, w in images.items() if i in only}
        if not images:
            raise InputError(f"no image downloaded into {out} has a narrative the selection accepts")
    tables = list(source.tables()) if exporter.needs_annotations else []
    if exporter.needs_annotations and not tables:
        raise ConfigError("no annotations: pass --annotations or --db (they are remembered when download had them)")
    for t in tables:
        t.kind.require(EXPORT, t.where)  # before anything is written
    if exporter.beside_images:
        where = state.where()[0]
        if is_remote(where):  # a Tree below would only say "no such file"
            raise InputError(f"--format {fmt} writes into the output itself, and {where} is in a bucket: run it on "
                             "a local copy of the output, or download into a local folder")
        dest = Path(where)
        what = f"cannot write the export beside the images in {dest}"
        try:
            tree = Tree.at(dest, create=False)
        except OSError as exc:
            raise OutputError(f"{what}: {exc.strerror or exc}") from None
    else:
        if dest is None and "://" in str(out):
            raise ConfigError(f"{out} is not a local folder: pass -d/--dest for the annotations")
        place = Place.of(out, "annotations", dest)
        try:
            tree = place.open()  # OUT/annotations a symlink: refused, never written (or deleted) through
        except OSError as exc:
            raise OutputError(f"cannot create {place.path}: {exc.strerror or exc}") from None
        dest = place.path
        what = f"cannot write the export in {dest}"
    result = ExportResult(dest, images=len(images))
    ctx = ExportContext(fmt, state, images, tables, tree, result, names, classes,
                        list(image_lists) if image_lists is not None else None, relationships)
    try:
        with tree:
            _run(exporter, ctx)
    except OSError as exc:
        raise OutputError(f"{what}: {exc.strerror or exc}") from None
    return result


def _run(exporter: Exporter, ctx: ExportContext) -> None:
    # Each kind with records is read here, in the written frame, for the formats that
    # declare it; a format that wants another kind adds its reader here.
    readable = {BOXES, NARRATIVES, RELATIONSHIPS, POINTS, SEGMENTATION}
    if exporter.kinds - readable:
        raise TypeError(f"{exporter.name}: no records of {sorted(k.name for k in exporter.kinds - readable)} yet")
    exporter.start(ctx)
    try:
        boxes: dict[str, list[Box]] = {}
        if BOXES in exporter.kinds:
            reader = WrittenBoxes(ctx.images, ctx.classes)
            for box in reader.read(ctx.tables):
                boxes.setdefault(box.image_id, []).append(box)
            ctx.result.dropped += reader.dropped
            if reader.unreadable:
                ctx.result.notes.append(f"{reader.unreadable} box row(s) with a coordinate or confidence that is not "
                                        "a number were left out")
        # narratives (issue 23): their traces (when kept) move into the written frame
        told = narratives_of(ctx.tables, ctx.images) if NARRATIVES in exporter.kinds else {}
        cut = 0
        for image_id, found_told in told.items():
            for k, n in enumerate(found_told):
                found_told[k], dropped = written_traces(n, ctx.images[image_id])
                cut += dropped
        if cut:
            ctx.result.notes.append(f"{cut} trace point(s) outside a fill crop were dropped")
        rels, points = _other_records(exporter, ctx)
        masks, found = _masks(exporter, ctx)  # masks (issue 22): pixels loaded one image at a time
        for image_id in sorted(ctx.images):
            own = tuple(found.load(masks.pop(image_id, ()))) if found is not None else ()
            exporter.add(Annotated(ctx.images[image_id], tuple(boxes.pop(image_id, ())), masks=own,
                                   narratives=tuple(told.pop(image_id, ())),
                                   relationships=tuple(rels.pop(image_id, ())), points=tuple(points.pop(image_id, ()))))
        if found is not None:
            ctx.result.notes += found.notes()
        exporter.finish()
    except BaseException:
        exporter.abort()
        raise


def _other_records(exporter: Exporter, ctx: ExportContext) -> tuple[dict[str, list[Relationship]],
                                                                    dict[str, list[Point]]]:
    """relationships and points (issue 23): their records per image, in the written frame."""
    rels = _per_image(ctx, written_relationships(ctx.images, ctx.classes, ctx.relationships), "relationship") \
        if RELATIONSHIPS in exporter.kinds else {}
    points = _per_image(ctx, written_points(ctx.images, ctx.classes), "point") if POINTS in exporter.kinds else {}
    return rels, points


def _per_image(ctx: ExportContext, reader: WrittenRecords[R], what: str) -> dict[str, list[R]]:
    found: dict[str, list[R]] = {}
    for rec in reader.read(ctx.tables):
        found.setdefault(reader.image_id(rec), []).append(rec)
    if reader.dropped:
        ctx.result.notes.append(f"{reader.dropped} {what}(s) cut away by the crop were left out")
    if reader.unreadable:
        ctx.result.notes.append(f"{reader.unreadable} {what} row(s) with a value that is not a number were left out")
    return found
# -- masks (issue 22) --------------------------------------------------------------------------------


def _masks(exporter: Exporter, ctx: ExportContext) -> tuple[dict[str, list[FoundMask]], WrittenMasks | None]:
    """The segmentation rows of the written images, per image (their pixels are read one
    image at a time, just before add), and the reader that loads them; a format that
    takes no masks says it leaves the segmentation files out."""
    seg = [t for t in ctx.tables if t.kind is SEGMENTATION]
    if exporter.kinds and SEGMENTATION not in exporter.kinds and seg:
        ctx.result.notes.append(f"--format {exporter.name} takes no masks: {', '.join(t.name for t in seg)} left "
                                f"out (formats with masks: {', '.join(mask_formats())})")
    if SEGMENTATION not in exporter.kinds:
        return {}, None
    found = WrittenMasks(ctx.images, ctx.state.reader(), ctx.classes)
    masks: dict[str, list[FoundMask]] = {}
    for m in found.read(seg):
        masks.setdefault(m.image.image_id, []).append(m)
    return masks, found


def mask_formats() -> list[str]:
    return sorted(name for name, e in EXPORTERS.items() if SEGMENTATION in e.kinds or name == "csv")
