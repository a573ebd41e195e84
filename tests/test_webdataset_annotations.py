"""`annotations --format webdataset` (issue 23): the annotations put into the shards a
download already wrote. Real ImageIDs of the V3 validation and train splits, their real
boxes, the validation narratives sample, relationship rows on their boxes and random
points, downloaded with `--resize-mode fill` and each upright turn into shards of 3
(two subsets, several shards each) and, for the expected values, into files. Then,
read with the `webdataset` library itself: every narrated sample's `txt` is its first
caption; each sample's `captions`, `relationships`, `points` and `objects` equal the HF
export's metadata.jsonl row of the same image, and the points equal the CSV's moved
through the crop and the turn (0.5 px); every other member keeps its bytes, the images
their SHA-256s; `verify` and `verify --lock` pass and the card names the new shards;
a shard nothing in it changes keeps its bytes; the same command again, and one after a
crash between the index's and the tar's renames, give the same bytes; the download
again fetches nothing; a running download's shards, and a bucket, are refused in one
line."""

from __future__ import annotations

import csv
import fcntl
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import FIXTURES, V3, rows_of, run_cli

BOXES_CSV = V3 / "validation" / "annotations-human-bbox.csv"
DESCRIPTIONS = V3 / "class-descriptions.csv"
NARRATIVES = FIXTURES / "localized-narratives" / "open_images_validation_localized_narratives.sample.jsonl"
SIZE = 96
TURNS: dict[int, Callable[[float, float], tuple[float, float]]] = {
    0: lambda x, y: (x, y), 90: lambda x, y: (y, 1 - x), 180: lambda x, y: (1 - x, 1 - y), 270: lambda x, y: (1 - y, x)}
FLAGS = ("--orientation", "upright", "--resize", str(SIZE), "--resize-mode", "fill", "--progress", "none")

Snapshot = dict[str, tuple[bytes, int]]  # shard path → (bytes, mtime_ns)


@dataclass
class Made:
    shards: Path  # the webdataset output
    files: Path  # the same download as files, for the HF export's rows
    origin: Origin
    manifest: Path
    args: list[object]  # the annotations' flags, for both exports
    before: Snapshot  # the shards as the download wrote them
    partial: Snapshot  # after `--with-narrative`
    after: Snapshot  # after the whole export
    sizes: dict[str, tuple[int, int]]  # the originals' sizes
    turns: dict[str, int]
    points: Path

    def run(self) -> subprocess.CompletedProcess[str]:
        return run_cli("annotations", self.shards, "--format", "webdataset", *self.args)


def snapshot(out: Path) -> Snapshot:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*.tar"))}


def members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]


def _write_kind_files(tmp: Path, boxed: list[str], annotated: list[str]) -> tuple[Path, Path]:
    """Two relationships on the real boxes of each boxed image (one an `is`), and four
    random points on each annotated one (some where the fill crop cuts them away)."""
    boxes = rows_of(BOXES_CSV)
    vrd, points = tmp / "oidv6-validation-annotations-vrd.csv", tmp / "oidv7-val-annotations-point-labels.csv"
    q = ("XMin", "XMax", "YMin", "YMax")
    with open(vrd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "LabelName1", "LabelName2", *(f"{c}{k}" for k in (1, 2) for c in q), "RelationshipLabel"])
        for image_id in boxed:
            mine = [r for r in boxes if r["ImageID"] == image_id]
            a, b = mine[0], mine[-1]
            w.writerow([image_id, a["LabelName"], b["LabelName"], *(a[c] for c in q), *(b[c] for c in q), "at"])
            w.writerow([image_id, a["LabelName"], "/m/083vt", *(a[c] for c in q), *(a[c] for c in q), "is"])
    rng = random.Random(5)
    with open(points, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                    "TextLabel"])
        for image_id in annotated:
            for _ in range(4):
                w.writerow([image_id, f"{rng.random():.5f}", f"{rng.random():.5f}", "/m/0342h",
                            rng.choice(["yes", "no", "unsure"]), "ih", rng.randint(0, 3), rng.randint(0, 3), 0, ""])
    return vrd, points


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, synth_cache: Path) -> Iterator[Made]:
    tmp = tmp_path_factory.mktemp("wdsannotations")
    narrated = sorted({json.loads(line)["image_id"] for line in NARRATIVES.read_text(encoding="utf-8").splitlines()})
    boxed_all = sorted({r["ImageID"] for r in rows_of(BOXES_CSV)})
    boxed = [i for i in boxed_all if i not in narrated][10:14]
    bare = next(r["ImageID"] for r in rows_of(V3 / "validation" / "images.csv")
                if r["ImageID"] not in boxed_all and r["ImageID"] not in narrated)
    train = [r["ImageID"] for r in rows_of(V3 / "train" / "images.csv")[40:43]]
    validation = [*narrated, *boxed, bare]
    corpus = Corpus.generate(0, mix="tiny", seed=71, ids=[*validation, *train], subset="validation")
    turns = {i: 0 for i in train}
    for k, image_id in enumerate(validation):
        turns[image_id] = (0, 90, 180, 270)[k % 4]
        corpus.entries[image_id].rotation = f"{turns[image_id]}.0"
    for image_id in train:
        corpus.entries[image_id].subset = "train"
    sizes = {}
    for image_id in corpus.ids:
        with Image.open(io.BytesIO(corpus.original(image_id))) as im:
            sizes[image_id] = im.size
    vrd, points = _write_kind_files(tmp, [i for i in validation if i in boxed_all], [*narrated, *boxed])
    args: list[object] = ["--annotations", BOXES_CSV, "--annotations", NARRATIVES, "--annotations", vrd,
                          "--annotations", points, "--class-descriptions", DESCRIPTIONS]
    with OriginThread(Origin(corpus)) as origin:
        manifest = corpus.write_manifest(tmp / "images.csv", origin.base_url, rotation_column=True)
        shards, files = tmp / "shards", tmp / "files"
        for out, more in ((shards, ["--output-format", "webdataset", "--shard-size", "3"]), (files, [])):
            res = run_cli("download", manifest, "-o", out, *FLAGS, *more)
            assert res.returncode == 0, res.stderr
        before = snapshot(shards)
        res = run_cli("annotations", shards, "--format", "webdataset", "--annotations", NARRATIVES, "--with-narrative")
        assert res.returncode == 0, res.stderr
        partial = snapshot(shards)
        m = Made(shards, files, origin, manifest, args, before, partial, {}, sizes, turns, points)
        res = m.run()
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        m.after = snapshot(shards)
        res = run_cli("annotations", files, "--format", "hf", *args)
        assert res.returncode == 0, res.stderr
        yield m


def hf_rows(made: Made) -> dict[str, dict[str, Any]]:
    return {row["image_id"]: row for meta in made.files.glob("*/metadata.jsonl")
            for row in map(json.loads, meta.read_text(encoding="utf-8").splitlines())}


def captions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in NARRATIVES.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        found.setdefault(obj["image_id"], []).append(obj["caption"])
    return found


def loaded(made: Made) -> dict[str, dict[str, Any]]:
    """Every sample, as the webdataset library decodes it."""
    import webdataset as wds

    urls = sorted(str(p) for p in made.shards.rglob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == len(hf_rows(made))  # each once: no duplicate members
    return {s["__key__"]: s for s in samples}


def test_each_sample_carries_the_hf_rows_annotations(made: Made) -> None:
    rows, told = hf_rows(made), captions()
    samples = loaded(made)
    assert set(samples) == set(rows)
    assert len(told) == 3 and sum(map(len, told.values())) == 4  # one image narrated twice
    for key, s in samples.items():
        row, meta = rows[key], s["json"]
        if key in told:
            assert s["txt"] == told[key][0] == row["caption"]
            assert meta["captions"] == told[key] == row["captions"]
        else:
            assert "txt" not in s and "captions" not in meta and row["captions"] == []
        for field in ("relationships", "points", "objects"):
            assert meta[field] == row[field], (key, field)
        assert meta["ImageID"] == key and (meta["width"], meta["height"]) == (row["width"], row["height"]) == (SIZE, SIZE)
    assert sum(len(s["json"]["relationships"]) for s in samples.values()) > 0
    assert sum(len(s["json"]["objects"]["bbox"]) for s in samples.values()) > 0
    names = (made.shards / "oidownload.classes.txt").read_text(encoding="utf-8").splitlines()
    for s in samples.values():
        objects = s["json"]["objects"]
        assert [names[c] for c in objects["category"]] == objects["labels"]


def test_points_are_the_csvs_moved_through_the_crop_and_the_turn(made: Made) -> None:
    samples = loaded(made)
    want: dict[str, list[tuple[str, float, float]]] = {}
    cut = 0
    for r in rows_of(made.points):
        image_id = r["ImageId"]
        w0, h0 = made.sizes[image_id]
        side = min(w0, h0)
        cx, cy, sx, sy = (w0 - side) / 2 / w0, (h0 - side) / 2 / h0, side / w0, side / h0
        x, y = TURNS[made.turns[image_id]]((float(r["X"]) - cx) / sx, (float(r["Y"]) - cy) / sy)
        if 0 <= x <= 1 and 0 <= y <= 1:
            want.setdefault(image_id, []).append((r["EstimatedYesNo"], x * SIZE, y * SIZE))
        else:
            cut += 1
    assert cut and want and set(made.turns.values()) == {0, 90, 180, 270}
    for key, s in samples.items():
        got = sorted((p["answer"], *p["point"]) for p in s["json"]["points"])
        assert len(got) == len(want.get(key, [])), key
        for g, e in zip(got, sorted(want.get(key, [])), strict=True):
            assert g[0] == e[0] and abs(g[1] - e[1]) <= 0.5 and abs(g[2] - e[2]) <= 0.5, (key, g, e)


def test_every_other_member_keeps_its_bytes(made: Made) -> None:
    told = captions()
    assert made.before.keys() == made.after.keys() and len(made.before) >= 4
    for path, (old, _) in made.before.items():
        new = made.after[path][0]
        old_members, new_members = members(old), members(new)
        kept = [(n, b) for n, b in old_members if not n.endswith((".json", ".txt"))]
        assert [(n, b) for n, b in new_members if not n.endswith((".json", ".txt"))] == kept
        names = [n for n, _ in new_members]
        for k, name in enumerate(names):  # the txt right before its JSON, after the image
            if name.endswith(".txt"):
                assert name.split(".")[0] in told
                assert names[k + 1] == name[:-4] + ".json" and names[k - 1].endswith(".jpg")
    lock = made.shards / "oidownload.lock.jsonl.gz"
    with gzip.open(lock) as f:
        lines = [json.loads(x) for x in f.read().splitlines()[1:-1]]
    samples = loaded(made)
    assert {x["id"]: x["sha256"] for x in lines} == {k: hashlib.sha256(s["jpg"]).hexdigest() for k, s in samples.items()}


def test_a_shard_nothing_in_it_changes_keeps_its_bytes(made: Made) -> None:
    # --with-narrative kept the narrated validation images only: no train shard changed.
    told = captions()
    untouched = [p for p, (data, _) in made.before.items()
                 if not {n.split(".")[0] for n, _ in members(data)} & set(told)]
    assert any("/train/" in p for p in untouched)
    for path in untouched:
        assert made.partial[path] == made.before[path], path  # same bytes, same mtime: not written again
    assert any(made.partial[p] != made.before[p] for p in made.before)


def test_verify_and_the_lock_and_the_card_hold(made: Made) -> None:
    assert run_cli("verify", made.shards, "--progress", "none").returncode == 0
    res = run_cli("verify", made.shards, "--lock", made.shards / "oidownload.lock.jsonl.gz", "--progress", "none")
    assert res.returncode == 0, res.stderr
    card = json.loads((made.shards / "croissant.json").read_text())
    named = {o["contentUrl"]: o["sha256"] for o in card["distribution"] if str(o.get("@id", "")).startswith("shard:")}
    assert named == {str(Path(p).relative_to(made.shards)): hashlib.sha256(d).hexdigest()
                     for p, (d, _) in made.after.items()}


def test_the_same_command_again_changes_nothing(made: Made) -> None:
    res = made.run()
    assert res.returncode == 0, res.stderr
    assert snapshot(made.shards) == made.after
    assert not [p for p in made.shards.rglob(".*") if p.name.endswith((".part", ".oidtmp"))]


def test_a_crash_between_the_two_renames_is_repaired_by_running_again(made: Made) -> None:
    # The new index was renamed into place, the new tar not: the old tar and the new index.
    path = next(p for p in made.before if made.before[p][0] != made.after[p][0])
    Path(path).write_bytes(made.before[path][0])
    res = made.run()
    assert res.returncode == 0, res.stderr
    assert {p: d for p, (d, _) in snapshot(made.shards).items()} == {p: d for p, (d, _) in made.after.items()}
    made.after = snapshot(made.shards)


def test_the_download_again_fetches_nothing(made: Made) -> None:
    asked = sum(made.origin.requests.values())
    res = run_cli("download", made.manifest, "-o", made.shards, *FLAGS, "--output-format", "webdataset",
                  "--shard-size", "3")
    assert res.returncode == 0, res.stderr
    assert sum(made.origin.requests.values()) == asked
    assert {p: d for p, (d, _) in snapshot(made.shards).items()} == {p: d for p, (d, _) in made.after.items()}


def test_shards_a_download_is_writing_are_refused(made: Made) -> None:
    lock = made.shards / ".shards-00000.lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = made.run()
    finally:
        os.close(fd)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"holds {lock}" in res.stderr and "only while no download" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert {p: d for p, (d, _) in snapshot(made.shards).items()} == {p: d for p, (d, _) in made.after.items()}


def test_a_bucket_output_is_refused_in_one_line(made: Made, tmp_path: Path) -> None:
    # The journal of a download into a bucket: this one's, its recorded output moved to s3://.
    import shutil
    import sqlite3

    state = tmp_path / "state"
    shutil.copytree(made.shards / ".oidownload", state)
    for journal in state.glob("journal-*.sqlite"):
        with sqlite3.connect(journal) as conn:
            conn.execute("UPDATE meta SET value=? WHERE key='output'",
                         (json.dumps({"out": "s3://bucket/shards", "kind": "webdataset", "keep_original": False}),))
        conn.close()
    res = run_cli("annotations", "s3://bucket/shards", "--state-dir", state, "--format", "webdataset",
                  "--annotations", NARRATIVES)
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "s3://bucket/shards is in a bucket" in res.stderr
