"""`oidownload gallery`: OUT's downloaded images → a static site in DIR that works from
file:// with no server and no network: index.html (a paged grid with the boxes drawn),
a page per image, and stats.html (charts as inline SVG, with their tables).

    DIR/index.html, stats.html, assets/      the pages, the script and the style
    DIR/data/*.js                            the grid's data, loaded with <script src>
    DIR/images/<abc>/<id>.html, .t.jpg, .<ext>   per image: its page, thumbnail, full size

Browsers refuse fetch() of file:// URLs, so data travels as script files that call
OIG.put(name, value); the index loads one page's chunk at a time, so 50,000 images
cost the first page what 100 do.
"""

from __future__ import annotations

import collections
import colorsys
import concurrent.futures as cf
import contextlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from oidownload import __version__
from oidownload.core.errors import ConfigError, InputError, OutputError
from oidownload.core.fsio import Place, Tree
from oidownload.core.records import Outcome, Status
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.hierarchy import Hierarchy
from oidownload.dataset.masks import WrittenMasks
from oidownload.engine.cpus import usable_cpus
from oidownload.engine.progress import Progress
from oidownload.gallery import charts, work
from oidownload.gallery.collect import Collected, Entry, collect
from oidownload.gallery.hierarchy import MAX_NODES, hierarchy_view
from oidownload.gallery.labelfreq import label_frequency
from oidownload.gallery.reads import input_lists, status_counts, written_images
from oidownload.gallery.render import render
from oidownload.gallery.stats import figures
from oidownload.gallery.work import write_file
from oidownload.sinks import Reader, is_remote
from oidownload.state.reader import StateDir, Written

MARKER = ".oidownload-gallery"
_EXT = re.compile(r"[a-z0-9]{1,5}")
BATCH = 32  # images per pool task: big enough that the hop to a worker is noise
ATTRIBUTE_NAMES = ("occluded", "truncated", "group of", "depiction", "inside")
_TURNS = {1: "none", 2: "mirrored", 3: "180°", 4: "flipped", 5: "transposed", 6: "90° clockwise",
          7: "transversed", 8: "90° counter-clockwise"}


@dataclass
class GalleryResult:
    dest: Path
    images: int = 0
    boxes: int = 0
    labels: int = 0
    classes: int = 0  # distinct classes of the drawn boxes (labels and negatives are not counted)
    masks: int = 0  # masks drawn (issue 22)
    dropped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (ImageID, why) without a thumbnail
    notes: list[str] = field(default_factory=list)
    hierarchy_page: bool = False  # hierarchy.html written (README views)


@dataclass(frozen=True)
class ClassTree:
    """The hierarchy page's input: the tree, where it came from, and names for its classes."""

    hierarchy: Hierarchy
    source: str  # the file's name, or "the database"
    names: ClassDescriptions | None = None


# Distinct colours for the most frequent classes (Tableau 10, then two more); the rest
# take a hue from their MID.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1f77b4", "#d62728")


def colours(data: Collected) -> list[str]:
    """A colour per class (by index), the same on every page of a gallery: the palette
    in order of boxes drawn, then a hue from the MID."""
    boxes = collections.Counter(b[0] for e in data.entries for b in e.boxes)
    boxes.update(m[0] for e in data.entries for m in e.masks)
    out = [f"hsl({zlib.crc32(mid.encode()) % 360} 75% 42%)" for mid in data.classes.mids]
    for c, colour in zip(sorted(boxes, key=lambda c: (-boxes[c], data.classes.mids[c])), PALETTE, strict=False):
        out[c] = colour
    return out


def build_gallery(
    state: StateDir,
    dest: Path | None = None,
    *,
    annotation_paths: list[Path],
    class_descriptions: Path | None,
    classes: frozenset[str] | None,
    image_lists: list[Path] | None = None,
    page_size: int = 100,
    processes: int | None = None,
    progress: Progress,
    hierarchy: ClassTree | None = None,
) -> GalleryResult:
    """The gallery of the output `state` describes, in dest (default OUT/gallery).
    image_lists: where the attribution comes from (default: the download's inputs)."""
    images = written_images(state)
    if not images:
        raise InputError(f"{state.out} has no downloaded images (no row with status ok in its journal)")
    if dest is None and is_remote(state.out):
        raise ConfigError(f"{state.out} is not a local folder: give the gallery's folder with -o")
    place = Place.of(state.out, "gallery", dest)
    _prepare(place)
    lists = input_lists(state) if image_lists is None else image_lists
    workers = processes or usable_cpus().count  # the affinity mask and a container's quota
    with _pool(workers, state) as pool:
        return _build(state, place, images, pool, 4 * workers, annotation_paths=annotation_paths,
                      class_descriptions=class_descriptions, classes=classes, image_lists=lists,
                      page_size=page_size, progress=progress, hierarchy=hierarchy)


@contextlib.contextmanager
def _pool(workers: int, state: StateDir) -> Iterator[cf.ProcessPoolExecutor | None]:
    """Worker processes, forked now: before the annotations are read, this process is
    small, and workers that fork later would each count its hundreds of MB again."""
    if workers == 1:
        work.init(state)
        yield None
        return
    with cf.ProcessPoolExecutor(workers, initializer=work.init, initargs=(state,)) as pool:
        pool.submit(int).result()  # starts every worker (fork: all at the first task)
        yield pool


def _build(state: StateDir, place: Place, images: list[Written], pool: cf.ProcessPoolExecutor | None, in_flight: int, *,
           annotation_paths: list[Path], class_descriptions: Path | None, classes: frozenset[str] | None,
           image_lists: list[Path], page_size: int, progress: Progress, hierarchy: ClassTree | None) -> GalleryResult:
    progress.log("gallery", f"gallery: {len(images)} images; reading annotations and attribution")
    data = collect(images, annotation_paths, class_descriptions=class_descriptions, classes=classes,
                   image_lists=image_lists)
    result = GalleryResult(place.path, images=len(images), boxes=sum(len(e.boxes) for e in data.entries),
                           labels=sum(len(e.labels) for e in data.entries),
                           classes=len({b[0] for e in data.entries for b in e.boxes}),
                           dropped=data.dropped, notes=list(data.notes), hierarchy_page=hierarchy is not None)
    if not data.box_files and not data.label_files and not data.mask_files:
        result.notes.append("no annotation files: the images are shown without boxes (pass --annotations)")
    progress.log("gallery", f"gallery: {result.boxes} boxes, {result.labels} labels; thumbnails and image pages")
    progress.set_total(len(images))
    palette = colours(data)
    marks = _MaskReads(state.reader()) if data.mask_files else None
    failed = _make_images(place, data, palette, pool, in_flight, progress, marks)
    result.failed = sorted(failed.items())
    if marks is not None:
        result.masks = sum(len(e.masks) for e in data.entries)
        result.notes += marks.found.notes()
    progress.close()
    progress.log("gallery", "gallery: index, data and statistics")
    try:
        with place.open(create=False) as tree:
            _write_site(Path(state.out).name or state.out, tree, data, palette, status_counts(state), page_size,
                        failed, result)
            _write_views(tree, data, result, hierarchy)
    except OSError as exc:
        raise OutputError(f"cannot write the gallery in {place.path}: {exc.strerror or exc}") from None
    return result


def _prepare(place: Place) -> None:
    """DIR must be new, empty, or an earlier gallery: never write over other files. A
    symlink at OUT/gallery (or below DIR) is refused, not followed."""
    try:
        with place.open() as tree:
            if tree.names() and tree.lstat(MARKER) is None:
                raise OutputError(f"{place.path} is not empty and holds no gallery: choose another -o folder")
            tree.write_bytes(MARKER, b"A gallery made by oidownload; `oidownload gallery` may rewrite this folder.\n")
    except OSError as exc:
        raise OutputError(f"cannot write to {place.path}: {exc.strerror or exc}") from None


def _rel(image_id: str, suffix: str) -> str:
    """Where an image's files go: its page, thumbnail and full-size copy share a folder."""
    return f"images/{image_id[:3]}/{image_id}.{suffix}"


# -- per image, in the pool --------------------------------------------------------------


# -- masks (issue 22) --------------------------------------------------------------------


@dataclass
class _MaskReads:
    """Reads each mask of an image from the output, in this process, as its job is made:
    a mask the output lacks is taken off its entry (and counted) before its page, tile
    or statistics are written, so all three draw the same masks."""

    reader: Reader
    found: WrittenMasks = field(init=False)

    def __post_init__(self) -> None:
        self.found = WrittenMasks({}, self.reader)

    def overlays(self, e: Entry, palette: list[str]) -> tuple[work.Overlay, ...]:
        out, kept = [], []
        for c, box_id in e.masks:
            data = self.found.data(e.written, box_id)
            if data is not None:
                kept.append((c, box_id))
                out.append(work.Overlay(_mask_rel(e.image_id, box_id), _rgb(palette[c]), data))
        e.masks[:] = kept
        return tuple(out)


def _mask_rel(image_id: str, box_id: str) -> str:
    return _rel(image_id, f"m-{box_id}.png")


def _rgb(colour: str) -> tuple[int, int, int]:
    """A palette colour (#rrggbb, or hsl(H S% L%) as colours() writes them) as RGB."""
    if colour.startswith("#"):
        return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
    h, s, lum = (float(v.rstrip("%")) for v in colour[4:-1].split())
    r, g, b = colorsys.hls_to_rgb(h / 360, lum / 100, s / 100)
    return round(r * 255), round(g * 255), round(b * 255)


def _jobs(data: Collected, palette: list[str], marks: _MaskReads | None = None) -> Iterator[work.Job]:
    entries = data.entries
    for i, e in enumerate(entries):
        overlays = marks.overlays(e, palette) if marks is not None and e.masks else ()
        im = e.written
        # The extension names a file in the gallery: only a plain one (the journal is a file too).
        ext = im.ext if _EXT.fullmatch(im.ext) else "img"
        full = _rel(e.image_id, ext)
        prev = entries[i - 1].image_id if i else None
        nxt = entries[i + 1].image_id if i + 1 < len(entries) else None
        yield work.Job(e.image_id, e.written.location, _rel(e.image_id, "html"), _rel(e.image_id, "t.jpg"), full,
                       _page_context(e, data, palette, f"{e.image_id}.{ext}", prev, nxt, i, len(entries)), overlays)


def _page_context(e: Entry, data: Collected, palette: list[str], full: str, prev: str | None, nxt: str | None, i: int, n: int) -> dict[str, Any]:
    im = e.written
    mids, names = data.classes.mids, data.classes.names
    boxes = []
    for c, xmin, xmax, ymin, ymax, attrs in e.boxes:
        boxes.append({
            "mid": mids[c], "name": names[c], "colour": palette[c],
            "x": round(xmin * im.width, 1), "y": round(ymin * im.height, 1),
            "w": round((xmax - xmin) * im.width, 1), "h": round((ymax - ymin) * im.height, 1),
            "attrs": ["yes" if a == 1 else "no" if a == 0 else "?" for a in attrs],
        })
    labels = sorted(
        ({"mid": mids[c], "name": names[c], "confidence": conf, "source": data.label_sources[s]}
         for c, conf, s in e.labels),
        key=lambda lab: (-float(lab["confidence"]), str(lab["name"])),  # type: ignore[arg-type]
    )
    crop = im.crop
    return {
        "root": "../../", "scripts": False, "version": __version__, "title": e.image_id,
        "image": {"id": e.image_id, "subset": im.subset, "width": im.width, "height": im.height,
                  "source": e.written.source or "unknown", "turn": _TURNS.get(im.orientation, str(im.orientation)),
                  "crop": None if crop is None else ", ".join(f"{v:.4f}" for v in crop),
                  "src": full, "location": e.written.location},
        "boxes": boxes, "labels": labels, "attribute_names": ATTRIBUTE_NAMES,
        "masks": [{"mid": mids[c], "name": names[c], "colour": palette[c], "box_id": box_id,
                   "src": _mask_rel(e.image_id, box_id).rpartition("/")[2]} for c, box_id in e.masks],
        "has_attributes": any(a != -1 for b in e.boxes for a in b[5]),
        "attribution": e.attribution, "prev": _sibling(prev), "next": _sibling(nxt), "position": i + 1, "count": n,
        **kinds_context(e, data, palette),  # relationships and points (issue 23)
        # Small images are shown larger, so their boxes can be told apart.
        "captions": e.captions,  # narratives (issue 23): escaped by the template
        "display_width": max(im.width, min(640, round(640 * im.width / max(im.height, 1)))),
        "label_size": max(8.0, round(max(im.width, im.height) / 40, 1)),
    }


def kinds_context(e: Entry, data: Collected, palette: list[str]) -> dict[str, Any]:
    """relationships and points (issue 23): each relationship as its two boxes and the
    line between their centres, labelled; each point as a dot coloured by its answer."""
    im, names = e.written, data.classes.names

    def px(b: tuple[float, float, float, float]) -> dict[str, float]:
        xmin, xmax, ymin, ymax = b
        return {"x": round(xmin * im.width, 1), "y": round(ymin * im.height, 1),
                "w": round((xmax - xmin) * im.width, 1), "h": round((ymax - ymin) * im.height, 1),
                "cx": round((xmin + xmax) / 2 * im.width, 1), "cy": round((ymin + ymax) / 2 * im.height, 1)}

    rels = []
    for c1, c2, b1, b2, predicate in e.relationships:
        one, two = px(b1), px(b2)
        label = f"{predicate} {names[c2]}" if predicate == "is" else predicate
        rels.append({"one": one, "two": two, "subject": names[c1], "object": names[c2], "predicate": predicate,
                     "label": label, "colour": palette[c1],
                     "lx": round((one["cx"] + two["cx"]) / 2, 1), "ly": round((one["cy"] + two["cy"]) / 2, 1)})
    dots = [{"x": round(x * im.width, 1), "y": round(y * im.height, 1), "name": names[c], "answer": answer,
             "colour": ANSWER_COLOURS.get(answer, "#888888")} for c, x, y, answer in e.points]
    return {"relationships": rels, "points": dots, "dot_size": max(2.0, round(max(im.width, im.height) / 100, 1))}


# Point labels by answer: green yes, red no, grey unsure (the README's own chart colours).
ANSWER_COLOURS = {"yes": "#1a9850", "no": "#d73027", "unsure": "#888888"}


def _sibling(image_id: str | None) -> str | None:
    """Another image's page, relative to an image page."""
    return f"../{image_id[:3]}/{image_id}.html" if image_id else None


def _batches(jobs: Iterator[work.Job]) -> Iterator[list[work.Job]]:
    batch: list[work.Job] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _make_images(place: Place, data: Collected, palette: list[str], pool: cf.ProcessPoolExecutor | None,
                 in_flight: int, progress: Progress, marks: _MaskReads | None = None) -> dict[str, str]:
    """Thumbnails, full-size copies and image pages. Returns the images that got no thumbnail."""
    failed: dict[str, str] = {}

    def record(done: list[work.Done]) -> None:
        for d in done:
            if d.error:
                failed[d.image_id] = d.error
            progress.add(Outcome(d.image_id, Status.CORRUPT if d.error else Status.OK, nbytes=d.nbytes))
        progress.tick()

    if pool is None:
        for batch in _batches(_jobs(data, palette, marks)):
            record(work.make(place, batch))
        return failed
    # Bounded in flight: the page contexts of 50,000 images need not all exist at once.
    pending: set[cf.Future[list[work.Done]]] = set()
    for batch in _batches(_jobs(data, palette, marks)):
        if len(pending) >= in_flight:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                record(f.result())
        pending.add(pool.submit(work.make, place, batch))
    for f in cf.as_completed(pending):
        record(f.result())
    return failed


# -- the site ----------------------------------------------------------------------------


def _js(name: str, value: object) -> bytes:
    # JSON with every non-ASCII character escaped is valid JavaScript, U+2028 included.
    return f"OIG.put({json.dumps(name)},{json.dumps(value, separators=(',', ':'))});\n".encode()


def _write_site(out_name: str, tree: Tree, data: Collected, palette: list[str], statuses: dict[str, int], page_size: int,
                failed: dict[str, str], result: GalleryResult) -> None:
    entries = data.entries
    mids, names = data.classes.mids, data.classes.names
    per_class: dict[int, list[int]] = {}
    per_split: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        for c in e.classes():
            per_class.setdefault(c, []).append(i)
        per_split.setdefault(e.written.subset, []).append(i)
    splits = sorted(per_split)
    split_of = {s: k for k, s in enumerate(splits)}
    for start in range(0, len(entries), page_size):
        chunk = [_tile(e, split_of, e.image_id not in failed) for e in entries[start : start + page_size]]
        write_file(tree, f"data/chunk-{start // page_size}.js", _js(f"chunk-{start // page_size}", chunk))
    for c, members in per_class.items():
        write_file(tree, f"data/class-{c}.js", _js(f"class-{c}", members))
    for s, members in per_split.items():
        write_file(tree, f"data/split-{split_of[s]}.js", _js(f"split-{split_of[s]}", members))
    meta = {"total": len(entries), "pageSize": page_size, "classes": [[m, names[c], palette[c]] for c, m in enumerate(mids)],
            "splits": splits}
    # narratives (issue 23): the grid's word filter searches these, loaded only when used
    narrated = [[i, "\n".join(e.captions)] for i, e in enumerate(entries) if e.captions]
    if narrated:
        write_file(tree, "data/captions.js", _js("captions", narrated))
    write_file(tree, "data/meta.js", _js("meta", meta))
    for name in ("gallery.css", "gallery.js"):
        write_file(tree, f"assets/{name}", resources.files("oidownload.gallery").joinpath("static", name).read_bytes())
    common = {"root": "", "version": __version__, "out_name": out_name, "summary": result,
              "hierarchy_page": result.hierarchy_page}
    class_options = sorted(((names[c], mids[c], c, len(m)) for c, m in per_class.items()), key=lambda t: (t[0].casefold(), t[1]))
    write_file(tree, "index.html", render("index.html", {
        **common, "scripts": True, "title": "Gallery", "classes": class_options, "narrated": len(narrated),
        "splits": [(k, s, len(per_split[s])) for k, s in enumerate(splits)], "page_size": page_size,
    }).encode())
    figs = figures(data, statuses) + label_frequency(data)  # + the README's label frequency
    write_file(tree, "stats.html", render("stats.html", {
        **common, "scripts": False, "title": "Statistics",
        "figures": [(f, charts.chart(f)) for f in figs], "data": data, "statuses": statuses,
    }).encode())


# -- the README's views: the hierarchy page ------------------------------------------------


def _write_views(tree: Tree, data: Collected, result: GalleryResult, hierarchy: ClassTree | None) -> None:
    """hierarchy.html when there is a tree; an earlier build's page goes when there is none."""
    if hierarchy is None:
        tree.unlink("hierarchy.html", missing_ok=True)
        return
    view = hierarchy_view(hierarchy.hierarchy, data, hierarchy.names)
    write_file(tree, "hierarchy.html", render("hierarchy.html", {
        "root": "", "version": __version__, "scripts": False, "title": "Class hierarchy", "hierarchy_page": True,
        "view": view, "source": hierarchy.source, "max_nodes": MAX_NODES,
    }).encode())


def _tile(e: Entry, split_of: dict[str, int], thumb: bool) -> list[Any]:
    """[id, split, width, height, thumbnail made, [class, x, y, w, h, ...], [classes],
    [class, BoxID, ...]]: boxes in pixels of the written image, one decimal (a tenth of a
    pixel is below what shows); then the masks drawn (their overlays are beside the page)."""
    im = e.written
    w, h = im.width, im.height
    flat: list[float] = []
    for c, xmin, xmax, ymin, ymax, _ in e.boxes:
        flat += [c, round(xmin * w, 1), round(ymin * h, 1), round((xmax - xmin) * w, 1), round((ymax - ymin) * h, 1)]
    return [e.image_id, split_of[im.subset], w, h, int(thumb), flat, sorted(e.classes()),
            [v for c, box_id in e.masks for v in (c, box_id)]]
