"""What the gallery shows of each image, gathered in one pass over each file: its boxes
in the written frame (read by `geometry.WrittenBoxes`, as the exports read them), its
image-level labels, and its attribution from the input image lists.

Annotation rows of other images are skipped before they are parsed; memory grows with
the downloaded images and their annotations, not with the files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oidownload.core.errors import InputError
from oidownload.core.records import Row
from oidownload.dataset import attribution
from oidownload.dataset.annotations import AnnotationTable, open_table
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.geometry import WrittenBoxes, written_points, written_relationships
from oidownload.dataset.kinds import (
    ATTRIBUTES,
    BOXES,
    GALLERY,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    SEGMENTATION,
)
from oidownload.dataset.masks import WrittenMasks
from oidownload.inputs.rows import RowFilter, iter_rows, read_header
from oidownload.state.reader import Written

# A label at or above this confidence says the image has the class (the default of
# --min-confidence; human negatives are 0).
POSITIVE = 0.5
# Flickr text is untrusted: bounded before it reaches a page (and escaped there).
MAX_TEXT = 300
_HTTP_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f\"'<>`]{1,500}", re.IGNORECASE)

# (class, xmin, xmax, ymin, ymax, attributes) in the written frame, normalised; the
# attributes tuple holds 1, 0 or -1 (unknown) per name in ATTRIBUTES, and is shared.
Box = tuple[int, float, float, float, float, tuple[int, ...]]
Label = tuple[int, float, int]  # (class, confidence, source)
# relationships and points (issue 23), in the written frame, normalised: (class 1,
# class 2 (an attribute for `is`), box 1, box 2, predicate) and (class, x, y, answer).
Rel = tuple[int, int, tuple[float, float, float, float], tuple[float, float, float, float], str]
Dot = tuple[int, float, float, str]
MaskMark = tuple[int, str]  # (class, BoxID): masks (issue 22), found in the output by build.py


@dataclass(frozen=True, slots=True)
class Attribution:
    title: str
    author: str
    author_url: str  # "" unless http(s)
    license: str  # a short name: CC BY 2.0
    license_url: str
    landing_url: str  # the Flickr page; "" unless http(s)


@dataclass(slots=True)
class Entry:
    written: Written
    boxes: list[Box] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    attribution: Attribution | None = None
    captions: list[str] = field(default_factory=list)  # narratives (issue 23), bounded to MAX_CAPTION
    relationships: list[Rel] = field(default_factory=list)  # relationships and points (issue 23)
    points: list[Dot] = field(default_factory=list)
    masks: list[MaskMark] = field(default_factory=list)

    @property
    def image_id(self) -> str:
        return self.written.image_id

    def classes(self) -> set[int]:
        """The classes the image has: a drawn box or mask, or a positive image-level label."""
        return ({b[0] for b in self.boxes} | {lab[0] for lab in self.labels if lab[1] >= POSITIVE}
                | {m[0] for m in self.masks})


@dataclass
class Classes:
    """MIDs as small ints, in order of first sight, with their display names."""

    mids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def index(self, mid: str, names: ClassDescriptions | None) -> int:
        i = self._index.get(mid)
        if i is None:
            i = self._index[mid] = len(self.mids)
            self.mids.append(mid)
            self.names.append(bound(names.name(mid)) if names else mid)
        return i


@dataclass
class Collected:
    entries: list[Entry]
    classes: Classes
    label_sources: list[str]
    box_files: int = 0
    label_files: int = 0
    narrative_files: int = 0  # narratives (issue 23)
    mask_files: int = 0
    dropped: int = 0  # boxes a fill crop cut away
    dropped_kinds: int = 0  # relationships and points a fill crop cut away (issue 23)
    notes: list[str] = field(default_factory=list)


def bound(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def http_url(text: str) -> str:
    """The URL when it is a plain http(s) one, else "": a `javascript:` link from a CSV
    must never become a link."""
    text = text.strip()
    return text if _HTTP_URL.fullmatch(text) else ""


def collect(
    images: list[Written],
    annotation_paths: Iterable[Path],
    *,
    class_descriptions: Path | None,
    classes: frozenset[str] | None,
    image_lists: Iterable[Path],
) -> Collected:
    entries = {w.image_id: Entry(w) for w in images}
    names = ClassDescriptions.load(class_descriptions) if class_descriptions else None
    result = Collected(list(entries.values()), Classes(), [])
    for path in annotation_paths:
        f = open_table(path)
        f.kind.require(GALLERY, f.where)
        if f.kind is NARRATIVES:  # narratives (issue 23)
            result.narrative_files += 1
            _read_narratives(f, entries)
        elif f.kind is BOXES:
            result.box_files += 1
            _read_boxes(f, entries, result, names, classes)
        elif f.kind in (RELATIONSHIPS, POINTS):
            _read_kinds(f, entries, result, names, classes)
        elif f.kind is SEGMENTATION:
            result.mask_files += 1
            _read_masks(f, entries, result, names, classes)
        else:
            result.label_files += 1
            _read_labels(f, entries, result, names)
    _read_attribution(image_lists, entries, result)
    return result


# A caption is untrusted text: bounded here, escaped on the page (a real one is a few
# hundred characters).
MAX_CAPTION = 2000


def _read_narratives(f: AnnotationTable, entries: dict[str, Entry]) -> None:
    i_id, i_caption = f.index("ImageID"), f.index("Caption")
    for fields in f.rows(entries):
        caption = fields[i_caption]
        entries[fields[i_id]].captions.append(caption if len(caption) <= MAX_CAPTION
                                              else caption[: MAX_CAPTION - 1] + "…")


def license_name(url: str) -> str:
    """The short name attribution gives a licence URL (CC BY 2.0, CC0 1.0), bounded; ''
    for none."""
    return bound(attribution.license_name(url)) if url.strip() else ""


def _read_boxes(f: AnnotationTable, entries: dict[str, Entry], result: Collected,
                names: ClassDescriptions | None, mids: frozenset[str] | None) -> None:
    """The exports' own box reader, so the gallery draws exactly the boxes they export."""
    reader = WrittenBoxes({i: e.written for i, e in entries.items()}, mids)
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}
    for box in reader.read([f]):
        attrs = tuple(box.attrs.get(a, -1) for a in ATTRIBUTES)
        attrs = shared.setdefault(attrs, attrs)
        entries[box.image_id].boxes.append((result.classes.index(box.label, names), *box.box, attrs))
    result.dropped += reader.dropped
    if reader.unreadable:
        result.notes.append(f"{f.name}: {reader.unreadable} box row(s) with a value that is not a number were "
                            "left out")


def _read_kinds(f: AnnotationTable, entries: dict[str, Entry], result: Collected,
                names: ClassDescriptions | None, mids: frozenset[str] | None) -> None:
    """relationships and points (issue 23): by the exports' own readers, as boxes are."""
    images = {i: e.written for i, e in entries.items()}
    index = result.classes.index
    if f.kind is RELATIONSHIPS:
        rels = written_relationships(images, mids)
        for r in rels.read([f]):
            entries[r.image_id].relationships.append(
                (index(r.label1, names), index(r.label2, names), r.box1, r.box2, bound(r.relationship)[:40]))
        dropped, unreadable = rels.dropped, rels.unreadable
    else:
        points = written_points(images, mids)
        for p in points.read([f]):
            entries[p.image_id].points.append((index(p.label, names), p.x, p.y, bound(p.estimated)[:10]))
        dropped, unreadable = points.dropped, points.unreadable
    result.dropped_kinds += dropped
    if unreadable:
        result.notes.append(f"{f.name}: {unreadable} row(s) with a value that is not a number were left out")


def _read_masks(f: AnnotationTable, entries: dict[str, Entry], result: Collected,
                names: ClassDescriptions | None, mids: frozenset[str] | None) -> None:
    """The exports' own mask rows (dataset/masks.py); whether the output holds each mask
    is found when its overlay is made."""
    reader = WrittenMasks({i: e.written for i, e in entries.items()}, None, mids)
    for m in reader.read([f]):
        entries[m.image.image_id].masks.append((result.classes.index(m.record.label, names), m.record.box_id))
    result.notes += reader.notes()


def _read_labels(f: AnnotationTable, entries: dict[str, Entry], result: Collected,
                 names: ClassDescriptions | None) -> None:
    i_id, i_label, i_src, i_conf = (f.index(c) for c in ("ImageID", "LabelName", "Source", "Confidence"))
    sources: dict[str, int] = {s: i for i, s in enumerate(result.label_sources)}
    for fields in f.rows(entries):
        try:
            confidence = float(fields[i_conf])
        except ValueError:
            continue
        src = bound(fields[i_src])[:40]
        k = sources.get(src)
        if k is None:
            k = sources[src] = len(result.label_sources)
            result.label_sources.append(src)
        entries[fields[i_id]].labels.append((result.classes.index(fields[i_label], names), confidence, k))


class _Wanted(RowFilter):
    def __init__(self, wanted: Callable[[str], bool]) -> None:
        self.wanted = wanted

    def skip(self, raw_id: str) -> bool:
        return not self.wanted(raw_id.lower())


def _read_attribution(paths: Iterable[Path], entries: dict[str, Entry], result: Collected) -> None:
    """Title, author, licence and Flickr page of each image, from the first list that has it."""
    missing = {i for i, e in entries.items() if e.attribution is None}
    for path in paths:
        if not missing:
            return
        try:
            fmt = read_header(path)
            for row in iter_rows(path, fmt, _Wanted(missing.__contains__)):
                if isinstance(row, Row) and row.image_id in missing:
                    missing.discard(row.image_id)
                    fields = row.fields
                    entries[row.image_id].attribution = Attribution(
                        bound(row.title), bound(row.author), http_url(fields[5]), license_name(fields[4]), http_url(fields[4]),
                        http_url(fields[3]),
                    )
        except InputError as exc:
            result.notes.append(f"no attribution from {path}: {exc}")
