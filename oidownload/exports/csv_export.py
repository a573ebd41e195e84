"""`--format csv`: the Open Images rows of the downloaded images, one file per annotation
file, filtered by class, with box coordinates and XClick points in the written frame
(segmentation rows too: their Box* coordinates and Clicks).
Rows are copied as read (string fields), so this exporter takes no records."""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.geometry import point_to_written, to_written_frame
from oidownload.dataset.kinds import BOXES, COORDS, SEGMENTATION, AnnotationKind
from oidownload.exports.base import Annotated, ExportContext
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


class CsvExporter:
    name: ClassVar[str] = "csv"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset()
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = False

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx

    def add(self, item: Annotated) -> None:
        pass

    def abort(self) -> None:
        pass

    def finish(self) -> None:
        ctx, images, result, mids = self.ctx, self.ctx.images, self.ctx.result, self.ctx.classes
        for f, name in zip(ctx.tables, csv_names(ctx.tables), strict=True):
            target = ctx.tree.path / name
            i_id, i_label = f.index("ImageID"), f.index("LabelName")
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
