"""`oidownload gallery` opened in a real headless Chromium (driven by Playwright).

A real download from the local origin of images with real Open Images ImageIDs, so the
real V3 validation annotations apply. Every expected figure is computed here from the
annotation CSVs, the journal and the written files (csv.DictReader, sqlite3, Pillow),
never taken from the code under test."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing.origin import Corpus, Fault, Origin, OriginThread
from tests.conftest import V3, V4, journal_rows, require, run_cli
from tests.maskdata import Masked, write_masks

VAL = V3 / "validation"
BOXES_CSV = VAL / "annotations-human-bbox.csv"

# An engine test (a real cluster, container or browser): out of the fast lane, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow
LABELS_CSV = VAL / "annotations-human.csv"
DESCRIPTIONS = V3 / "class-descriptions.csv"
CHROMIUM = os.environ.get("OIDOWNLOAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WIDTHS = (1280, 640)  # two window widths: tiles and image pages are drawn at different scales
HOSTILE_AUTHOR = "<script>window.pwned = 1</script>"
HOSTILE_TITLE = '<img src=x onerror="window.pwned = 2">'
HOSTILE_CLASS = '<b onmouseover="window.pwned = 3">Wheel</b>'
PAGE_SIZE = 6
HIERARCHY = V4 / "bbox_labels_600_hierarchy.json"  # README views: the hierarchy page


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def artifacts() -> Path | None:
    """Where CI keeps screenshots (.ci/run sets it)."""
    path = os.environ.get("OIDOWNLOAD_ARTIFACTS")
    if not path:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


# -- a real download, then the gallery --------------------------------------------------------


@dataclass
class Built:
    out: Path
    gallery: Path
    ok: list[str]  # ImageIDs written
    failed: dict[str, str]  # ImageID -> status
    hostile: str  # the image whose author and title are hostile
    test_split: set[str]
    corpus: Corpus
    coco: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def origin(synth_cache: Path) -> Iterator[Callable[[Corpus], Origin]]:
    """Local origins for this module's downloads (make_origin, but for module fixtures)."""
    threads: list[OriginThread] = []

    def start(corpus: Corpus) -> Origin:
        t = OriginThread(Origin(corpus))
        threads.append(t)
        return t.__enter__()

    yield start
    for t in threads:
        t.__exit__(None, None, None)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, origin: Callable[[Corpus], Origin]) -> Built:
    tmp = tmp_path_factory.mktemp("gallery")
    boxed = {r["ImageID"] for r in rows_of(BOXES_CSV)}
    ids = [r["ImageID"] for r in rows_of(VAL / "images.csv") if r["ImageID"] in boxed][:36]
    corpus = Corpus.generate(0, mix="tiny", seed=41, ids=ids, subset="validation",
                             faults={ids[3]: Fault("404"), ids[7]: Fault("notimage")})
    test_split = set(ids[10:16])
    for i in test_split:
        corpus.entries[i].subset = "test"
    server = origin(corpus)
    manifest = tmp / "images.csv"
    rows = [corpus.manifest_row(i, server.base_url) for i in ids]
    hostile = ids[1]
    for r in rows:
        if r[0] == hostile:  # published CSVs HTML-escape Author and Title
            r[5] = "javascript:window.pwned=4"
            r[6] = HOSTILE_AUTHOR.replace("<", "&lt;").replace(">", "&gt;")
            r[7] = HOSTILE_TITLE
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                    "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL"])
        w.writerows(rows)
        w.writerow(["../../etc/passwd", *rows[0][1:]])  # a bad row: journaled with its line, not downloaded
    descriptions = tmp / "class-descriptions.csv"
    with open(DESCRIPTIONS, newline="", encoding="utf-8") as src, open(descriptions, "w", newline="", encoding="utf-8") as dst:
        w = csv.writer(dst, lineterminator="\n")
        for mid, name in csv.reader(src):
            w.writerow([mid, HOSTILE_CLASS if name == "Wheel" else name])
    out = tmp / "out"
    # --annotations without --class: remembered by the journal, every class drawn.
    res = run_cli("download", manifest, "-o", out, "--resize", "160", "--progress", "none",
                  "--annotations", BOXES_CSV, "--annotations", LABELS_CSV, "--class-descriptions", descriptions)
    assert res.returncode == 0, res.stderr
    res = run_cli("gallery", out, "--page-size", PAGE_SIZE, "--progress", "log", "--hierarchy", HIERARCHY)
    assert res.returncode == 0, res.stderr
    gallery = Path(res.stdout.strip()).parent
    assert gallery == out / "gallery"
    res = run_cli("annotations", out, "--format", "coco", "--annotations", BOXES_CSV)
    assert res.returncode == 0, res.stderr
    statuses = {i: s for i, (s, _, _) in journal_rows(out).items()}
    b = Built(out, gallery, sorted(i for i, s in statuses.items() if s == "ok"),
              {i: s for i, s in statuses.items() if s != "ok"}, hostile, test_split, corpus)
    b.coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert len(b.ok) == len(ids) - 2 and set(b.failed) == {ids[3], ids[7]}
    return b


# -- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require(Path(CHROMIUM).is_file(), f"Chromium at {CHROMIUM} (apt-get install chromium; see .ci/chromium-up.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package (pip install -e '.[test]')")
        raise
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Session:
    """One browser context: its pages, every request they made and every script error."""

    def __init__(self, browser: Any, width: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on("weberror", lambda e: self.errors.append(str(e.error)))

    def open(self, url: str) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        return page

    def close(self) -> None:
        self.context.close()
        outside = [u for u in self.requests if not u.startswith("file://")]
        assert self.requests and not outside, outside
        assert not self.errors, self.errors


@pytest.fixture
def session(chromium: Any) -> Iterator[Callable[[int], Session]]:
    sessions: list[Session] = []

    def make(width: int = WIDTHS[0]) -> Session:
        s = Session(chromium, width)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.close()


def wait_render(page: Any, before: str | None) -> None:
    page.wait_for_function("(t) => document.body.dataset.ready !== undefined && document.body.dataset.ready !== t", arg=before)


def ticket(page: Any) -> str | None:
    return page.evaluate("document.body.dataset.ready ?? null")  # type: ignore[no-any-return]


GRID_JS = """() => [...document.querySelectorAll('#grid .tile')].map(t => {
  const img = t.querySelector('svg image'), r = img.getBoundingClientRect();
  return {id: t.dataset.imageId, image: [r.x, r.y, r.width, r.height],
          rects: [...t.querySelectorAll('rect.box')].map(b => {
            const q = b.getBoundingClientRect();
            return {id: b.dataset.imageId, label: b.dataset.label, box: [q.x, q.y, q.width, q.height]};
          }),
          chips: [...t.querySelectorAll('.chip')].map(c => c.textContent)};
})"""


def every_page(page: Any) -> list[dict[str, Any]]:
    """The tiles of every page of the grid, pressing 'next' to the end."""
    tiles: list[dict[str, Any]] = []
    while True:
        tiles += page.evaluate(GRID_JS)
        if page.locator("#next").is_disabled():
            return tiles
        before = ticket(page)
        page.click("#next")
        wait_render(page, before)


def index(s: Session, b: Built) -> Any:
    page = s.open((b.gallery / "index.html").as_uri())
    wait_render(page, None)
    return page


# -- what the files say, read independently ----------------------------------------------------


def source_boxes(ids: set[str]) -> dict[str, list[dict[str, str]]]:
    boxes: dict[str, list[dict[str, str]]] = {i: [] for i in ids}
    for r in rows_of(BOXES_CSV):
        if r["ImageID"] in ids:
            boxes[r["ImageID"]].append(r)
    return boxes


def positive_labels(ids: set[str]) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {i: set() for i in ids}
    for r in rows_of(LABELS_CSV):
        if r["ImageID"] in ids and float(r["Confidence"]) >= 0.5:
            labels[r["ImageID"]].add(r["LabelName"])
    return labels


def written_size(out: Path, image_id: str) -> tuple[int, int]:
    (path,) = out.glob(f"*/{image_id[:3]}/{image_id}.jpg")
    with Image.open(path) as im:
        return im.size


def assert_on_screen(rects: list[dict[str, Any]], image: list[float], want: list[tuple[str, float, float, float, float]]) -> None:
    """On-screen rectangles vs boxes (label, xmin, xmax, ymin, ymax normalised to the written
    frame), within 1 px, as placed on the image element's on-screen rectangle."""
    ix, iy, iw, ih = image
    expected = sorted((lab, ix + x0 * iw, iy + y0 * ih, (x1 - x0) * iw, (y1 - y0) * ih) for lab, x0, x1, y0, y1 in want)
    got = [(r["label"], *r["box"]) for r in rects]
    assert len(got) == len(expected)
    for e in expected:  # each expected box takes one drawn box of its class within 1 px
        match = next((g for g in got if g[0] == e[0] and all(abs(a - c) <= 1.0 for a, c in zip(g[1:], e[1:], strict=True))), None)
        assert match is not None, (e, got)
        got.remove(match)


# -- the tests -----------------------------------------------------------------------------------


def test_box_count_equals_the_coco_export(built: Built, session: Callable[[int], Session]) -> None:
    s = session(WIDTHS[0])
    tiles = every_page(index(s, built))
    assert [t["id"] for t in tiles] == built.ok  # every image once, in order, across pages
    rects = [r for t in tiles for r in t["rects"]]
    assert len(rects) == len(built.coco["annotations"]) > 100
    coco_ids = {im["id"]: im["open_images_id"] for im in built.coco["images"]}
    per_image = collections.Counter(coco_ids[a["image_id"]] for a in built.coco["annotations"])
    assert collections.Counter(r["id"] for r in rects) == per_image
    assert all(r["id"] == t["id"] for t in tiles for r in t["rects"])  # the hooks name their tile


@pytest.mark.parametrize("width", WIDTHS)
def test_boxes_sit_on_the_annotation_at_two_widths(built: Built, session: Callable[[int], Session], width: int) -> None:
    s = session(width)
    tiles = every_page(index(s, built))
    source = source_boxes(set(built.ok))
    for t in tiles:
        w, h = written_size(built.out, t["id"])
        _, _, iw, ih = t["image"]
        assert abs(iw / ih - w / h) < 0.01  # the image is drawn in its own proportions
        want = [(r["LabelName"], float(r["XMin"]), float(r["XMax"]), float(r["YMin"]), float(r["YMax"])) for r in source[t["id"]]]
        assert_on_screen(t["rects"], t["image"], want)
    # The image pages, full size (scaled down to the window when it is narrower).
    for image_id in built.ok[:6]:
        page = s.open((built.gallery / "images" / image_id[:3] / f"{image_id}.html").as_uri())
        image = page.evaluate("(() => { const r = document.querySelector('svg.frame image').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
        rects = page.evaluate("[...document.querySelectorAll('rect.box')].map(b => { const q = b.getBoundingClientRect(); return {id: b.dataset.imageId, label: b.dataset.label, box: [q.x, q.y, q.width, q.height]}; })")
        assert image[2] <= width and all(r["id"] == image_id for r in rects)
        want = [(r["LabelName"], float(r["XMin"]), float(r["XMax"]), float(r["YMin"]), float(r["YMax"])) for r in source[image_id]]
        assert_on_screen(rects, image, want)
        page.close()


def test_class_and_split_filters_show_exactly_those_images(built: Built, session: Callable[[int], Session]) -> None:
    s = session(WIDTHS[0])
    page = index(s, built)
    ok = set(built.ok)
    boxes, labels = source_boxes(ok), positive_labels(ok)
    has: dict[str, set[str]] = collections.defaultdict(set)
    for i in ok:
        for mid in {r["LabelName"] for r in boxes[i]} | labels[i]:
            has[mid].add(i)
    by_boxes = collections.Counter(r["LabelName"] for rs in boxes.values() for r in rs)
    common = max(sorted(has), key=lambda m: len(has[m]))
    label_only = next(m for m in sorted(has) if m not in by_boxes)
    with open(DESCRIPTIONS, newline="", encoding="utf-8") as f:
        wheel = next(m for m, n in csv.reader(f) if n == "Wheel")
    assert len(has[common]) > PAGE_SIZE  # its images span more than one page
    for mid in (common, label_only, wheel):
        before = ticket(page)
        page.select_option("#class", page.locator(f'#class option[data-mid="{mid}"]').get_attribute("value"))
        wait_render(page, before)
        tiles = every_page(page)
        assert sorted(t["id"] for t in tiles) == sorted(has[mid]), mid
    # With a split as well: the intersection.
    before = ticket(page)
    page.select_option("#split", label=f"test ({len(built.test_split & ok)})")
    wait_render(page, before)
    assert sorted(t["id"] for t in every_page(page)) == sorted(has[wheel] & built.test_split)
    before = ticket(page)
    page.select_option("#class", "")
    wait_render(page, before)
    assert sorted(t["id"] for t in every_page(page)) == sorted(built.test_split & ok)


def _table(page: Any, key: str) -> dict[str, list[str]]:
    return page.evaluate(  # type: ignore[no-any-return]
        f"Object.fromEntries([...document.querySelectorAll('#table-{key} tbody tr')].map(tr => "
        "[tr.dataset.key, [...tr.querySelectorAll('td.num')].map(td => td.textContent)]))"
    )


def _bucket(v: float, edges: list[float], labels: list[str]) -> str:
    return next(lab for edge, lab in reversed(list(zip(edges, labels, strict=True))) if v >= edge)


def test_statistics_tables_equal_independent_counts(built: Built, session: Callable[[int], Session]) -> None:
    s = session(WIDTHS[0])
    page = s.open((built.gallery / "stats.html").as_uri())
    ok = set(built.ok)
    # Outcome statuses, from the journal's rows, and its bad rows (kept apart: they may have no id).
    want_status = collections.Counter(st for st, _, _ in journal_rows(built.out).values())
    for path in (built.out / ".oidownload").glob("journal-*.sqlite"):
        conn = sqlite3.connect(path)
        want_status["bad_row"] += conn.execute("SELECT count(*) FROM bad_rows").fetchone()[0]
        conn.close()
    assert want_status["bad_row"] == 1 and want_status["http_4xx"] == want_status["corrupt"] == 1
    assert {k: int(v[0]) for k, v in _table(page, "status").items()} == dict(want_status)
    assert {k: int(v[0]) for k, v in _table(page, "source").items()} == {"original": len(ok)}
    # Class frequency: boxes per class, images with a box or a positive label.
    boxes, labels = source_boxes(ok), positive_labels(ok)
    want_boxes = collections.Counter(r["LabelName"] for rs in boxes.values() for r in rs)
    want_images = collections.Counter(m for i in ok for m in {r["LabelName"] for r in boxes[i]} | labels[i])
    got = _table(page, "classes")
    assert set(got) == set(want_images)
    assert all(int(got[m][0]) == want_boxes[m] and int(got[m][1]) == want_images[m] for m in got)
    # Boxes per image, box areas (raw frame: the written frame is the stored one).
    per_image = collections.Counter(
        str(n) if n <= 10 else "11-20" if n <= 20 else "21-50" if n <= 50 else "51+" for n in (len(boxes[i]) for i in ok))
    got = _table(page, "boxes-per-image")
    assert {k: int(v[0]) for k, v in got.items() if int(v[0])} == dict(per_image)
    edges = [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75]
    names = ["< 0.1%", "0.1-1%", "1-5%", "5-10%", "10-25%", "25-50%", "50-75%", "≥ 75%"]
    areas = collections.Counter(
        _bucket((float(r["XMax"]) - float(r["XMin"])) * (float(r["YMax"]) - float(r["YMin"])), edges, names)
        for rs in boxes.values() for r in rs)
    assert {k: int(v[0]) for k, v in _table(page, "box-area").items() if int(v[0])} == dict(areas)
    # Image sizes, from the written files.
    sizes = collections.Counter(written_size(built.out, i) for i in ok)
    assert {k: int(v[0]) for k, v in _table(page, "sizes").items()} == {f"{w}x{h}": n for (w, h), n in sizes.items()}
    sides = collections.Counter(
        _bucket(max(w, h), [0, 128, 256, 512, 640, 1024, 2048],
                ["< 128", "128-255", "256-511", "512-639", "640-1023", "1024-2047", "≥ 2048"])
        for (w, h) in (written_size(built.out, i) for i in ok))
    assert {k: int(v[0]) for k, v in _table(page, "image-side").items() if int(v[0])} == dict(sides)
    # Each chart draws the numbers of its table: one bar per row and series, its count in a <title>.
    titles = page.evaluate("[...document.querySelectorAll('#status svg rect title')].map(t => t.textContent)")
    assert sorted(titles) == sorted(f"{k}: {n} rows" for k, n in want_status.items())
    shot = artifacts()
    if shot:
        page.screenshot(path=str(shot / "gallery-stats.png"), full_page=False)


def test_hostile_text_stays_text(built: Built, session: Callable[[int], Session]) -> None:
    s = session(WIDTHS[0])
    page = s.open((built.gallery / "images" / built.hostile[:3] / f"{built.hostile}.html").as_uri())
    assert page.locator("dd.author").inner_text() == HOSTILE_AUTHOR
    assert page.locator("dd.title").inner_text() == HOSTILE_TITLE
    assert page.locator("h1").inner_text() == HOSTILE_TITLE
    assert page.locator("dd.author a").count() == 0  # a javascript: profile URL is no link
    assert page.evaluate("document.querySelectorAll('script, img, b').length") == 0
    assert page.locator("dd.landing a").get_attribute("href").startswith("https://www.flickr.com/photos/")
    for where in (page, index(s, built), s.open((built.gallery / "stats.html").as_uri())):
        assert where.evaluate("window.pwned") is None
        assert where.evaluate("document.querySelectorAll('b, img').length") == 0
    grid = index(s, built)
    assert any(o.strip().startswith(HOSTILE_CLASS) for o in grid.locator("#class option").all_inner_texts())
    assert any(HOSTILE_CLASS in c for t in every_page(grid) for c in t["chips"])


def test_upright_turns_and_fill_crops(tmp_path: Path, origin: Callable[[Corpus], Origin], session: Callable[[int], Session]) -> None:
    boxed = {r["ImageID"] for r in rows_of(BOXES_CSV)}
    ids = [r["ImageID"] for r in rows_of(VAL / "images.csv") if r["ImageID"] in boxed][40:48]
    corpus = Corpus.generate(0, mix="tiny", seed=43, ids=ids, subset="validation")
    turns = {}
    for k, image_id in enumerate(ids):
        turns[image_id] = (0, 90, 180, 270)[k % 4]
        corpus.entries[image_id].rotation = f"{turns[image_id]}.0"
    server = origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", server.base_url, rotation_column=True)
    out = tmp_path / "out"
    state = tmp_path / "state"  # the journal apart from the output
    res = run_cli("download", manifest, "-o", out, "--orientation", "upright", "--resize", "120",
                  "--resize-mode", "fill", "--progress", "none", "--state-dir", state)
    assert res.returncode == 0, res.stderr
    res = run_cli("gallery", out, "-o", tmp_path / "g", "--annotations", BOXES_CSV, "--progress", "none",
                  "--state-dir", state)
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "coco", "--annotations", BOXES_CSV, "--state-dir", state)
    assert res.returncode == 0, res.stderr
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    # Independently: the centre square of the stored frame, then the turn (degrees counter-clockwise).
    turn = {0: lambda x, y: (x, y), 90: lambda x, y: (y, 1 - x), 180: lambda x, y: (1 - x, 1 - y), 270: lambda x, y: (1 - y, x)}
    want: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for image_id, rows in source_boxes(set(ids)).items():
        with Image.open(io.BytesIO(corpus.original(image_id))) as im:
            w0, h0 = im.size
        side = min(w0, h0)
        cx, cy = (w0 - side) / 2 / w0, (h0 - side) / 2 / h0
        sx, sy = side / w0, side / h0
        want[image_id] = []
        for r in rows:
            x0, x1 = (min(1.0, max(0.0, (float(r[k]) - cx) / sx)) for k in ("XMin", "XMax"))
            y0, y1 = (min(1.0, max(0.0, (float(r[k]) - cy) / sy)) for k in ("YMin", "YMax"))
            if x1 <= x0 or y1 <= y0:
                continue  # cut away by the crop
            (ax, ay), (bx, by) = turn[turns[image_id]](x0, y0), turn[turns[image_id]](x1, y1)
            want[image_id].append((r["LabelName"], min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)))
    assert sum(map(len, want.values())) == len(coco["annotations"]) > 0
    assert len(want) == len(ids) and {t for t in turns.values()} == {0, 90, 180, 270}
    for width in WIDTHS:
        s = session(width)
        page = s.open((tmp_path / "g" / "index.html").as_uri())
        wait_render(page, None)
        tiles = every_page(page)
        assert sorted(t["id"] for t in tiles) == sorted(ids)
        for t in tiles:
            assert written_size(out, t["id"]) == (120, 120)
            assert_on_screen(t["rects"], t["image"], want[t["id"]])
        if width == WIDTHS[0] and artifacts():
            page.screenshot(path=str(artifacts() / "gallery-upright-fill.png"))  # type: ignore[operator]


def test_screenshot_for_ci(built: Built, session: Callable[[int], Session]) -> None:
    """The index and an image page as CI artifacts, and a check that the thumbnails drew."""
    s = session(WIDTHS[0])
    page = index(s, built)
    page.wait_for_function("[...document.querySelectorAll('#grid svg image')].every(i => i.getBBox().width > 0)")
    loaded = page.evaluate("""Promise.all([...document.querySelectorAll('#grid svg image')].map(i =>
        new Promise(res => { const p = new Image(); p.onload = () => res(p.naturalWidth); p.onerror = () => res(0); p.src = i.href.baseVal; })))""")
    assert len(loaded) == PAGE_SIZE and all(w > 0 for w in loaded)
    shot = artifacts()
    if shot:
        page.screenshot(path=str(shot / "gallery-index.png"))
        image_page = s.open((built.gallery / "images" / built.ok[0][:3] / f"{built.ok[0]}.html").as_uri())
        image_page.screenshot(path=str(shot / "gallery-image.png"), full_page=True)


def test_gallery_refuses_a_folder_that_is_not_a_gallery(built: Built, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    res = run_cli("gallery", built.out, "-o", other)
    assert res.returncode == 1 and "not empty" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    res = run_cli("gallery", built.out / "nothing-here")
    assert res.returncode == 1 and "has no journal" in res.stderr and "Traceback" not in res.stderr
    # The image lists have moved: the gallery is made, without attribution, and says so.
    res = run_cli("gallery", built.out, "-o", tmp_path / "g", "--images", tmp_path / "gone.csv", "--progress", "none")
    assert res.returncode == 0 and "no attribution from" in res.stderr and "no such file" in res.stderr
    page = (tmp_path / "g" / "images" / built.ok[0][:3] / f"{built.ok[0]}.html").read_text()
    assert "Not found in the image lists" in page


def test_full_images_are_hard_links_and_symlinks_in_out_are_refused(built: Built, tmp_path: Path) -> None:
    image_id = built.ok[0]
    (written,) = built.out.glob(f"*/{image_id[:3]}/{image_id}.jpg")
    shown = built.gallery / "images" / image_id[:3] / f"{image_id}.jpg"
    assert os.stat(shown).st_ino == os.stat(written).st_ino and shown.read_bytes() == written.read_bytes()
    # An image swapped for a symlink to a file outside OUT is neither linked nor copied.
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(written.read_bytes())
    victim = built.ok[1]
    (path,) = built.out.glob(f"*/{victim[:3]}/{victim}.jpg")
    saved = tmp_path / "saved.jpg"
    os.replace(path, saved)
    try:
        path.symlink_to(secret)
        res = run_cli("gallery", built.out, "-o", tmp_path / "g", "--progress", "none")
    finally:
        path.unlink()
        os.replace(saved, path)
    assert res.returncode == 0 and f"{victim}: cannot read the image" in res.stderr, res.stderr
    folder = tmp_path / "g" / "images" / victim[:3]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(victim)) == [f"{victim}.html"]
    assert os.stat(secret).st_nlink == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_webdataset_and_s3_outputs(tmp_path: Path, origin: Callable[[Corpus], Origin], session: Callable[[int], Session],
                                   s3: Any, where: str) -> None:
    """Images read back through the output's reader (tar members, a bucket): every tile's
    thumbnail, every box of the COCO export, the full-size image equal to the sample's."""
    import tarfile

    boxed = {r["ImageID"] for r in rows_of(BOXES_CSV)}
    ids = [r["ImageID"] for r in rows_of(VAL / "images.csv") if r["ImageID"] in boxed][50:62]
    corpus = Corpus.generate(0, mix="tiny", seed=47, ids=ids, subset="validation")
    server = origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", server.base_url)
    env = dict(s3.env) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    if where == "s3":
        s3.make_bucket("gallery-wds")
        out = "s3://gallery-wds/v"
    else:
        out = str(tmp_path / "out")
    res = run_cli("download", manifest, "-o", out, "--output-format", "webdataset", "--shard-size", "5",
                  "--resize", "100", "--progress", "none", env=env)
    assert res.returncode == 0, res.stderr
    gallery = tmp_path / "g"
    if where == "s3":  # no local OUT to put the gallery in
        res = run_cli("gallery", out, "--annotations", BOXES_CSV, env=env)
        assert res.returncode == 2 and "-o" in res.stderr
    res = run_cli("gallery", out, "-o", gallery, "--annotations", BOXES_CSV, "--progress", "none", env=env)
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "coco", "--annotations", BOXES_CSV, "-d", tmp_path / "ann", env=env)
    assert res.returncode == 0, res.stderr
    coco = json.loads((tmp_path / "ann" / "coco.json").read_text())
    s = session(WIDTHS[0])
    page = s.open((gallery / "index.html").as_uri())
    wait_render(page, None)
    tiles = page.evaluate(GRID_JS)
    assert sorted(t["id"] for t in tiles) == sorted(ids)
    assert sum(len(t["rects"]) for t in tiles) == len(coco["annotations"]) > 0
    if where == "local":  # the full-size copy is the sample's image member, byte for byte
        members: dict[str, bytes] = {}
        for tar in Path(out).rglob("*.tar"):
            with tarfile.open(tar) as tf:
                for m in tf.getmembers():
                    if m.name.endswith(".jpg"):
                        members[m.name.split(".")[0]] = tf.extractfile(m).read()  # type: ignore[union-attr]
        for i in ids:
            assert (gallery / "images" / i[:3] / f"{i}.jpg").read_bytes() == members[i]
    loaded = page.evaluate("""Promise.all([...document.querySelectorAll('#grid svg image')].map(i =>
        new Promise(res => { const p = new Image(); p.onload = () => res(p.naturalWidth); p.onerror = () => res(0); p.src = i.href.baseVal; })))""")
    assert len(loaded) == len(ids) and all(w > 0 for w in loaded)


# -- the README's views: label frequency per split, the hierarchy page -------------------------


def human_label_counts(ids: set[str], test_split: set[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """split -> MID -> (positive, negative) human-verified labels, from the label CSV and the
    download's manifest subsets (every ok image is validation but the test ones)."""
    counts: dict[str, dict[str, list[int]]] = {}
    for r in rows_of(LABELS_CSV):
        if r["ImageID"] not in ids or r["Source"] == "machine" or r["Confidence"] not in ("0", "1"):
            continue
        split = "test" if r["ImageID"] in test_split else "validation"
        pair = counts.setdefault(split, {}).setdefault(r["LabelName"], [0, 0])
        pair[0 if r["Confidence"] == "1" else 1] += 1
    return {s: {m: (p, n) for m, (p, n) in per.items()} for s, per in counts.items()}


def test_label_frequency_per_split_equals_the_label_rows(built: Built, session: Callable[[int], Session]) -> None:
    want = human_label_counts(set(built.ok), built.test_split)
    assert set(want) == {"validation", "test"}
    s = session(WIDTHS[0])
    page = s.open((built.gallery / "stats.html").as_uri())
    figures = page.evaluate("""[...document.querySelectorAll('section.figure')].filter(f => f.id.startsWith('labels-'))
        .map(f => ({key: f.id, title: f.querySelector('h2').textContent,
                    bars: [...f.querySelectorAll('svg rect')].filter(r => r.querySelector('title'))
                          .map(r => [r.getAttribute('fill'), r.querySelector('title').textContent]),
                    order: [...f.querySelectorAll('tbody tr')].map(tr => tr.dataset.key)}))""")
    assert sorted(f["title"] for f in figures) == ["Label frequency: test", "Label frequency: validation"]
    for f in figures:
        split = f["title"].rsplit(": ", 1)[1]
        got = {k: tuple(int(n) for n in v) for k, v in _table(page, f["key"]).items()}
        assert got == want[split] and len(got) > 5
        # Ordered by positives, then negatives; one green and one red bar per class drawn.
        assert [tuple(-n for n in got[m]) for m in f["order"]] == sorted(tuple(-n for n in got[m]) for m in f["order"])
        drawn = min(100, len(got))
        assert len(f["bars"]) == 2 * drawn
        assert [fill for fill, _ in f["bars"]] == ["#3a9a45", "#d0413a"] * drawn
        counts = [int(t.rsplit(": ", 1)[1].split()[0].replace(",", "")) for _, t in f["bars"]]
        assert counts == [n for m in f["order"][:drawn] for n in got[m]]


def hierarchy_json() -> tuple[set[str], set[tuple[str, str]], int]:
    """Every MID of the fixture hierarchy, its Part edges, and its lines (a class under
    several parents counts under each), read with json."""
    doc = json.loads(HIERARCHY.read_text())
    mids: set[str] = set()
    parts: set[tuple[str, str]] = set()
    lines = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        lines += 1
        mids.add(node["LabelName"])
        parts |= {(node["LabelName"], k["LabelName"]) for k in node.get("Part", [])}
        stack += node.get("Subcategory", []) + node.get("Part", [])
    return mids, parts, lines


NODES_JS = """[...document.querySelectorAll('#tree li.node')].map(li => ({
  mid: li.dataset.mid, images: Number(li.dataset.images), boxes: Number(li.dataset.boxes),
  part: li.classList.contains('part') && !!li.querySelector(':scope > .badge, :scope > details > summary > .badge'),
  parent: li.parentElement.closest('li.node')?.dataset.mid ?? null,
  link: (li.querySelector(':scope > .cls a, :scope > details > summary > .cls a') || {}).href || null}))"""


def hierarchy_nodes(s: Session, gallery: Path) -> list[dict[str, Any]]:
    page = s.open((gallery / "hierarchy.html").as_uri())
    return page.evaluate(NODES_JS)  # type: ignore[no-any-return]


def test_hierarchy_page_counts_parts_and_links(built: Built, session: Callable[[int], Session]) -> None:
    mids, parts, lines = hierarchy_json()
    ok = set(built.ok)
    boxes, labels = source_boxes(ok), positive_labels(ok)
    n_boxes = collections.Counter(r["LabelName"] for rs in boxes.values() for r in rs)
    has: dict[str, set[str]] = collections.defaultdict(set)
    for i in ok:
        for mid in {r["LabelName"] for r in boxes[i]} | labels[i]:
            has[mid].add(i)
    s = session(WIDTHS[0])
    nodes = hierarchy_nodes(s, built.gallery)
    assert len(nodes) == lines and {n["mid"] for n in nodes} == mids
    assert {(n["parent"], n["mid"]) for n in nodes if n["part"]} == parts
    for n in nodes:
        assert (n["images"], n["boxes"]) == (len(has[n["mid"]]), n_boxes[n["mid"]]), n["mid"]
        assert (n["link"] is not None) == bool(has[n["mid"]])
    present = [n for n in nodes if n["images"]]
    assert len({n["mid"] for n in present}) >= 5
    # The navigation of the index and the statistics pages leads here.
    for name in ("index.html", "stats.html"):
        page = s.open((built.gallery / name).as_uri())
        assert page.locator("header nav a", has_text="Hierarchy").get_attribute("href") == "hierarchy.html"
    # Clicking a class opens the grid filtered to it: exactly the images that carry it.
    page = s.open((built.gallery / "hierarchy.html").as_uri())
    mid = max(sorted({n["mid"] for n in present}), key=lambda m: len(has[m]))
    page.locator(f'li.node[data-mid="{mid}"] .cls a').first.click()
    page.wait_for_url("**/index.html#class=*")
    wait_render(page, None)
    assert page.locator("#class option:checked").get_attribute("data-mid") == mid
    assert sorted(t["id"] for t in every_page(page)) == sorted(has[mid])
    # The hostile class name stays text here too.
    page = s.open((built.gallery / "hierarchy.html").as_uri())
    assert page.evaluate("document.querySelectorAll('b, img, script').length") == 0
    assert HOSTILE_CLASS in page.locator("#tree").inner_text()


def test_hierarchy_page_from_the_database_equals_the_file(built: Built, session: Callable[[int], Session],
                                                         tmp_path: Path) -> None:
    db = tmp_path / "oi.sqlite"
    res = run_cli("db", "load", HIERARCHY, "--db", db)
    assert res.returncode == 0, res.stderr
    res = run_cli("gallery", built.out, "-o", tmp_path / "g", "--db", db, "--progress", "none")
    assert res.returncode == 0, res.stderr
    s = session(WIDTHS[0])
    key = lambda n: (n["parent"] or "", n["mid"], n["images"], n["boxes"], n["part"], (n["link"] or "").rsplit("/", 1)[-1])  # noqa: E731
    assert sorted(map(key, hierarchy_nodes(s, tmp_path / "g"))) == sorted(map(key, hierarchy_nodes(s, built.gallery)))
    # A database without a hierarchy: said, no traceback, nothing half-made.
    empty = tmp_path / "empty.sqlite"
    res = run_cli("db", "load", V3 / "class-descriptions.csv", "--db", empty)
    assert res.returncode == 0, res.stderr
    res = run_cli("gallery", built.out, "-o", tmp_path / "g2", "--db", empty, "--progress", "none")
    assert res.returncode == 2 and "holds no class hierarchy" in res.stderr and "Traceback" not in res.stderr
    # Without a tree, no page and no link to one.
    res = run_cli("gallery", built.out, "-o", tmp_path / "g", "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "g" / "hierarchy.html").exists()
    assert "hierarchy.html" not in (tmp_path / "g" / "stats.html").read_text()
# -- narratives (issue 23) ------------------------------------------------------------------------

HOSTILE_CAPTION = '<img src=x onerror="window.pwned = 5"> a dog on the grass'


def test_captions_are_shown_and_the_word_filter_narrows_the_grid(built: Built, tmp_path: Path,
                                                                 session: Callable[[int], Session]) -> None:
    """Captions from a narratives file: under the image on its page (as text), searchable
    on the grid by whole words, and their lengths on the statistics page."""
    captions = {
        built.ok[0]: ["In this image we can see a dog on the grass.", "A DOG and a cat."],
        built.ok[1]: [HOSTILE_CAPTION],
        built.ok[2]: ["Dogs are not a dog-like word match? They are: dog-like holds dog."],
        built.ok[3]: ["Caf\u00e9 M\u00fcller with a grassy road."],
        built.ok[4]: [""],
    }
    path = tmp_path / "open_images_validation_captions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for image_id, texts in captions.items():
            for k, text in enumerate(texts):
                f.write(json.dumps({"dataset_id": "open_images_validation", "image_id": image_id,
                                    "annotator_id": k + 1, "caption": text}, ensure_ascii=False) + "\n")
    dest = tmp_path / "gallery"
    res = run_cli("gallery", built.out, "-o", dest, "--page-size", PAGE_SIZE, "--annotations", BOXES_CSV,
                  "--annotations", path)
    assert res.returncode == 0, res.stderr

    def said(*words: str) -> set[str]:  # independent: a split into words, any case
        import re
        return {i for i, texts in captions.items()
                if any(all(w in re.findall(r"\w+", t.lower()) for w in words) for t in texts)}

    s = session(WIDTHS[0])
    page = s.open((dest / "index.html").as_uri())
    wait_render(page, None)
    assert len(every_page(page)) == len(built.ok)
    for query, words in (("dog", ("dog",)), ("DOG grass", ("dog", "grass")), ("caf\u00e9", ("caf\u00e9",)),
                         ("grass", ("grass",)), ("nothing-here", ("nothing", "here"))):
        before = ticket(page)
        page.fill("#word", query)
        page.press("#word", "Enter")
        wait_render(page, before)
        assert sorted(t["id"] for t in every_page(page)) == sorted(said(*words)), query
        assert said(*words) or page.locator("#count").inner_text() == "0 images"
    assert said("dog") == {built.ok[0], built.ok[1], built.ok[2]} and said("grass") == {built.ok[0], built.ok[1]}
    # The caption under the image on its page, as text.
    for image_id, texts in captions.items():
        image = s.open((dest / "images" / image_id[:3] / f"{image_id}.html").as_uri())
        shown = image.locator("blockquote.caption").all_inner_texts()
        assert shown == [t or "(an empty caption)" for t in texts]
        assert image.evaluate("window.pwned") is None and image.evaluate("document.querySelectorAll('img').length") == 0
    # Caption lengths on the statistics page.
    stats = s.open((dest / "stats.html").as_uri())
    lengths = collections.Counter(
        _bucket(len(t.split()), [0, 1, 10, 20, 30, 40, 60, 80, 120],
                ["0 (empty)", "1-9", "10-19", "20-29", "30-39", "40-59", "60-79", "80-119", "\u2265 120"])
        for texts in captions.values() for t in texts)
    assert {k: int(v[0]) for k, v in _table(stats, "caption-length").items() if int(v[0])} == dict(lengths)
# -- masks (issue 22) ------------------------------------------------------------------------------
# The gallery of this module's download, built again with segmentation annotations after
# tests/maskdata.py wrote masks into that output: every mask the output holds is drawn as
# a tinted overlay on its tile and its image page (none that it lacks), the overlay's
# pixels are the mask's, the toggles hide them, and the statistics count them per class.

MASKS_JS = """() => [...document.querySelectorAll('#grid .tile')].map(t => ({
  id: t.dataset.imageId,
  masks: [...t.querySelectorAll('image.mask')].map(m => {
    const r = m.getBoundingClientRect();
    return {id: m.dataset.imageId, label: m.dataset.label, box: m.dataset.boxId, shown: r.width > 0 && r.height > 0,
            href: m.getAttribute('href')};
  })}))"""


def _masked_gallery(built: Built, tmp_path: Path) -> tuple[Masked, Path]:
    subset = {i: next(built.out.glob(f"*/{i[:3]}/{i}.jpg")).parent.parent.name for i in built.ok}
    boxes = source_boxes(set(built.ok))
    picks = [(i, subset[i], boxes[i]) for i in built.ok if boxes[i]][:10]
    masked = write_masks(built.out, picks, tmp_path)
    dest = tmp_path / "gallery"
    res = run_cli("gallery", built.out, "-o", dest, "--annotations", BOXES_CSV, "--annotations", masked.csv,
                  "--class-descriptions", DESCRIPTIONS, "--page-size", 6, "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "1 mask(s) named by the segmentation rows are not in the output" in res.stderr
    assert f", {len(masked.masks)} masks" in res.stderr
    return masked, dest


def test_a_mask_is_drawn_for_every_mask(built: Built, session: Callable[[int], Session], tmp_path: Path) -> None:
    import numpy as np

    masked, dest = _masked_gallery(built, tmp_path)
    s = session(1280)
    page = s.open((dest / "index.html").as_uri())
    wait_render(page, None)
    tiles: list[dict[str, Any]] = []
    while True:
        tiles += page.evaluate(MASKS_JS)
        if page.locator("#next").is_disabled():
            break
        before = page.evaluate("document.body.dataset.ready")
        page.click("#next")
        wait_render(page, before)
    drawn = [m for t in tiles for m in t["masks"]]
    assert sorted(m["box"] for m in drawn) == sorted(masked.masks)  # each once; the missing one never
    assert all(m["id"] == t["id"] for t in tiles for m in t["masks"]) and all(m["shown"] for m in drawn)
    for m in drawn:
        assert m["label"] == masked.label_of(m["box"]) and m["id"] == masked.image_of(m["box"])
        # The overlay's opaque pixels are the mask's pixels.
        with Image.open(dest / m["href"]) as im:
            alpha = np.array(im.convert("RGBA"))[:, :, 3] > 0
        assert (alpha == (np.array(masked.masks[m["box"]]) > 0)).all()
    art = artifacts()
    if art is not None:  # what the masks look like, for a person to check in CI's artifacts
        page.evaluate("location.hash = ''")
        page.screenshot(path=str(art / "gallery-masks.png"), full_page=True)
    page.uncheck("#masks")
    assert page.evaluate("[...document.querySelectorAll('#grid image.mask')].every(m => "
                         "m.getBoundingClientRect().width === 0)")
    # The image pages (no script there): the same masks, and a checkbox that hides them.
    per_image = collections.Counter(masked.image_of(b) for b in masked.masks)
    for image_id, n in per_image.items():
        p = s.open((dest / "images" / image_id[:3] / f"{image_id}.html").as_uri())
        boxes = p.evaluate("[...document.querySelectorAll('figure.full image.mask')].map(m => m.dataset.boxId)")
        assert sorted(boxes) == sorted(b for b in masked.masks if masked.image_of(b) == image_id) and len(boxes) == n
        assert p.evaluate("[...document.querySelectorAll('figure.full image.mask')].every(m => "
                          "m.getBoundingClientRect().width > 0)")
        if art is not None and image_id == masked.image_of(masked.two_pieces):
            p.screenshot(path=str(art / "gallery-masks-page.png"), full_page=True)
        p.uncheck("#show-masks")
        assert p.evaluate("[...document.querySelectorAll('figure.full image.mask')].every(m => "
                          "m.getBoundingClientRect().width === 0)")
    # Statistics: masks per class, counted here from what was written.
    stats = s.open((dest / "stats.html").as_uri())
    rows = stats.evaluate("""[...document.querySelectorAll('#table-masks tbody tr')].map(r =>
        [r.dataset.key, ...[...r.querySelectorAll('td.num')].map(c => Number(c.textContent))])""")
    want = collections.Counter(masked.label_of(b) for b in masked.masks)
    images = {mid: len({masked.image_of(b) for b in masked.masks if masked.label_of(b) == mid}) for mid in want}
    assert {k: (n, i) for k, n, i in rows} == {mid: (want[mid], images[mid]) for mid in want}
