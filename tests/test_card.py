"""The Croissant card beyond a local CSV selection: a bucket output gets its card beside
the data, a --db selection gets the database's boxes, and the annotations are joined to
the written images a chunk at a time (bounded memory)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import obstore
import pytest

from oidownload.provenance import written_index
from oidownload.provenance.lock import write_lock
from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import V3, require, run_cli

DESCRIPTIONS = V3 / "class-descriptions.csv"
VAL = V3 / "validation"
VAL_ANNOTATIONS = [VAL / "annotations-human-bbox.csv", VAL / "annotations-human.csv", VAL / "annotations-machine.csv"]

_RECORDS = """
import json, sys
import mlcroissant as mlc
print(json.dumps([{k.split("/", 1)[1]: (v.decode() if isinstance(v, bytes) else v) for k, v in r.items()
                   if k != "images/file"} for r in mlc.Dataset(jsonld=sys.argv[1]).records(sys.argv[2])]))
"""


def _boxes_csv(path: Path, ids: list[str]) -> Path:
    path.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                    + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n{i},xclick,/m/01g317,1,0.3,0.9,0.4,0.8\n"
                              for i in ids))
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _mlcroissant(card: Path, tmp_path: Path, record_set: str) -> list[dict[str, Any]]:
    env = {**os.environ, "CROISSANT_CACHE": str(tmp_path / "croissant-cache")}
    val = subprocess.run([str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld", str(card)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert val.returncode == 0, val.stderr
    res = subprocess.run([sys.executable, "-c", _RECORDS, str(card), record_set], capture_output=True, text=True,
                         env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout))


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_a_bucket_output_gets_its_card_beside_the_data_and_it_validates_once_synced_down(
        tmp_path: Path, make_origin: StartOrigin, s3: Any, fmt: str) -> None:
    require(importlib.util.find_spec("mlcroissant") is not None, "mlcroissant (pip install 'mlcroissant[image]')")
    corpus = Corpus.generate(6, mix="tiny", seed=31, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    boxes = _boxes_csv(tmp_path / "boxes.csv", sorted(corpus.ids))
    env = dict(s3.env) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    bucket = f"card-{fmt}"
    s3.make_bucket(bucket)
    res = run_cli("download", manifest, "-o", f"s3://{bucket}/v", "--resize", "64", "--output-format", fmt,
                  "--shard-size", "4", "--annotations", boxes, "--class", "/m/0152hh", "--progress", "none", env=env)
    assert res.returncode == 0, res.stderr
    keys = s3.keys(bucket, "v/")
    for name in ("croissant.json", "oidownload.images.jsonl.gz", "oidownload.boxes.jsonl.gz", "oidownload.lock.jsonl.gz"):
        assert f"v/{name}" in keys, sorted(keys)
    local = tmp_path / "synced"  # the bucket as `aws s3 sync` brings it down
    store = s3.store(bucket)
    for key in keys:
        dest = local / key.removeprefix("v/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(bytes(obstore.get(store, key).bytes()))
    doc = json.loads((local / "croissant.json").read_text())
    if fmt == "webdataset":
        shards = [d for d in doc["distribution"] if d["@id"].startswith("shard:")]
        assert len(shards) == 2
        for s in shards:  # hashed where the shards are: read back from the bucket
            assert s["sha256"] == hashlib.sha256((local / s["contentUrl"]).read_bytes()).hexdigest()
    images = {r["image_id"]: r for r in _mlcroissant(local / "croissant.json", tmp_path, "images")}
    assert set(images) == set(corpus.ids)
    assert all(r["source"] == "original" and r["subset"] == "validation" for r in images.values())
    got = _mlcroissant(local / "croissant.json", tmp_path, "boxes")
    assert sorted(r["image_id"] for r in got) == sorted(corpus.ids) and {r["label"] for r in got} == {"/m/0152hh"}


def _card_boxes(out: Path) -> list[tuple[Any, ...]]:
    return sorted(tuple(sorted(r.items())) for r in _jsonl(out / "oidownload.boxes.jsonl.gz"))


def test_a_db_selection_gets_a_card_with_the_same_boxes_and_labels_as_the_csv_selection(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    db = f"sqlite:///{tmp_path / 'oi.sqlite'}"
    res = run_cli("db", "load", DESCRIPTIONS, *VAL_ANNOTATIONS, "--db", db)
    assert res.returncode == 0, res.stderr
    with open(VAL / "images.csv", newline="", encoding="utf-8") as f:
        real = [r["ImageID"] for r in csv.DictReader(f)]
    corpus = Corpus.generate(0, mix="tiny", seed=5, ids=real, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    from_db, from_csv = tmp_path / "from-db", tmp_path / "from-csv"
    res = run_cli("download", manifest, "-o", from_db, "--db", db, "--class", "Car", "--resize", 48,
                  "--progress", "none")
    assert res.returncode == 0, res.stderr
    ann = [a for p in VAL_ANNOTATIONS for a in ("--annotations", p)]
    res = run_cli("download", manifest, "-o", from_csv, *ann, "--class-descriptions", DESCRIPTIONS, "--class", "Car",
                  "--resize", 48, "--progress", "none")
    assert res.returncode == 0, res.stderr
    boxes = _card_boxes(from_db)
    assert len(boxes) > 5 and boxes == _card_boxes(from_csv)
    assert {dict(b)["class_name"] for b in boxes} == {"Car"}  # the names from the database's classes table
    assert sorted(map(str, _jsonl(from_db / "oidownload.labels.jsonl.gz"))) == \
        sorted(map(str, _jsonl(from_csv / "oidownload.labels.jsonl.gz")))
    doc = json.loads((from_db / "croissant.json").read_text())
    assert {r["name"] for r in doc["recordSet"]} == {"meta", "images", "boxes", "labels"}


def test_the_chunked_join_gives_the_lines_of_the_one_pass_join(tmp_path: Path, make_origin: StartOrigin,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = Corpus.generate(9, mix="tiny", seed=32, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    ids = sorted(corpus.ids)
    # Rows of images that were not written, between those that were.
    boxes = _boxes_csv(tmp_path / "boxes.csv", [*ids, "00000000deadbeef", *reversed(ids)])
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--resize", "64", "--resize-mode", "fill", "--annotations", boxes,
                  "--class", "/m/0152hh", "--class", "/m/01g317", "--progress", "none")
    assert res.returncode == 0, res.stderr
    few = _jsonl(out / "oidownload.boxes.jsonl.gz")  # nine images: the ids went to the reader as a set
    assert len(few) == 2 * 2 * 9
    monkeypatch.setattr(written_index, "FEW", 0)  # every row read and joined here...
    monkeypatch.setattr(written_index, "CHUNK", 4)  # ...a few rows at a time
    write_lock(str(out))
    assert _jsonl(out / "oidownload.boxes.jsonl.gz") == few
    rows = journals.outcomes(out)
    for line in few:  # in the written frame of a cropped image
        r = rows[line["image_id"]].raw
        assert line["file_name"] == f"{line['image_id']}.jpg" and r["crop"] is not None
