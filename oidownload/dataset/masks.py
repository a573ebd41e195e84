"""The masks an output holds, as the exports and the gallery read them: the segmentation
rows of the written images (their box moved into the written frame), joined with the
mask each row names in the output (`<ImageID>.<BoxID>.mask.png` of the image's
sample, read through the output's `sinks.Reader`, so files and shards alike).

A row whose mask the output does not hold (not fetched, or missing from its zip) is
counted in `missing`, never an error: the image and its other masks stay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.geometry import to_written_frame
from oidownload.dataset.kinds import SEGMENTATION, Mask
from oidownload.dataset.maskshapes import Bitmap
from oidownload.sinks import Reader
from oidownload.sinks.files import check_box_id, mask_suffix, member_path
from oidownload.state.reader import Written


@dataclass(frozen=True, slots=True)
class FoundMask:
    """One segmentation row of a written image: its record, with the box in the written
    frame, and its pixels once read (`WrittenMasks.load`)."""

    record: Mask
    image: Written
    bitmap: Bitmap | None = None

    @property
    def file(self) -> str:
        """Its path below OUT in the `files` layout: OUT/masks/<subset>/<abc>/<ImageID>_<BoxID>.png."""
        folders, name = member_path(self.image.subset, self.image.image_id, mask_suffix(self.record.box_id))
        return "/".join((*folders, name))


@dataclass
class WrittenMasks:
    """Reads the segmentation tables for the given images (and classes), then each mask's
    pixels. Counts what it leaves out, so a caller can say it: `dropped` (a crop cut the
    box away), `unreadable` (a row with a value that is not a number, or a BoxID that
    cannot name a file), `missing` (no mask in the output), `bad` (not a PNG, or not of
    the written image's size)."""

    images: Mapping[str, Written]
    reader: Reader | None  # None: the rows only (read), never the pixels
    mids: frozenset[str] | None = None
    dropped: int = 0
    unreadable: int = 0
    missing: int = 0
    bad: int = 0

    def read(self, tables: Iterable[AnnotationTable]) -> Iterator[FoundMask]:
        images, mids = self.images, self.mids
        for f in tables:
            if f.kind is not SEGMENTATION:
                continue
            i_label = f.index("LabelName")
            record = SEGMENTATION.reader(f.columns)
            for fields in f.rows(images):
                if mids is not None and fields[i_label] not in mids:
                    continue
                mask = record(fields)
                try:
                    if mask is None:
                        raise ValueError
                    check_box_id(mask.box_id)
                except ValueError:
                    self.unreadable += 1
                    continue
                image = images[mask.image_id]
                moved = to_written_frame((mask.xmin, mask.xmax, mask.ymin, mask.ymax), image)
                if moved is None:
                    self.dropped += 1
                    continue
                xmin, xmax, ymin, ymax = moved
                yield FoundMask(dataclasses.replace(mask, xmin=xmin, xmax=xmax, ymin=ymin, ymax=ymax), image)

    def data(self, image: Written, box_id: str) -> bytes | None:
        """The PNG bytes of the image's mask box_id as written; None (counted) when the
        output has none."""
        assert self.reader is not None, "a WrittenMasks without a reader reads rows only"
        try:
            return self.reader.member(image.location, mask_suffix(box_id))
        except FileNotFoundError:
            self.missing += 1
            return None

    def load(self, masks: Iterable[FoundMask]) -> list[FoundMask]:
        """Those of `masks` the output holds, with their pixels."""
        out = []
        for m in masks:
            data = self.data(m.image, m.record.box_id)
            if data is None:
                continue
            try:
                bitmap = Bitmap.from_png(data)
            except (OSError, ValueError):
                bitmap = None
            if bitmap is None or (bitmap.width, bitmap.height) != (m.image.width, m.image.height):
                self.bad += 1
                continue
            out.append(dataclasses.replace(m, bitmap=bitmap))
        return out

    def notes(self) -> list[str]:
        """What was left out, in words; [] when nothing was."""
        out = []
        if self.missing:
            out.append(f"{self.missing} mask(s) named by the segmentation rows are not in the output (download "
                       "with --masks to fetch them)")
        if self.bad:
            out.append(f"{self.bad} mask file(s) are not a PNG of their image's written size: left out")
        if self.unreadable:
            out.append(f"{self.unreadable} segmentation row(s) with a value that is not a number or a BoxID that "
                       "is not hex were left out")
        if self.dropped:
            out.append(f"{self.dropped} mask(s) lie outside their image's crop: left out")
        return out
