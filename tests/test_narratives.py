"""Localized narratives (issue 23): the kind is detected from JSON lines by the one
detector; `--with-narrative` and `--narrative-contains` select exactly the images an
independent reading of the files gives (json and a word split, not the code under
test), from the files and from `--db` (SQLite and a real PostgreSQL) alike; `db load`
reports a malformed line as a bad row with its number and bounds a huge line; a
gzipped file reads the same. The exports' round trips are in test_exporter_contract.py."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from oidownload.dataset import kinds
from oidownload.dataset.annotations import open_table
from oidownload.dataset.db import formats
from oidownload.dataset.narratives import NARRATIVE_LINE, NarrativeChoice, NarrativeFile
from tests.conftest import FIXTURES, V3, rows_of, run_cli
from tests.test_db import query

HERE = FIXTURES / "localized-narratives"
CAPTIONS = HERE / "open_images_train_v6_captions.sample.jsonl"
FULL = HERE / "open_images_validation_localized_narratives.sample.jsonl"
FILES = [CAPTIONS, FULL]
INPUTS = [V3 / "train" / "images.csv", V3 / "validation" / "images.csv"]


def independent(paths: list[Path], words: list[str]) -> set[str]:
    """Images with a narrative holding every word, by json and a plain word split."""
    found = set()
    for path in paths:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                said = [w.lower() for w in re.split(r"[^\w]+", obj["caption"]) if w]
                if all(w.lower() in said for w in words):
                    found.add(obj["image_id"])
    return found


def selected(tmp_path: Path, *args: object, name: str = "sel.csv") -> set[str]:
    out = tmp_path / name
    res = run_cli("select", *INPUTS, "-o", out, *args)
    assert res.returncode in (0, 4) and "Traceback" not in res.stderr, res.stderr  # 4: nothing selected
    got = {r["ImageID"] for r in rows_of(out)}
    assert (res.returncode == 4) == (not got)
    return got


def test_both_sample_files_are_narratives_by_the_one_detector() -> None:
    for path in FILES:
        table = open_table(path)
        assert table.kind is kinds.NARRATIVES and isinstance(table, NarrativeFile)
        first = path.read_text(encoding="utf-8").splitlines()[0]
        found = formats.detect(path.name, first)  # db load's
        assert found is not None and found.kind is kinds.NARRATIVES
        assert found.columns == ("ImageID", "AnnotatorID", "Caption")
    # A full file's line cut at db load's 64 KB header bound is still told by its keys.
    head = '{"dataset_id": "x", "image_id": "0001eeaf4aed83f9", "annotator_id": 3, "caption": "a", "traces": [[' \
           + '{"x": 0.1, "y": 0.2, "t": 0.3}, ' * 5000
    assert kinds.json_header(head) == ("ImageID", "AnnotatorID", "Caption")
    assert kinds.detect(kinds.json_header('{"image_id": "a"}') or ()) == []  # no caption: no narratives


def test_a_narrative_record_keeps_unicode_and_the_empty_caption() -> None:
    rows = list(NarrativeFile(CAPTIONS).rows())
    by_line = [json.loads(line) for line in CAPTIONS.read_text(encoding="utf-8").splitlines()]
    assert [r[2] for r in rows] == [o["caption"] for o in by_line]
    assert "" in [r[2] for r in rows] and any("Müller" in r[2] and "日本語" in r[2] for r in rows)
    record = kinds.NARRATIVES.reader(open_table(CAPTIONS).columns)(rows[0])
    assert record == kinds.Narrative(by_line[0]["image_id"], str(by_line[0]["annotator_id"]), by_line[0]["caption"])


@pytest.mark.parametrize("words", [[], ["dog"], ["DOG", "grass"], ["sky"], ["t-shirt"], ["café"], ["caf"]],
                         ids=lambda w: "+".join(w) or "any")
def test_selection_equals_an_independent_reading(tmp_path: Path, words: list[str]) -> None:
    args = [a for p in FILES for a in ("--annotations", p)]
    args += [a for w in words for a in ("--narrative-contains", w)] or ["--with-narrative"]
    want = independent(FILES, [t for w in words for t in re.split(r"[^\w]+", w) if t])
    assert selected(tmp_path, *args) == want
    if words == ["caf"]:
        assert want == set()  # whole words: "caf" is not in "café"
    if not words:
        assert len(want) == 9


def test_the_word_filter_and_a_class_intersect(tmp_path: Path) -> None:
    boxes = V3 / "train" / "annotations-human-bbox.csv"
    with_class = selected(tmp_path, "--annotations", boxes, "--class", "/m/0k4j", name="c.csv")
    both = selected(tmp_path, "--annotations", boxes, "--annotations", CAPTIONS, "--class", "/m/0k4j",
                    "--with-narrative", name="b.csv")
    assert both == with_class & independent([CAPTIONS], [])


def test_gzipped_narratives_select_the_same(tmp_path: Path) -> None:
    gz = tmp_path / (CAPTIONS.name + ".gz")
    with open(CAPTIONS, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert selected(tmp_path, "--annotations", gz, "--narrative-contains", "dog") == independent([CAPTIONS], ["dog"])


def test_a_bad_word_and_no_narratives_file_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="give a word"):
        NarrativeChoice(words=("--",))
    res = run_cli("select", *INPUTS, "-o", tmp_path / "x.csv", "--annotations", V3 / "train" / "annotations-human.csv",
                  "--with-narrative")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "need a localized narratives file" in res.stderr


# -- the database: the same selection, bad rows, bounded lines --------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oi.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("words", [[], ["dog", "GRASS"], ["the"]], ids=lambda w: "+".join(w) or "any")
def test_select_from_the_db_equals_the_files(db_url: str, tmp_path: Path, words: list[str]) -> None:
    res = run_cli("db", "load", *FILES, "--db", db_url)
    assert res.returncode == 0, res.stderr
    assert query(db_url, "SELECT count(*) FROM narratives")[0][0] == 13
    flags = [a for w in words for a in ("--narrative-contains", w)] or ["--with-narrative"]
    files = selected(tmp_path, *[a for p in FILES for a in ("--annotations", p)], *flags, name="f.csv")
    assert selected(tmp_path, "--db", db_url, *flags, name="d.csv") == files == independent(FILES, words)


def test_db_load_reports_a_malformed_line_by_number_and_bounds_a_huge_one(db_url: str, tmp_path: Path) -> None:
    good = CAPTIONS.read_text(encoding="utf-8").splitlines()
    huge = json.dumps({"image_id": "0000071d71a0a6f6", "annotator_id": 1, "caption": "x" * (NARRATIVE_LINE + 10)})
    lines = [good[0], '{"image_id": "000002b97e5471a0", "caption": "cut', good[1], huge, "[1, 2]",
             '{"image_id": "zz", "caption": "a"}', good[2]]
    path = tmp_path / "narratives.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = run_cli("db", "load", path, "--db", db_url)
    assert res.returncode == 0, res.stderr
    assert f"{path.resolve()}:2: not JSON" in res.stderr
    assert f"{path.resolve()}:4: the line is longer than {NARRATIVE_LINE} characters" in res.stderr
    assert f"{path.resolve()}:5: not a JSON object" in res.stderr
    assert f"{path.resolve()}:6: image_id 'zz' is not 16 hex digits" in res.stderr
    assert "3 rows, 4 bad" in res.stderr
    got = query(db_url, "SELECT caption FROM narratives ORDER BY caption")
    assert sorted(r[0] for r in got) == sorted(json.loads(g)["caption"] for g in good[:3])
    bad: list[tuple[int, str]] = []
    assert len(list(NarrativeFile(path).rows(bad=lambda n, why: bad.append((n, why))))) == 3  # the CSV-side reader
    assert [n for n, _ in bad] == [2, 4, 5, 6]
    # a rerun skips the committed file (resume), as for every kind
    res = run_cli("db", "load", path, "--db", db_url)
    assert res.returncode == 0 and "unchanged" in res.stderr


def test_annotations_csv_from_the_db_equals_the_files(db_url: str, tmp_path: Path) -> None:
    """The narrative rows `annotations --format csv` writes, from --db and from the files."""
    from oidownload.dataset.db.source import DbAnnotations

    res = run_cli("db", "load", *FILES, "--db", db_url)
    assert res.returncode == 0, res.stderr
    want = {(r[0], r[1], r[2]) for p in FILES for r in NarrativeFile(p).rows()}
    with DbAnnotations.open(db_url) as source:
        tables = [t for t in source.tables() if t.kind is kinds.NARRATIVES]
        got = {tuple(r) for t in tables for r in t.rows()}
        some = {"000004f4400f6ec5", "0001eeaf4aed83f9"}
        assert {r[0] for t in tables for r in t.rows(some)} == some
    assert got == want


def test_the_sample_files_say_where_their_format_comes_from() -> None:
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    assert "google/localized-narratives" in readme and "not real" in readme
    with open(V3 / "train" / "images.csv", newline="", encoding="utf-8") as f:
        real = {r["ImageID"] for r in csv.DictReader(f)}
    assert {r[0] for r in NarrativeFile(CAPTIONS).rows()} <= real  # real ImageIDs, so downloads can match


# -- webdataset: the caption as <ImageID>.txt --------------------------------------------------------


@pytest.mark.parametrize("where", ["files", "db"])
def test_a_download_into_shards_carries_each_caption_as_txt(tmp_path: Path, make_origin: Any, where: str) -> None:
    import tarfile

    import webdataset as wds

    from oidownload.testing.origin import Corpus

    rows = rows_of(V3 / "train" / "images.csv")[:12]
    corpus = Corpus.generate(0, mix="tiny", seed=23, ids=[r["ImageID"] for r in rows], subset="train")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    if where == "db":
        db = tmp_path / "oi.sqlite"
        assert run_cli("db", "load", CAPTIONS, "--db", db).returncode == 0
        source: list[object] = ["--db", db]
    else:
        source = ["--annotations", CAPTIONS]
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--output-format", "webdataset", "--shard-size", "5",
                  "--resize", "48", "--progress", "none", *source)
    assert res.returncode == 0, res.stderr
    want: dict[str, list[str]] = {}
    for line in CAPTIONS.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        want.setdefault(obj["image_id"], []).append(obj["caption"])
    shards = sorted(str(p) for p in out.rglob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in samples) == sorted(r["ImageID"] for r in rows)
    for s in samples:
        key = s["__key__"]
        if key in want:
            assert s["txt"] == want[key][0]  # decoded as text
            assert s["json"]["captions"] == want[key]
        else:
            assert "txt" not in s and "captions" not in s["json"]
        # no relationship or point file among the annotations: no such keys at all
        assert "relationships" not in s["json"] and "points" not in s["json"]
    assert len([s for s in samples if "txt" in s]) == len(want) == 6
    # The image is still what readers take as the sample's image (the txt comes before the JSON).
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
    for k, name in enumerate(names):
        if name.endswith(".txt"):
            assert names[k + 1] == name[:-4] + ".json" and names[k - 1].endswith(".jpg")
    assert run_cli("verify", out).returncode == 0


# -- traces (--narrative-traces): kept only when asked, moved into the written frame -----------------


def _fixture_traces() -> dict[tuple[str, str], list[list[tuple[float, float, float]]]]:
    found = {}
    for line in FULL.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        found[obj["image_id"], str(obj["annotator_id"])] = [[(p["x"], p["y"], p["t"]) for p in seg]
                                                             for seg in obj["traces"]]
    return found


def test_traces_are_read_only_when_asked() -> None:
    plain = list(NarrativeFile(FULL).rows())
    assert all(len(r) == 3 for r in plain)
    kept = list(NarrativeFile(FULL, traces=True).rows())
    want = _fixture_traces()
    for r in kept:
        record = kinds.NARRATIVES.reader((*("ImageID", "AnnotatorID", "Caption"), "Traces"))(r)
        assert record is not None
        assert [list(seg) for seg in record.traces] == want[r[0], r[1]]
    # A captions-only file has no traces: the column is empty, not a bad row.
    assert {r[3] for r in NarrativeFile(CAPTIONS, traces=True).rows()} == {""}
    line = '{"image_id": "0001eeaf4aed83f9", "caption": "a", "traces": [[{"x": "left", "y": 0, "t": 0}]]}'
    from oidownload.dataset.narratives import numbered
    assert [why for _, why in numbered([line], traces=True)] == ["traces: a point's x, y or t is not a number"]


def test_traces_move_through_fill_crops_and_turns(tmp_path: Path, make_origin: Any, db_url: str) -> None:
    """Every kept point equals the file's point moved by an independent reading of the
    crop (the centre square) and the turn, within 0.5 px; points outside the crop are
    dropped and said; the same from --db (loaded with --narrative-traces) as from the file."""
    import io

    from PIL import Image

    from oidownload.testing.origin import Corpus

    ids = ["0001eeaf4aed83f9", "0004886b7d043cfd", "000595fe6fee6369"]
    corpus = Corpus.generate(0, mix="tiny", seed=29, ids=ids, subset="validation")
    turns = dict(zip(ids, (0, 90, 270), strict=True))
    for image_id, degrees in turns.items():
        corpus.entries[image_id].rotation = f"{degrees}.0"
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url, rotation_column=True)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--orientation", "upright", "--resize", "120",
                  "--resize-mode", "fill", "--progress", "none")
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "coco", "--annotations", FULL, "--narrative-traces")
    assert res.returncode == 0, res.stderr
    caps = json.loads((out / "annotations" / "captions.json").read_text(encoding="utf-8"))
    turn = {0: lambda x, y: (x, y), 90: lambda x, y: (y, 1 - x), 270: lambda x, y: (1 - y, x)}
    want: dict[tuple[str, str], list[list[tuple[float, float, float]]]] = {}
    cut = 0
    for (image_id, annotator), segments in _fixture_traces().items():
        with Image.open(io.BytesIO(corpus.original(image_id))) as im:
            w0, h0 = im.size
        side = min(w0, h0)
        cx, cy, sx, sy = (w0 - side) / 2 / w0, (h0 - side) / 2 / h0, side / w0, side / h0
        moved = []
        for seg in segments:
            kept = []
            for x, y, t in seg:
                if not (cx <= x <= cx + sx and cy <= y <= cy + sy):
                    cut += 1
                    continue
                wx, wy = turn[turns[image_id]]((x - cx) / sx, (y - cy) / sy)
                kept.append((wx * 120, wy * 120, t))
            if kept:
                moved.append(kept)
        want[image_id, annotator] = moved
    assert cut > 0  # the fixture's points below 0 at least
    assert f"{cut} trace point(s) outside a fill crop were dropped" in res.stderr
    by_id = {img["id"]: img["open_images_id"] for img in caps["images"]}
    got = {(by_id[a["image_id"]], a["annotator_id"]): a.get("traces", []) for a in caps["annotations"]}
    assert set(got) == set(want)
    for key, segments in want.items():
        assert len(got[key]) == len(segments), key
        for gs, ws in zip(got[key], segments, strict=True):
            assert len(gs) == len(ws)
            assert all(abs(g[0] - w[0]) <= 0.5 and abs(g[1] - w[1]) <= 0.5 and g[2] == w[2]
                       for g, w in zip(gs, ws, strict=True))
    # The CSV export's Traces column: the same, normalised; and from the database the same file.
    res = run_cli("annotations", out, "--format", "csv", "--annotations", FULL, "--narrative-traces",
                  "-d", tmp_path / "from-files")
    assert res.returncode == 0, res.stderr
    res = run_cli("db", "load", FULL, "--db", db_url, "--narrative-traces")
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "csv", "--db", db_url, "--narrative-traces",
                  "-d", tmp_path / "from-db")
    assert res.returncode == 0, res.stderr
    name = FULL.name.replace(".jsonl", ".csv")
    files = rows_of(tmp_path / "from-files" / name)
    assert sorted(map(tuple, (r.values() for r in rows_of(tmp_path / "from-db" / name)))) == \
        sorted(map(tuple, (r.values() for r in files)))
    assert len(files) == len(want)
    for r in files:
        segments = json.loads(r["Traces"])
        w = want[r["ImageID"], r["AnnotatorID"]]
        assert [len(seg) for seg in segments] == [len(seg) for seg in w]
        for sa, sb in zip(segments, w, strict=True):
            assert all(abs(a[0] * 120 - b[0]) <= 0.5 and abs(a[1] * 120 - b[1]) <= 0.5 and a[2] == b[2]
                       for a, b in zip(sa, sb, strict=True))
    res = run_cli("annotations", out, "--format", "coco", "--db", db_url, "--narrative-traces", "-d", tmp_path / "c")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "c" / "captions.json").read_text(encoding="utf-8")) == caps  # --db equals the file
    # Asked of a format that has no place for them: refused.
    res = run_cli("annotations", out, "--format", "hf", "--annotations", FULL, "--narrative-traces")
    assert res.returncode == 2 and "--format hf carries no traces" in res.stderr


def test_annotations_exports_only_the_narrated_images_when_asked(tmp_path: Path, make_origin: Any) -> None:
    from oidownload.testing.origin import Corpus

    rows = rows_of(V3 / "train" / "images.csv")[:12]
    corpus = Corpus.generate(0, mix="tiny", seed=31, ids=[r["ImageID"] for r in rows], subset="train")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--resize", "48", "--progress", "none")
    assert res.returncode == 0, res.stderr
    for flags, words in ((["--with-narrative"], []), (["--narrative-contains", "dog"], ["dog"])):
        dest = tmp_path / f"coco-{len(words)}"
        res = run_cli("annotations", out, "--format", "coco", "--annotations", CAPTIONS, *flags, "-d", dest)
        assert res.returncode == 0, res.stderr
        doc = json.loads((dest / "coco.json").read_text(encoding="utf-8"))
        assert {img["open_images_id"] for img in doc["images"]} == independent([CAPTIONS], words)
    res = run_cli("annotations", out, "--format", "csv", "--annotations", CAPTIONS, "--narrative-contains", "zebra",
                  "-d", tmp_path / "none")
    assert res.returncode == 1 and "has a narrative the selection accepts" in res.stderr
