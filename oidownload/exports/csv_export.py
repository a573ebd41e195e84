"""`--format csv`: the Open Images rows of the downloaded images, one file per annotation
file, filtered by class, with box coordinates and XClick points in the written frame
(segmentation rows too: their Box* coordinates and Clicks).
Rows are copied as read (string fields), so this exporter takes no records."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.geometry import (
    point_inside,
    point_to_written,
    to_written_frame,
    written_traces,
)
from oidownload.dataset.kinds import (
    BOXES,
    COORDS,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    SEGMENTATION,
    AnnotationKind,
)
from oidownload.exports.base import ExportContext, WholeExport
from oidownload.state.reader import Written


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


class CsvExporter(WholeExport):
    name: ClassVar[str] = "csv"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset()
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = False

    def finish(self) -> None:
        ctx, images, result, mids = self.ctx, self.ctx.images, self.ctx.result, self.ctx.classes
        for f, name in zip(ctx.tables, csv_names(ctx.tables), strict=True):
            if f.kind is NARRATIVES:  # narratives (issue 23): their rows as CSV, captions need no move
                name = self._narratives(f, name)
                result.files.append(ctx.tree.path / name)
                continue
            target = ctx.tree.path / name
            i_id, i_label = f.index(f.kind.image_column), f.index(f.kind.label_column)
            if f.kind in _MOVED:  # relationships and points (issue 23): moved by their own rule
                _moved_rows(ctx, f, name)
                continue
            coords = [f.index(c) for c in COORDS] if f.kind is BOXES else []
            # masks (issue 22): a segmentation row's box and its annotators' clicks
            i_clicks = f.index("Clicks") if f.kind is SEGMENTATION else -1
            if f.kind is SEGMENTATION:
                coords = [f.index(f"Box{c}") for c in COORDS]
            clicks = [(f.index(f"XClick{k}X"), f.index(f"XClick{k}Y")) for k in range(1, 5) if f.has(f"XClick{k}X")]
            with ctx.tree.atomic_file(name) as fh:
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
                                x, y = point_to_written(float(fields[ix]), float(fields[iy]), image)
                            except ValueError:
                                continue  # an empty click stays empty
                            fields[ix], fields[iy] = f"{x:.6f}", f"{y:.6f}"
                        if i_clicks >= 0:
                            fields[i_clicks] = _clicks_to_written(fields[i_clicks], image)
                            result.masks += 1
                        else:
                            result.boxes += 1
                    else:
                        result.labels += 1
                    w.writerow(fields)
            result.files.append(target)

    def _narratives(self, f: AnnotationTable, name: str) -> str:
        """The narratives of the written images as ImageID,AnnotatorID,Caption; the name
        of the .jsonl with .csv. Returns the name written."""
        name = (name[:-6] if name.endswith(".jsonl") else name) + ".csv"
        with self.ctx.tree.atomic_file(name) as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(f.columns)
            record, cut = NARRATIVES.reader(f.columns), 0
            i_traces = f.index("Traces") if f.has("Traces") else None
            for fields in f.rows(self.ctx.images):
                if i_traces is not None and fields[i_traces]:  # in the written frame, normalised
                    n = record(fields)
                    if n is not None:
                        moved, dropped = written_traces(n, self.ctx.images[n.image_id])
                        cut += dropped
                        fields[i_traces] = json.dumps([[[round(x, 6), round(y, 6), t] for x, y, t in seg]
                                                       for seg in moved.traces], separators=(",", ":"))
                w.writerow(fields)
                self.ctx.result.captions += 1
        if cut:
            self.ctx.result.notes.append(f"{name}: {cut} trace point(s) outside a fill crop were dropped")
        return name

# -- relationships and points (issue 23) --------------------------------------------------------------

_MOVED = (RELATIONSHIPS, POINTS)
_QUADS = [[f"{c}{k}" for c in COORDS] for k in (1, 2)]


def _moved_rows(ctx: ExportContext, f: AnnotationTable, name: str) -> None:
    """A relationship file's rows with both boxes in the written frame (dropped when a
    crop cut either away), or a point file's with X,Y there (dropped outside the image)."""
    images, result, mids = ctx.images, ctx.result, ctx.classes
    i_id = f.index(f.kind.image_column)
    labels = [f.index(c) for c in (("LabelName1", "LabelName2") if f.kind is RELATIONSHIPS else ("Label",))]
    quads = [[f.index(c) for c in q] for q in _QUADS] if f.kind is RELATIONSHIPS else []
    i_x, i_y = (f.index("X"), f.index("Y")) if f.kind is POINTS else (0, 0)
    dropped = 0
    with ctx.tree.atomic_file(name) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(f.columns)
        for fields in f.rows(images):
            if mids is not None and not any(fields[i] in mids for i in labels):
                continue
            image = images[fields[i_id]]
            try:
                if quads:
                    moved = [to_written_frame(tuple(float(fields[i]) for i in q), image)  # type: ignore[arg-type]
                             for q in quads]
                    if any(b is None for b in moved):
                        dropped += 1
                        continue
                    for q, b in zip(quads, moved, strict=True):
                        for i, v in zip(q, b or (), strict=True):
                            fields[i] = f"{v:.6f}"
                else:
                    point = point_inside(float(fields[i_x]), float(fields[i_y]), image)
                    if point is None:
                        dropped += 1
                        continue
                    fields[i_x], fields[i_y] = (f"{v:.6f}" for v in point)
            except ValueError:
                continue
            if quads:
                result.relationships += 1
            else:
                result.points += 1
            w.writerow(fields)
    result.files.append(ctx.tree.path / name)
    if dropped:  # said as the other exports say it (exports._per_image), not as boxes
        what = "relationship" if quads else "point"
        result.notes.append(f"{name}: {dropped} {what}(s) cut away by the crop were left out")

def _clicks_to_written(text: str, image: Written) -> str:
    """A Clicks field (`x y flag;…`) with each point in the written frame; a click that
    cannot be read is kept as it was."""
    out = []
    for click in text.split(";"):
        parts = click.split()
        try:
            x, y = point_to_written(float(parts[0]), float(parts[1]), image)
            out.append(" ".join([f"{x:.5f}", f"{y:.5f}", *parts[2:]]))
        except (ValueError, IndexError):
            out.append(click)
    return ";".join(out)
