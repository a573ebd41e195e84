"""What a run got, written down: the SHA-256 of every written image in the journal,
the lock file (oidownload.lock.jsonl.gz) streamed from the journals, `verify --lock`
on a copy, `download --from-lock` elsewhere, and the Croissant card."""

from __future__ import annotations

import csv
import gzip
import hashlib
import html
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obstore
import pytest

from oidownload.core.ids import id_to_int
from oidownload.core.shard import Shard
from oidownload.state.journal import Journal
from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Origin
from oidownload.testing.s3server import PUBLIC_BUCKET
from tests.conftest import require, run_cli
from tests.test_mirror import mirror  # noqa: F401  (a fixture)


def _download(tmp_path: Path, make_origin: StartOrigin, n: int, *extra: object,
              corpus: Corpus | None = None) -> tuple[Path, Path, Origin, Corpus]:
    corpus = corpus or Corpus.generate(n, mix="tiny", seed=25, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--resize", "64", "--progress", "none", *extra)
    assert res.returncode == 0, res.stderr
    return out, manifest, origin, corpus


def _journal(out: Path) -> dict[str, dict[str, Any]]:
    return {i: r.raw for i, r in journals.outcomes(out).items()}


def test_the_journal_holds_the_sha256_and_url_of_every_written_image(tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, origin, _ = _download(tmp_path, make_origin, 6)
    rows = _journal(out)
    assert len(rows) == 6
    for image_id, r in rows.items():
        data = (out / r["location"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["url"] == f"{origin.base_url}/o/{image_id}_o.jpg"


def _lock(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[0], rows[1:-1], rows[-1]


def test_every_run_writes_a_lock_with_a_line_per_image_and_lock_rewrites_it(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, manifest, origin, corpus = _download(tmp_path, make_origin, 8, "--limit", "8", "--seed", "1")
    head, lines, end = _lock(out / "oidownload.lock.jsonl.gz")
    assert head["selection"] == {"limit": 8, "seed": 1}
    assert head["kind"] == "oidownload-lock-v1" and head["pillow"].startswith("Pillow")
    assert head["settings"]["resize"] == 64 and head["settings"]["output_format"] == "files"
    [inp] = head["inputs"]
    assert inp["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest() and inp["size"] == manifest.stat().st_size
    assert end == {"end": True, "images": 8, "counts": {"ok": 8}}
    assert [line["id"] for line in lines] == sorted(corpus.ids)
    rows = _journal(out)
    for line in lines:
        r = rows[line["id"]]
        data = (out / line["location"]).read_bytes()
        assert line["sha256"] == hashlib.sha256(data).hexdigest() and line["size"] == len(data)
        assert (line["width"], line["height"]) == (r["width"], r["height"])
        assert line["source"] == "original" and line["md5_matched"] is True
        assert line["url"] == f"{origin.base_url}/o/{line['id']}_o.jpg" and line["subset"] == "validation"
    st = run_cli("status", out)
    assert "lock: current" in st.stdout, st.stdout
    assert json.loads(run_cli("status", out, "--json").stdout)["lock"].startswith("current")
    (out / "oidownload.lock.jsonl.gz").unlink()
    assert json.loads(run_cli("status", out, "--json").stdout)["lock"] is None
    res = run_cli("lock", out)
    assert res.returncode == 0, res.stderr
    assert "8 images (8 ok)" in res.stdout
    assert _lock(out / "oidownload.lock.jsonl.gz")[1] == lines
    (out / lines[0]["location"]).unlink()
    assert run_cli("verify", out, "--progress", "none").returncode == 6  # marks it damaged: the journal moved on
    st = run_cli("status", out)
    assert "lock: not current" in st.stdout, st.stdout


def _big_journal(out: Path, n: int) -> None:
    """A journal of n written images, made straight in SQLite (no images needed to
    write their lock)."""
    journal = Journal(out / ".oidownload", Shard(0, 1), str(out))
    journal.set_meta("output", json.dumps({"out": str(out), "kind": "files"}))
    journal.close()
    conn = sqlite3.connect(out / ".oidownload" / "journal-0-of-1.sqlite")
    rng = random.Random(25)
    rows = []
    for _ in range(n):
        image_id = f"{rng.getrandbits(64):016x}"
        rows.append((id_to_int(image_id), "ok", 1, "", 200, 1000, 900, 64, 48, 1, 0.1, "train", "jpg", "original", 1,
                     None, None, 1.0, 1, None, f"train/{image_id[:3]}/{image_id}.jpg", hashlib.sha256(image_id.encode()).hexdigest(),
                     f"http://127.0.0.1:9/o/{image_id}_o.jpg"))
    with conn:
        conn.executemany("INSERT OR IGNORE INTO outcomes(id, status, final, detail, http_status, nbytes, out_bytes, width, "
                         "height, attempts, seconds, subset, ext, source, verified, input, line, finished, orientation, "
                         "crop, location, sha256, url) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.close()


def test_a_kill_while_the_lock_is_written_leaves_the_previous_lock_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _big_journal(out, 30_000)
    res = run_cli("lock", out)
    assert res.returncode == 0, res.stderr
    lock = out / "oidownload.lock.jsonl.gz"
    before = lock.read_bytes()
    for _ in range(3):  # the kill must land while the temporary lock is being written
        proc = subprocess.Popen([sys.executable, "-m", "oidownload", "lock", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = [p for p in out.glob(".oidownload.lock.jsonl.gz.*") if p.stat().st_size > 0]
            if tmp:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert lock.read_bytes() == before
    _, lines, end = _lock(lock)
    assert end["images"] == 30_000 and len(lines) == 30_000


def _copy(out: Path, dest: Path) -> Path:
    """The output as another machine gets it: the data and the lock, no journal."""
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns(".oidownload"))
    return dest


def _problems(res: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], str]:
    found = {}
    for line in res.stdout.splitlines():
        kind, image_id, where, _why = line.split("\t")
        found[(kind, image_id)] = where
    return found


def test_verify_lock_on_a_copy_of_files_finds_a_flipped_byte_a_deleted_and_an_extra_file(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, _, corpus = _download(tmp_path, make_origin, 10)
    lock = tmp_path / "shared.lock.jsonl.gz"
    shutil.copy(out / "oidownload.lock.jsonl.gz", lock)
    clean = _copy(out, tmp_path / "clean")
    res = run_cli("verify", clean, "--lock", lock, "--progress", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "10 images hashed" in res.stderr and "0 missing, 0 extra, 0 different" in res.stderr

    copy = _copy(out, tmp_path / "copy")
    ids = sorted(corpus.ids)
    flipped, deleted = ids[2], ids[5]
    path = {i: copy / "validation" / i[:3] / f"{i}.jpg" for i in ids}
    data = bytearray(path[flipped].read_bytes())
    data[len(data) // 2] ^= 0x01
    path[flipped].write_bytes(bytes(data))
    path[deleted].unlink()
    stranger = "00000000deadbeef"
    (copy / "validation" / "000").mkdir()
    (copy / "validation" / "000" / f"{stranger}.jpg").write_bytes(bytes(path[ids[0]].read_bytes()))
    res = run_cli("verify", copy, "--lock", lock, "--progress", "none")
    assert res.returncode == 6, res.stdout + res.stderr
    assert set(_problems(res)) == {("different", flipped), ("missing", deleted), ("extra", stranger)}


def test_verify_lock_on_a_copy_of_shards_finds_a_flipped_byte_an_extra_shard_and_a_truncated_shard(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, *_ = _download(tmp_path, make_origin, 12, "--output-format", "webdataset", "--shard-size", "4")
    lock = out / "oidownload.lock.jsonl.gz"
    clean = _copy(out, tmp_path / "clean")
    res = run_cli("verify", clean, "--lock", lock, "--progress", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "12 images hashed" in res.stderr

    copy = _copy(out, tmp_path / "copy")
    shards = sorted((copy / "validation").glob("*.tar"))
    assert len(shards) == 3
    index = json.loads(Path(f"{shards[0]}.idx.json").read_text())
    first = index["samples"][1]
    offset, size = first["members"]["jpg"]
    data = bytearray(shards[0].read_bytes())
    # The index keeps each sample's hash, so that a shard adopted after a crash keeps it too.
    assert first["sha256"] == hashlib.sha256(data[offset:offset + size]).hexdigest()
    data[offset + size // 2] ^= 0x01
    shards[0].write_bytes(bytes(data))
    last = json.loads(Path(f"{shards[2]}.idx.json").read_text())["samples"]
    cut = last[2]["members"]["jpg"][0] + 10  # inside the third sample's image
    with open(shards[2], "r+b") as f:
        f.truncate(cut)
    stranger = "00000000deadbeef"
    with tarfile.open(copy / "validation" / "00009-00000.tar", "w") as tar:
        info = tarfile.TarInfo(f"{stranger}.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    res = run_cli("verify", copy, "--lock", lock, "--progress", "none")
    assert res.returncode == 6, res.stdout + res.stderr
    found = _problems(res)
    assert set(found) == {("different", first["key"]), ("extra", stranger), ("damaged", ""),
                          ("missing", last[2]["key"]), ("missing", last[3]["key"])}, found
    assert found[("damaged", "")].endswith("00000-00002.tar")


def _from_lock_csv(out: Path) -> dict[str, str]:
    with open(out / "report" / "from-lock.csv", newline="", encoding="utf-8") as f:
        return {r["ImageID"]: r["verdict"] for r in csv.DictReader(f)}


@pytest.mark.slow
def test_from_lock_rebuilds_identical_and_names_what_changed(
        tmp_path: Path, make_origin: StartOrigin, mirror: Callable[..., None], s3: Any) -> None:  # noqa: F811
    corpus = Corpus.generate(8, mix="tiny", seed=26, subset="validation")
    ids = sorted(corpus.ids)
    changed, gone, mirrored = ids[1], ids[3], ids[5]
    mirror(corpus, [mirrored], "validation")
    mirror_url = f"{s3.endpoint}/{PUBLIC_BUCKET}"
    out, manifest, origin, _ = _download(tmp_path, make_origin, 0, "--fallback", "cvdf", "--mirror-url", mirror_url,
                                         corpus=corpus)
    lock = tmp_path / "paper.lock.jsonl.gz"
    shutil.copy(out / "oidownload.lock.jsonl.gz", lock)

    res = run_cli("download", manifest, "-o", tmp_path / "wrong", "--from-lock", lock, "--resize", "32")
    assert res.returncode != 0
    assert "--resize 32 conflicts with the lock's --resize 64" in res.stderr, res.stderr

    same = tmp_path / "same"
    res = run_cli("download", manifest, "-o", same, "--from-lock", lock, "--mirror-url", mirror_url, "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "against the lock: 8 identical, 0 different, 0 different source, 0 missing" in res.stderr, res.stderr
    assert _lock(same / "oidownload.lock.jsonl.gz")[0]["settings"]["resize"] == 64

    e = corpus.entries[changed]
    e.original = (e.original + 1) % len(corpus.originals)  # the origin now serves another file
    corpus.entries[gone].fault = Fault.parse("404")
    corpus.entries[mirrored].fault = Fault.parse("404")
    corpus.write_manifest(manifest, origin.base_url)
    later = tmp_path / "later"
    res = run_cli("download", manifest, "-o", later, "--from-lock", lock, "--mirror-url", mirror_url, "--progress", "none")
    assert res.returncode in (0, 3), res.stderr
    assert "against the lock: 5 identical, 1 different, 1 different source, 1 missing" in res.stderr, res.stderr
    rep = run_cli("report", later)
    assert rep.returncode == 0, rep.stderr
    verdicts = _from_lock_csv(later)
    assert {i: v for i, v in verdicts.items() if v != "identical"} == {
        changed: "different", gone: "missing", mirrored: "different_source"}
    assert len(verdicts) == 8


_RECORDS = """
import json, sys
import mlcroissant as mlc
out = []
for r in mlc.Dataset(jsonld=sys.argv[1]).records("images"):
    d = {k.split("/", 1)[1]: (v.decode() if isinstance(v, bytes) else v) for k, v in r.items() if k != "images/file"}
    d["file_size"] = list(r["images/file"].size)
    out.append(d)
print(json.dumps(out))
"""


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_the_croissant_card_validates_and_its_records_are_the_written_images(
        tmp_path: Path, make_origin: StartOrigin, fmt: str) -> None:
    require(importlib.util.find_spec("mlcroissant") is not None, "mlcroissant (pip install 'mlcroissant[image]')")
    # An ImageID of digits only must stay text (a reader's type guessing would make it 123).
    ids = [*(f"{random.Random(k).getrandbits(64):016x}" for k in range(6)), "0000000000000123"]
    corpus = Corpus.generate(0, mix="tiny", seed=25, subset="validation", ids=ids)
    out, manifest, _, corpus = _download(tmp_path, make_origin, 0, "--output-format", fmt, "--shard-size", "3",
                                         corpus=corpus)
    card = out / "croissant.json"
    env = {"CROISSANT_CACHE": str(tmp_path / "croissant-cache")}
    val = subprocess.run([str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld", str(card)],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=240)
    assert val.returncode == 0 and "Done." in val.stderr, val.stderr
    doc = json.loads(card.read_text())
    assert doc["license"] == "https://creativecommons.org/licenses/by/4.0/" and "OpenImages" in doc["citeAs"]
    lock = next(d for d in doc["distribution"] if d["@id"] == "lock")
    assert lock["sha256"] == hashlib.sha256((out / "oidownload.lock.jsonl.gz").read_bytes()).hexdigest()
    if fmt == "webdataset":
        shards = [d for d in doc["distribution"] if d["@id"].startswith("shard:")]
        assert len(shards) == 3
        for s in shards:
            assert s["sha256"] == hashlib.sha256((out / s["contentUrl"]).read_bytes()).hexdigest()
    res = subprocess.run([sys.executable, "-c", _RECORDS, str(card)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=240)
    assert res.returncode == 0, res.stderr
    records = {r["image_id"]: r for r in json.loads(res.stdout)}
    rows = _journal(out)
    listed = {line[0]: line for line in csv.reader(manifest.open(encoding="utf-8"))}
    assert set(records) == set(corpus.ids) == set(rows)
    for image_id, rec in records.items():
        r = rows[image_id]
        assert rec == {
            "file_name": f"{image_id}.jpg", "image_id": image_id, "subset": "validation", "width": r["width"],
            "height": r["height"], "license": listed[image_id][4], "author": html.unescape(listed[image_id][6]),
            "title": html.unescape(listed[image_id][7]), "source": "original", "sha256": r["sha256"],
            "file_size": [r["width"], r["height"]],
        }


def test_from_lock_alone_rebuilds_every_image_identical_and_checks_the_originals(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, _, corpus = _download(tmp_path, make_origin, 6, "--format", "webp", "--quality", "70")
    lock = out / "oidownload.lock.jsonl.gz"
    assert all(line["original_md5"] == corpus.listed(line["id"])[1] for line in _lock(lock)[1])
    res = run_cli("download", "-o", tmp_path / "none")
    assert res.returncode == 2 and "Missing argument 'INPUTS...'" in res.stderr, res.stderr
    again = tmp_path / "again"
    res = run_cli("download", "-o", again, "--from-lock", lock, "--progress", "none")  # no input list: the lock's URLs
    assert res.returncode == 0, res.stderr
    assert "against the lock: 6 identical, 0 different, 0 different source, 0 missing" in res.stderr, res.stderr
    head, lines, _ = _lock(again / "oidownload.lock.jsonl.gz")
    assert head["settings"]["format"] == "webp" and head["settings"]["quality"] == 70
    assert all(line["md5_matched"] for line in lines)  # the lock's OriginalMD5 was checked again
    # Its own lock, in place: the run's end replaces it, so a copy is what it is compared with. One image
    # is lost and its origin file changed meanwhile (its MD5 no longer matches): missing, not identical.
    lost = lines[0]
    (again / lost["location"]).unlink()
    assert run_cli("verify", again, "--progress", "none").returncode == 6
    e = corpus.entries[lost["id"]]
    e.original = (e.original + 1) % len(corpus.originals)
    res = run_cli("download", "-o", again, "--from-lock", again / "oidownload.lock.jsonl.gz", "--progress", "none")
    assert res.returncode in (0, 3), res.stderr
    assert "against the lock: 5 identical, 0 different, 0 different source, 1 missing" in res.stderr, res.stderr
    res = run_cli("download", "-o", tmp_path / "other", "--from-lock", lock, "--ids", tmp_path / "images.csv")
    assert res.returncode == 2 and "--ids cannot be combined with it" in res.stderr, res.stderr


def test_a_bucket_output_gets_its_lock_beside_the_data_and_verify_lock_reads_it_there(
        tmp_path: Path, make_origin: StartOrigin, s3: Any) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=27, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    env = dict(s3.env) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    s3.make_bucket("locked")
    res = run_cli("download", manifest, "-o", "s3://locked/v", "--resize", "64", "--progress", "none", env=env)
    assert res.returncode == 0, res.stderr
    assert "v/oidownload.lock.jsonl.gz" in s3.keys("locked", "v/")
    lock = tmp_path / "got.lock.jsonl.gz"
    lock.write_bytes(bytes(obstore.get(s3.store("locked"), "v/oidownload.lock.jsonl.gz").bytes()))
    assert _lock(lock)[2]["counts"] == {"ok": 5}
    res = run_cli("verify", "s3://locked/v", "--lock", lock, "--progress", "none", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 images hashed" in res.stderr


def test_lock_hashes_the_images_of_an_output_journaled_before_hashes_were_kept(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, *_ = _download(tmp_path, make_origin, 4, "--output-format", "webdataset")
    for path in (out / ".oidownload").glob("journal-*.sqlite"):
        conn = sqlite3.connect(path)
        with conn:  # as a journal of an older version: none of the columns the lock added
            for column in ("sha256", "url", "original_md5", "original_size"):
                conn.execute(f"ALTER TABLE outcomes DROP COLUMN {column}")
        conn.close()
    (out / "oidownload.lock.jsonl.gz").unlink()
    res = run_cli("lock", out)
    assert res.returncode == 0, res.stderr
    lines = _lock(out / "oidownload.lock.jsonl.gz")[1]
    rows = _journal(out)
    tars = {}
    for tar_path in (out / "validation").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            tars.update({m.name.split(".")[0]: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                         if m.name.endswith(".jpg")})
    assert len(lines) == 4 and all("sha256" not in rows[line["id"]] for line in lines)
    for line in lines:
        assert line["sha256"] == hashlib.sha256(tars[line["id"]]).hexdigest()
    assert json.loads((out / "croissant.json").read_text())["recordSet"][1]["name"] == "images"


_BOX_RECORDS = """
import json, sys
import mlcroissant as mlc
print(json.dumps([{k.split("/", 1)[1]: (v.decode() if isinstance(v, bytes) else v) for k, v in r.items()}
                  for r in mlc.Dataset(jsonld=sys.argv[1]).records(sys.argv[2])]))
"""


def test_the_card_has_the_boxes_in_the_written_frame_and_the_labels_when_the_download_selected_by_them(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    require(importlib.util.find_spec("mlcroissant") is not None, "mlcroissant (pip install 'mlcroissant[image]')")
    corpus = Corpus.generate(5, mix="tiny", seed=28, subset="validation")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n{i},xclick,/m/01g317,1,0.3,0.9,0.4,0.8\n"
                               for i in corpus.ids))
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\n"
                      + "".join(f"{i},verification,/m/0152hh,1\n{i},machine,/m/01g317,0.7\n" for i in corpus.ids))
    desc = tmp_path / "desc.csv"
    desc.write_text("/m/0152hh,Snowman\n/m/01g317,Person\n")
    out, *_ = _download(tmp_path, make_origin, 0, "--resize-mode", "fill", "--class", "Snowman", "--annotations", boxes,
                        "--annotations", labels, "--class-descriptions", desc, corpus=corpus)
    card = out / "croissant.json"
    env = {**os.environ, "CROISSANT_CACHE": str(tmp_path / "croissant-cache")}
    val = subprocess.run([str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld", str(card)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert val.returncode == 0, val.stderr
    res = subprocess.run([sys.executable, "-c", _BOX_RECORDS, str(card), "boxes"], capture_output=True, text=True,
                         env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    got = sorted((r["image_id"], r["label"], r["class_name"], *(f"{r[c]:.6f}" for c in ("xmin", "xmax", "ymin", "ymax")))
                 for r in json.loads(res.stdout))
    exp = run_cli("annotations", out, "--format", "csv", "-d", tmp_path / "ann")
    assert exp.returncode == 0, exp.stderr
    with open(tmp_path / "ann" / "boxes.csv", newline="", encoding="utf-8") as f:
        want = sorted((r["ImageID"], r["LabelName"], "Snowman", r["XMin"], r["XMax"], r["YMin"], r["YMax"])
                      for r in csv.DictReader(f))
    assert got == want and len(got) == 5  # only the selected class, as the export
    res = subprocess.run([sys.executable, "-c", _BOX_RECORDS, str(card), "labels"], capture_output=True, text=True,
                         env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    got = sorted((r["image_id"], r["label"], r["class_name"], r["source"], r["confidence"]) for r in json.loads(res.stdout))
    with open(tmp_path / "ann" / "labels.csv", newline="", encoding="utf-8") as f:
        want_labels = sorted((r["ImageID"], r["LabelName"], "Snowman", r["Source"], float(r["Confidence"]))
                      for r in csv.DictReader(f))
    assert got == want_labels and len(got) == 5


def test_verify_lock_passes_a_webdataset_whose_damaged_sample_was_fetched_again_into_a_new_shard(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, manifest, *_ = _download(tmp_path, make_origin, 6, "--output-format", "webdataset", "--shard-size", "3")
    shard = out / "validation" / "validation-00000-00000.tar"
    sample = json.loads(Path(f"{shard}.idx.json").read_text())["samples"][0]
    offset, size = sample["members"]["jpg"]
    data = bytearray(shard.read_bytes())
    data[offset:offset + size] = bytes(size)  # no longer an image: verify marks it damaged
    shard.write_bytes(bytes(data))
    assert run_cli("verify", out, "--progress", "none").returncode == 6
    res = run_cli("download", manifest, "-o", out, "--resize", "64", "--output-format", "webdataset", "--shard-size", "3",
                  "--progress", "none")
    assert res.returncode == 0, res.stderr
    lines = {line["id"]: line for line in _lock(out / "oidownload.lock.jsonl.gz")[1]}
    assert not lines[sample["key"]]["location"].startswith("validation/validation-00000-00000.tar")
    res = run_cli("verify", out, "--lock", out / "oidownload.lock.jsonl.gz", "--progress", "none")
    assert res.returncode == 0, res.stdout + res.stderr  # the old copy in the old shard is no extra image
