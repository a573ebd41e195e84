"""The statistics page's numbers, from the collected entries and the journal's counts:
class frequency, boxes per image, box sizes, image sizes and aspect ratios, outcome
statuses and sources. Pure: each figure is a list of (key, label, counts) rows.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from oidownload.core.records import STATUS_MEANING, Status
from oidownload.gallery.collect import Collected


@dataclass
class Figure:
    """One chart and its table: a row per bucket or category, one count per series."""

    key: str
    title: str
    series: tuple[str, ...]
    rows: list[tuple[str, str, tuple[int, ...]]]  # (key, label, counts)
    log: bool = False
    chart: str = "bars"  # bars: a row per category; columns: a histogram
    drawn: int | None = None  # rows the chart shows (the first ones); None: all
    note: str = ""
    columns: tuple[str, ...] = ()  # extra label columns in the table, before the counts
    extra: dict[str, list[str]] = field(default_factory=dict)  # row key -> extra cells
    # README views (label frequency): a colour per series instead of the chart's own.
    colours: tuple[str, ...] = ()


def _buckets(values: collections.Counter[float], edges: Sequence[float], labels: Sequence[str]) -> list[tuple[str, str, tuple[int, ...]]]:
    """Counts per half-open bucket [edges[i], edges[i+1]); the last bucket is open-ended."""
    counts = [0] * len(labels)
    for v, n in values.items():
        counts[bisect.bisect_right(edges, v) - 1] += n
    return [(lab, lab, (c,)) for lab, c in zip(labels, counts, strict=True)]


BOXES_PER_IMAGE_EDGES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 21, 51]
BOXES_PER_IMAGE_LABELS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11-20", "21-50", "51+"]
# Box area as a share of the image's area.
AREA_EDGES = [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75]
AREA_LABELS = ["< 0.1%", "0.1-1%", "1-5%", "5-10%", "10-25%", "25-50%", "50-75%", "≥ 75%"]
SIDE_EDGES = [0, 128, 256, 512, 640, 1024, 2048]
SIDE_LABELS = ["< 128", "128-255", "256-511", "512-639", "640-1023", "1024-2047", "≥ 2048"]
# Width over height.
ASPECT_EDGES = [0.0, 0.5, 0.75, 0.9, 1.1, 1.4, 1.6, 2.0]
ASPECT_LABELS = ["< 0.5", "0.5-0.75", "0.75-0.9", "0.9-1.1", "1.1-1.4", "1.4-1.6", "1.6-2", "≥ 2"]
TOP_SIZES = 15


def figures(data: Collected, statuses: dict[str, int]) -> list[Figure]:
    entries = data.entries
    boxes = collections.Counter[int]()
    images = collections.Counter[int]()
    per_image = collections.Counter[float]()
    areas = collections.Counter[float]()
    sides = collections.Counter[float]()
    aspects = collections.Counter[float]()
    sizes = collections.Counter[tuple[int, int]]()
    sources = collections.Counter[str]()
    for e in entries:
        im = e.written
        for b in e.boxes:
            boxes[b[0]] += 1
            areas[(b[2] - b[1]) * (b[4] - b[3])] += 1
        images.update(e.classes())
        per_image[len(e.boxes)] += 1
        sides[max(im.width, im.height)] += 1
        if im.height:
            aspects[im.width / im.height] += 1
        sizes[im.width, im.height] += 1
        sources[e.written.source or "unknown"] += 1
    names, mids = data.classes.names, data.classes.mids
    order = sorted(images.keys() | boxes.keys(), key=lambda c: (-boxes[c], -images[c], names[c]))
    drawn = sum(1 for c in order if boxes[c]) if boxes else len(order)
    out = [
        Figure("classes", "Class frequency", ("boxes", "images"),
               [(mids[c], names[c], (boxes[c], images[c])) for c in order], log=True, drawn=drawn,
               note="Boxes drawn per class, and images that have the class (a box, or an image-level "
                    "label with confidence ≥ 0.5). Log scale."
                    + (" The chart shows the classes with boxes; the table has every class." if drawn < len(order) else ""),
               columns=("MID",), extra={mids[c]: [mids[c]] for c in order}),
        Figure("boxes-per-image", "Boxes per image", ("images",),
               _buckets(per_image, BOXES_PER_IMAGE_EDGES, BOXES_PER_IMAGE_LABELS), chart="columns"),
        Figure("box-area", "Box size relative to the image", ("boxes",), _buckets(areas, AREA_EDGES, AREA_LABELS), chart="columns",
               note="The box's area as a share of the written image's area."),
        Figure("image-side", "Image size (longest side, pixels)", ("images",), _buckets(sides, SIDE_EDGES, SIDE_LABELS), chart="columns",
               note="As written (after resizing and turning)."),
        Figure("aspect", "Aspect ratio (width / height)", ("images",), _buckets(aspects, ASPECT_EDGES, ASPECT_LABELS),
               chart="columns"),
        Figure("sizes", f"Most common sizes (top {TOP_SIZES})", ("images",),
               [(f"{w}x{h}", f"{w} x {h}", (n,)) for (w, h), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SIZES]]),
        Figure("status", "Outcome of each row", ("rows",), _status_rows(statuses), log=True,
               note="From the journal: ok, and each kind of failure.", columns=("meaning",),
               extra={s.value: [m] for s, m in STATUS_MEANING.items()}),
        Figure("source", "Source of each image", ("images",),
               [(s, s, (n,)) for s, n in sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))]),
    ]
    out += _caption_figures(data)  # narratives (issue 23)
    out += kind_figures(data)  # relationships and points (issue 23)
    masks = _masks_per_class(data)
    if masks is not None:
        out.insert(1, masks)
    return out


# -- relationships and points (issue 23) --------------------------------------------------------------

TOP_TRIPLETS = 20
ANSWERS = ("yes", "no", "unsure")


def kind_figures(data: Collected) -> list[Figure]:
    """The most common triplets and predicates, and points per class by answer; none
    when no relationship or point file was given."""
    names, mids = data.classes.names, data.classes.mids
    triplets = collections.Counter[tuple[int, str, int]]()
    predicates = collections.Counter[str]()
    points: dict[int, list[int]] = {}
    for e in data.entries:
        for c1, c2, _, _, p in e.relationships:
            triplets[c1, p, c2] += 1
            predicates[p] += 1
        for c, _, _, answer in e.points:
            counts = points.setdefault(c, [0, 0, 0])
            if answer in ANSWERS:
                counts[ANSWERS.index(answer)] += 1
    out = []
    if triplets:
        top = sorted(triplets.items(), key=lambda kv: (-kv[1], names[kv[0][0]], kv[0][1], names[kv[0][2]]))
        out += [
            Figure("triplets", f"Most common relationships (top {TOP_TRIPLETS})", ("relationships",),
                   [(f"{mids[a]} {p} {mids[b]}", f"{names[a]} {p} {names[b]}", (n,)) for (a, p, b), n in
                    top[:TOP_TRIPLETS]], note="Subject, predicate, object; for `is` the object is an attribute."),
            Figure("predicates", "Predicates", ("relationships",),
                   [(p, p, (n,)) for p, n in sorted(predicates.items(), key=lambda kv: (-kv[1], kv[0]))]),
        ]
    if points:
        order = sorted(points, key=lambda c: (-sum(points[c]), names[c]))
        out.append(Figure("points", "Points per class", ANSWERS,
                          [(mids[c], names[c], tuple(points[c])) for c in order], log=True,
                          note="Point labels in the written images, by their answer (EstimatedYesNo). Log scale."))
    return out


# narratives (issue 23): words per caption, as Open Images' own captions run (~20-80).
CAPTION_EDGES = [0, 1, 10, 20, 30, 40, 60, 80, 120]
CAPTION_LABELS = ["0 (empty)", "1-9", "10-19", "20-29", "30-39", "40-59", "60-79", "80-119", "≥ 120"]


def _caption_figures(data: Collected) -> list[Figure]:
    lengths = collections.Counter[float](len(c.split()) for e in data.entries for c in e.captions)
    if not lengths:
        return []
    return [Figure("caption-length", "Caption length (words)", ("captions",),
                   _buckets(lengths, CAPTION_EDGES, CAPTION_LABELS), chart="columns",
                   note="Words in each localized narrative's caption (split at spaces).")]


def _masks_per_class(data: Collected) -> Figure | None:
    """Masks (issue 22) drawn per class, and the images with one; None without masks."""
    masks = collections.Counter[int]()
    images = collections.Counter[int]()
    for e in data.entries:
        masks.update(c for c, _ in e.masks)
        images.update({c for c, _ in e.masks})
    if not masks:
        return None
    names, mids = data.classes.names, data.classes.mids
    order = sorted(masks, key=lambda c: (-masks[c], names[c]))
    return Figure("masks", "Masks per class", ("masks", "images"), [(mids[c], names[c], (masks[c], images[c]))
                                                                     for c in order], log=True,
                  note="Masks drawn per class (those the output holds), and the images with one. Log scale.",
                  columns=("MID",), extra={mids[c]: [mids[c]] for c in order})


def _status_rows(statuses: dict[str, int]) -> list[tuple[str, str, tuple[int, ...]]]:
    order = {s.value: i for i, s in enumerate(Status)}
    return [(s, s, (n,)) for s, n in sorted(statuses.items(), key=lambda kv: order.get(kv[0], 99)) if n]
