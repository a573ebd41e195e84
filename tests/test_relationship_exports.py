"""Relationships and points (issue 23) in the written frame: after `--resize-mode fill`
and each upright turn, the two boxes of every exported relationship (COCO, CSV, and HF
as `datasets` loads it) and every point equal the CSV's coordinates moved independently
(centre square, then the turn) times the written size, within 0.5 px; a point the crop
cut away is dropped and counted; the COCO subject/object ids resolve to annotations of
the right classes; --db (SQLite and a real PostgreSQL) exports the same as the CSVs; and
a download into webdataset shards carries in each sample's JSON exactly the HF export's
relationships and points of that image (read back with the webdataset library), kept
by --class and --predicate as `annotations` keeps them.

The relationship rows are built on real box rows of the real validation images (so
most sides match a box annotation), plus one whose boxes match none.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import V3, class_names, load_with_datasets, require, rows_of, run_cli
from tests.test_gallery import Session, chromium, session  # noqa: F401 -- the browser fixtures

VAL = V3 / "validation"
BOXES_CSV = VAL / "annotations-human-bbox.csv"
DESCRIPTIONS = V3 / "class-descriptions.csv"
WOOD = "/m/083vt"
SIZE = 120
TURNS: dict[int, Callable[[float, float], tuple[float, float]]] = {
    0: lambda x, y: (x, y), 90: lambda x, y: (y, 1 - x), 180: lambda x, y: (1 - x, 1 - y), 270: lambda x, y: (1 - y, x)}
POINT_HEADER = ["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                "TextLabel"]


class Made:
    def __init__(self, out: Path, state: Path, vrd: Path, points: Path, turns: dict[str, int],
                 sizes: dict[str, tuple[int, int]], corpus: Corpus) -> None:
        self.out, self.state, self.vrd, self.points, self.turns, self.sizes = out, state, vrd, points, turns, sizes
        self.corpus = corpus  # served again for the downloads into shards

    def move(self, image_id: str, x: float, y: float) -> tuple[float, float]:
        """Independently: the centre square of the stored frame, then the turn; normalised."""
        w0, h0 = self.sizes[image_id]
        side = min(w0, h0)
        cx, cy, sx, sy = (w0 - side) / 2 / w0, (h0 - side) / 2 / h0, side / w0, side / h0
        return TURNS[self.turns[image_id]]((x - cx) / sx, (y - cy) / sy)

    def box(self, image_id: str, b: list[float]) -> tuple[float, float, float, float] | None:
        """[x, y, w, h] in written pixels, or None when the crop cut it away."""
        w0, h0 = self.sizes[image_id]
        side = min(w0, h0)
        cx, cy, sx, sy = (w0 - side) / 2 / w0, (h0 - side) / 2 / h0, side / w0, side / h0
        x0, x1 = (min(1.0, max(0.0, (v - cx) / sx)) for v in b[:2])
        y0, y1 = (min(1.0, max(0.0, (v - cy) / sy)) for v in b[2:])
        if x1 <= x0 or y1 <= y0:
            return None
        turn = TURNS[self.turns[image_id]]
        (ax, ay), (bx, by) = turn(x0, y0), turn(x1, y1)
        return min(ax, bx) * SIZE, min(ay, by) * SIZE, abs(bx - ax) * SIZE, abs(by - ay) * SIZE


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, synth_cache: Path) -> Made:
    tmp = tmp_path_factory.mktemp("relexports")
    boxes = rows_of(BOXES_CSV)
    boxed = sorted({r["ImageID"] for r in boxes})
    ids = boxed[10:18]
    corpus = Corpus.generate(0, mix="tiny", seed=61, ids=ids, subset="validation")
    turns = {}
    for k, image_id in enumerate(ids):
        turns[image_id] = (0, 90, 180, 270)[k % 4]
        corpus.entries[image_id].rotation = f"{turns[image_id]}.0"
    out, state = tmp / "out", tmp / "state"
    with OriginThread(Origin(corpus)) as origin:
        manifest = corpus.write_manifest(tmp / "images.csv", origin.base_url, rotation_column=True)
        res = run_cli("download", manifest, "-o", out, "--orientation", "upright", "--resize", str(SIZE),
                      "--resize-mode", "fill", "--progress", "none", "--state-dir", state)
    assert res.returncode == 0, res.stderr
    sizes = {}
    for image_id in ids:
        with Image.open(io.BytesIO(corpus.original(image_id))) as im:
            sizes[image_id] = im.size
    rng = random.Random(3)
    vrd, points = tmp / "oidv6-validation-annotations-vrd.csv", tmp / "oidv7-val-annotations-point-labels.csv"
    with open(vrd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1", "XMin2", "XMax2",
                    "YMin2", "YMax2", "RelationshipLabel"])
        for image_id in ids:
            mine = [r for r in boxes if r["ImageID"] == image_id]
            a, b = mine[0], mine[-1]
            qa, qb = ([r[c] for c in ("XMin", "XMax", "YMin", "YMax")] for r in (a, b))
            w.writerow([image_id, a["LabelName"], b["LabelName"], *qa, *qb, "at"])
            w.writerow([image_id, a["LabelName"], WOOD, *qa, *qa, "is"])
        # one whose boxes match no box annotation: the export adds them
        w.writerow([ids[0], "/m/04yx4", "/m/0342h", "0.3", "0.6", "0.3", "0.7", "0.4", "0.5", "0.45", "0.55", "plays"])
    with open(points, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(POINT_HEADER)
        for image_id in ids:
            for _ in range(6):  # some near the edges, which a fill crop cuts away
                w.writerow([image_id, f"{rng.random():.5f}", f"{rng.random():.5f}", "/m/0342h",
                            rng.choice(["yes", "no", "unsure"]), "ih", rng.randint(0, 3), rng.randint(0, 3), 0, ""])
    return Made(out, state, vrd, points, turns, sizes, corpus)


def _export(made: Made, fmt: str, dest: Path, *source: object) -> Path:
    res = run_cli("annotations", made.out, "--format", fmt, "--state-dir", made.state, "-d", dest,
                  "--class-descriptions", DESCRIPTIONS, *source)
    assert res.returncode == 0, res.stderr
    return dest


def csv_sources(made: Made) -> list[object]:
    return ["--annotations", BOXES_CSV, "--annotations", made.vrd, "--annotations", made.points]


Rel = tuple[str, str, str, str, tuple[float, ...], tuple[float, ...]]


def expected_relationships(made: Made) -> list[Rel]:
    out: list[Rel] = []
    for r in rows_of(made.vrd):
        q1, q2 = ([float(r[f"{c}{k}"]) for c in ("XMin", "XMax", "YMin", "YMax")] for k in (1, 2))
        b1, b2 = made.box(r["ImageID"], q1), made.box(r["ImageID"], q2)
        if b1 is not None and b2 is not None:
            out.append((r["ImageID"], r["LabelName1"], r["LabelName2"], r["RelationshipLabel"], b1, b2))
    return out


def expected_points(made: Made) -> list[tuple[str, str, float, float]]:
    out = []
    for r in rows_of(made.points):
        x, y = made.move(r["ImageId"], float(r["X"]), float(r["Y"]))
        if 0 <= x <= 1 and 0 <= y <= 1:
            out.append((r["ImageId"], r["EstimatedYesNo"], x * SIZE, y * SIZE))
    return out


def close(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float], tol: float = 0.5) -> bool:
    return len(a) == len(b) and all(abs(u - v) <= tol for u, v in zip(a, b, strict=True))


def coco_relationships(path: Path) -> tuple[list[tuple[str, str, str, str, list[float], list[float]]],
                                            list[tuple[str, str, float, float]]]:
    """Through pycocotools: each relationship's two annotations, and the points."""
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    doc = json.loads(path.read_text())
    images = {i["id"]: i["open_images_id"] for i in doc["images"]}
    mids = {c["id"]: c["freebase_id"] for c in doc["categories"]}
    rels = []
    for r in doc["relationships"]:
        s, o = coco.loadAnns([r["subject_id"], r["object_id"]])
        assert s["image_id"] == o["image_id"] == r["image_id"]
        obj = r["attribute_mid"] if r["predicate"] == "is" else mids[o["category_id"]]
        if r["predicate"] == "is":
            assert r["object_id"] == r["subject_id"] and r["attribute"] == "Wood"
        rels.append((images[r["image_id"]], mids[s["category_id"]], obj, r["predicate"], s["bbox"], o["bbox"]))
    points = [(images[a["image_id"]], a["answer"], *a["point"]) for a in coco.loadAnns(coco.getAnnIds())
              if "point" in a]
    assert {p["name"] for p in doc["predicates"]} == {r[3] for r in rels}
    return rels, points


def _same_relationships(got: list[tuple[str, str, str, str, list[float], list[float]]],
                        want: list[tuple[str, str, str, str, tuple[float, ...], tuple[float, ...]]]) -> None:
    assert len(got) == len(want) > 0
    unmatched = list(want)
    for g in got:
        hit = next(w for w in unmatched if w[:4] == g[:4] and close(g[4], w[4]) and close(g[5], w[5]))
        unmatched.remove(hit)


def _same_points(got: list[tuple[str, str, float, float]], want: list[tuple[str, str, float, float]]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(sorted(got), sorted(want), strict=True):
        assert g[:2] == w[:2] and close(g[2:], w[2:]), (g, w)


def test_coco_relationships_and_points_in_the_written_frame(made: Made, tmp_path: Path) -> None:
    assert set(made.turns.values()) == {0, 90, 180, 270}
    dest = _export(made, "coco", tmp_path / "coco", *csv_sources(made))
    rels, points = coco_relationships(dest / "coco.json")
    _same_relationships(rels, expected_relationships(made))
    want_points = expected_points(made)
    _same_points(points, want_points)
    assert len(want_points) < len(rows_of(made.points))  # the crop cut some away: dropped, not misplaced
    res = run_cli("annotations", made.out, "--format", "csv", "--state-dir", made.state, "-d", tmp_path / "n",
                  *csv_sources(made))
    n_rel = len(expected_relationships(made))
    assert f", {n_rel} relationships, {len(want_points)} points" in res.stderr, res.stderr
    cut = len(rows_of(made.points)) - len(want_points)
    assert f"{made.points.name}: {cut} point(s) cut away by the crop were left out" in res.stderr


def test_csv_rows_in_the_written_frame(made: Made, tmp_path: Path) -> None:
    dest = _export(made, "csv", tmp_path / "csv", *csv_sources(made))
    got = [(r["ImageID"], r["LabelName1"], r["LabelName2"], r["RelationshipLabel"],
            *(made_box(r, k) for k in (1, 2))) for r in rows_of(dest / made.vrd.name)]
    _same_relationships(got, expected_relationships(made))  # type: ignore[arg-type]
    pts = [(r["ImageId"], r["EstimatedYesNo"], float(r["X"]) * SIZE, float(r["Y"]) * SIZE)
           for r in rows_of(dest / made.points.name)]
    _same_points(pts, expected_points(made))


def made_box(r: dict[str, str], k: int) -> list[float]:
    x0, x1, y0, y1 = (float(r[f"{c}{k}"]) for c in ("XMin", "XMax", "YMin", "YMax"))
    return [x0 * SIZE, y0 * SIZE, (x1 - x0) * SIZE, (y1 - y0) * SIZE]


def _db_exports_as_the_csvs(made: Made, db: str, tmp_path: Path) -> None:
    res = run_cli("db", "load", BOXES_CSV, made.vrd, made.points, DESCRIPTIONS, "--db", db)
    assert res.returncode == 0, res.stderr
    from_csv = coco_relationships(_export(made, "coco", tmp_path / "c1", *csv_sources(made)) / "coco.json")
    from_db = coco_relationships(_export(made, "coco", tmp_path / "c2", "--db", db) / "coco.json")
    _same_relationships(from_db[0], [(*r[:4], tuple(r[4]), tuple(r[5])) for r in from_csv[0]])
    _same_points(from_db[1], from_csv[1])


def test_db_sqlite_exports_as_the_csvs(made: Made, tmp_path: Path) -> None:
    _db_exports_as_the_csvs(made, str(tmp_path / "oi.sqlite"), tmp_path)


def test_db_postgresql_exports_as_the_csvs(made: Made, tmp_path: Path, pg_url: str) -> None:
    _db_exports_as_the_csvs(made, pg_url, tmp_path)


def test_names_of_classes_in_coco(made: Made, tmp_path: Path) -> None:
    doc = json.loads((_export(made, "coco", tmp_path / "c", *csv_sources(made)) / "coco.json").read_text())
    names = class_names()
    assert all(c["name"] == names[c["freebase_id"]] for c in doc["categories"])
    added = [a for a in doc["annotations"] if a.get("relationship_box")]
    assert len(added) == 2  # the 'plays' row's two boxes match no box annotation


# -- the gallery ------------------------------------------------------------------------------------

def test_gallery_draws_one_line_per_relationship_and_one_dot_per_point(made: Made, tmp_path: Path,
                                                                       session: Callable[[int], Session]) -> None:  # noqa: F811
    gallery = tmp_path / "g"
    res = run_cli("gallery", made.out, "-o", gallery, "--state-dir", made.state, "--progress", "none",
                  "--class-descriptions", DESCRIPTIONS, "--annotations", BOXES_CSV, "--annotations", made.vrd,
                  "--annotations", made.points)
    assert res.returncode == 0, res.stderr
    rels: dict[str, list[Rel]] = {}
    for r in expected_relationships(made):
        rels.setdefault(r[0], []).append(r)
    points: dict[str, list[tuple[str, str, float, float]]] = {}
    for p in expected_points(made):
        points.setdefault(p[0], []).append(p)
    s = session(640)
    for image_id in made.turns:
        page = s.open((gallery / "images" / image_id[:3] / f"{image_id}.html").as_uri())
        drawn = page.evaluate("""() => {
          const svg = document.querySelector('figure.full svg'), m = svg.viewBox.baseVal;
          return {lines: [...svg.querySelectorAll('line.relline')].map(l =>
                    [l.x1.baseVal.value, l.y1.baseVal.value, l.x2.baseVal.value, l.y2.baseVal.value]),
                  labels: [...svg.querySelectorAll('text.rellabel')].map(t => t.textContent),
                  dots: [...svg.querySelectorAll('circle.point')].map(c =>
                    [c.dataset.answer, c.cx.baseVal.value, c.cy.baseVal.value, getComputedStyle(c).fill]),
                  width: m.width};
        }""")
        want = rels.get(image_id, [])
        assert len(drawn["lines"]) == len(want) == len(drawn["labels"])
        centres = sorted((b1[0] + b1[2] / 2, b1[1] + b1[3] / 2, b2[0] + b2[2] / 2, b2[1] + b2[3] / 2)
                         for *_, b1, b2 in want)
        for g, w in zip(sorted(drawn["lines"]), centres, strict=True):
            assert close(g, w, 0.6), (g, w)
        assert sorted(drawn["labels"]) == sorted("is Wood" if r[3] == "is" else r[3] for r in want)
        dots = points.get(image_id, [])
        assert len(drawn["dots"]) == len(dots)
        for g, d in zip(sorted(drawn["dots"]), sorted(dots), strict=True):
            assert g[0] == d[1] and close(g[1:3], d[2:], 0.6)
        colours = {d[0]: d[3] for d in drawn["dots"]}
        assert len(set(colours.values())) == len(colours)  # one colour per answer
    stats = s.open((gallery / "stats.html").as_uri())
    table = stats.evaluate("""(key) => Object.fromEntries([...document.querySelectorAll('#table-' + key + ' tbody tr')]
        .map(r => [r.dataset.key, [...r.querySelectorAll('td.num')].map(td => +td.textContent)]))""", "predicates")
    assert table == {p: [sum(1 for r in expected_relationships(made) if r[3] == p)]
                     for p in {r[3] for r in expected_relationships(made)}}
    triplets = stats.evaluate("(k) => [...document.querySelectorAll('#table-' + k + ' tbody tr')].map(r => r.dataset.key)",
                              "triplets")
    assert set(triplets) == {f"{r[1]} {r[3]} {r[2]}" for r in expected_relationships(made)}
    per_class = stats.evaluate("""(key) => Object.fromEntries([...document.querySelectorAll('#table-' + key + ' tbody tr')]
        .map(r => [r.dataset.key, [...r.querySelectorAll('td.num')].map(td => +td.textContent)]))""", "points")
    assert per_class == {"/m/0342h": [sum(1 for p in expected_points(made) if p[1] == a) for a in ("yes", "no", "unsure")]}


def test_annotations_keeps_only_the_asked_relationships(made: Made, tmp_path: Path) -> None:
    dest = _export(made, "coco", tmp_path / "at", *csv_sources(made), "--predicate", "at")
    rels, _ = coco_relationships(dest / "coco.json")
    want = [r for r in expected_relationships(made) if r[3] == "at"]
    _same_relationships(rels, want)
    res = run_cli("annotations", made.out, "--format", "coco", "--state-dir", made.state, "-d", tmp_path / "bad",
                  "--class-descriptions", DESCRIPTIONS, *csv_sources(made), "--relationship", "Man plyas Guitar")
    assert res.returncode != 0 and "Traceback" not in res.stderr and "no known predicate" in res.stderr and "'plays'" in res.stderr


# -- HF, loaded by `datasets` ---------------------------------------------------------------------------

GUITAR = "/m/0342h"
_HF_LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({row["image_id"]: [row["relationships"], row["points"]] for part in ds.values() for row in part}))
"""


def hf_metadata(made: Made, *flags: object) -> dict[str, dict[str, Any]]:
    """`annotations --format hf` (written beside the images) with these flags: its
    metadata.jsonl rows by ImageID."""
    res = run_cli("annotations", made.out, "--format", "hf", "--state-dir", made.state,
                  "--class-descriptions", DESCRIPTIONS, *csv_sources(made), *flags)
    assert res.returncode == 0, res.stderr
    lines = (made.out / "validation" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["image_id"]: row for row in map(json.loads, lines)}


def flat(rows: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> tuple[
        list[tuple[str, str, str, str, list[float], list[float]]], list[tuple[str, str, float, float]]]:
    """ImageID → (relationships, points) in the shape of expected_relationships/points."""
    rels = [(i, r["subject_mid"], r["object_mid"], r["predicate"], r["subject_bbox"], r["object_bbox"])
            for i, (found, _) in rows.items() for r in found]
    points = [(i, p["answer"], float(p["point"][0]), float(p["point"][1])) for i, (_, found) in rows.items()
              for p in found]
    return rels, points


def test_hf_relationships_and_points_load_in_the_written_frame(made: Made, tmp_path: Path) -> None:
    """What `datasets` loads: after the fill crop and each turn, both boxes of every
    relationship and every point equal the CSV moved independently, within 0.5 px."""
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    hf_metadata(made)
    rows = load_with_datasets(_HF_LOAD, tmp_path / "home", made.out, tmp_path / "datasets")
    assert set(rows) == set(made.turns)
    rels, points = flat(rows)
    _same_relationships(rels, expected_relationships(made))
    assert {made.turns[r[0]] for r in rels} == {0, 90, 180, 270}  # every turn has some
    _same_points(points, expected_points(made))
    names = class_names()
    assert all(r["subject"] == names[r["subject_mid"]] for found, _ in rows.values() for r in found)


# -- webdataset: the same fields in each sample's JSON --------------------------------------------------

class Shards:
    def __init__(self, outs: dict[str, Path], told: dict[str, list[str]]) -> None:
        self.outs, self.told = outs, told  # download name → OUT; ImageID → its captions


@pytest.fixture(scope="module")
def shards(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Shards:
    """The same images downloaded into shards, with the same crop and turns: with every
    annotation file and narratives, by class (the points select), by predicate, and
    from a database (its classes name the MIDs)."""
    tmp = tmp_path_factory.mktemp("relshards")
    ids = sorted(made.turns)
    told = {ids[0]: ["A man plays a guitar.", "Someone holds a guitar by a table."], ids[3]: ["A wooden table."]}
    captions = tmp / "open_images_validation_captions.jsonl"
    captions.write_text("".join(json.dumps({"dataset_id": "open_images_validation", "image_id": i, "annotator_id": k,
                                            "caption": c}) + "\n" for i, cs in told.items() for k, c in enumerate(cs)),
                        encoding="utf-8")
    db = tmp / "oi.sqlite"
    res = run_cli("db", "load", made.vrd, made.points, DESCRIPTIONS, "--db", db)
    assert res.returncode == 0, res.stderr
    named = ["--class-descriptions", DESCRIPTIONS]
    runs: dict[str, list[object]] = {
        "all": [*named, *csv_sources(made), "--annotations", captions],
        "class": [*named, "--annotations", made.vrd, "--annotations", made.points, "--class", GUITAR,
                  "--point-answer", "any"],
        "predicate": [*named, *csv_sources(made), "--predicate", "at"],
        "db": ["--db", db],
    }
    outs: dict[str, Path] = {}
    with OriginThread(Origin(made.corpus)) as origin:
        manifest = made.corpus.write_manifest(tmp / "images.csv", origin.base_url, rotation_column=True)
        for name, flags in runs.items():
            outs[name] = tmp / name
            res = run_cli("download", manifest, "-o", outs[name], "--output-format", "webdataset", "--shard-size", "3",
                          "--orientation", "upright", "--resize", str(SIZE), "--resize-mode", "fill",
                          "--progress", "none", *flags)
            assert res.returncode == 0, res.stderr
    return Shards(outs, told)


def samples(out: Path) -> dict[str, dict[str, Any]]:
    """Every sample of OUT's shards, as the webdataset library reads and decodes them."""
    import webdataset as wds

    urls = sorted(str(p) for p in out.rglob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}


def test_each_sample_carries_the_hf_rows_relationships_and_points(made: Made, shards: Shards) -> None:
    got = samples(shards.outs["all"])
    assert set(got) == set(made.turns)
    hf = hf_metadata(made)
    for image_id, s in got.items():
        assert s["json"]["relationships"] == hf[image_id]["relationships"]
        assert s["json"]["points"] == hf[image_id]["points"]
    # and, independently of the HF export: the CSV moved through the crop and the turn
    rels, points = flat({i: (s["json"]["relationships"], s["json"]["points"]) for i, s in got.items()})
    _same_relationships(rels, expected_relationships(made))
    want = expected_points(made)
    _same_points(points, want)
    for image_id, s in got.items():  # a point the crop cut away is absent, not misplaced
        assert len(s["json"]["points"]) == sum(1 for p in want if p[0] == image_id)
    assert len(want) < len(rows_of(made.points))
    for image_id, s in got.items():
        if image_id in shards.told:
            assert s["txt"] == shards.told[image_id][0] and s["json"]["captions"] == shards.told[image_id]
        else:
            assert "txt" not in s and "captions" not in s["json"]


def test_the_selection_keeps_the_relationships_and_points_annotations_keeps(made: Made, shards: Shards) -> None:
    """--class: points of the class, relationships with it on either side; --predicate:
    those relationships only. A sample with none of a kind the files hold: an empty list."""
    for name, flags in (("class", ["--class", GUITAR]), ("predicate", ["--predicate", "at"])):
        got = samples(shards.outs[name])
        assert set(got) == set(made.turns), name  # every image has a Guitar point and an `at` row
        hf = hf_metadata(made, *flags)
        for image_id, s in got.items():
            assert s["json"]["relationships"] == hf[image_id]["relationships"], (name, image_id)
            assert s["json"]["points"] == hf[image_id]["points"], (name, image_id)
    by_class = [r for s in samples(shards.outs["class"]).values() for r in s["json"]["relationships"]]
    assert [r["predicate"] for r in by_class] == ["plays"]  # the one row with Guitar on a side
    assert by_class[0]["object"] == "Guitar" and by_class[0]["subject_mid"] == "/m/04yx4"
    by_predicate = [r for s in samples(shards.outs["predicate"]).values() for r in s["json"]["relationships"]]
    assert {r["predicate"] for r in by_predicate} == {"at"}
    assert len(by_predicate) == sum(1 for r in expected_relationships(made) if r[3] == "at")


def test_from_a_database_the_samples_carry_the_same(shards: Shards) -> None:
    from_files, from_db = samples(shards.outs["all"]), samples(shards.outs["db"])
    assert set(from_db) == set(from_files)
    for image_id, s in from_db.items():
        for key in ("relationships", "points"):
            assert s["json"][key] == from_files[image_id]["json"][key], (key, image_id)
