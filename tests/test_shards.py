"""The `webdataset` output and `s3://` output, against the local origin and a real S3
server (SeaweedFS): every image exactly once and decodable, loaders read the shards,
SIGKILLs at random moments lose nothing that was journaled, a lost state dir resumes
from the output, bad credentials stop the run before any download."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import run_cli


def _env(s3: Any) -> dict[str, str]:
    return dict(s3.env)


def _tars(out: str, s3: Any, tmp: Path) -> dict[str, bytes]:
    """Every final shard of the output, name → bytes (downloaded for s3://)."""
    found: dict[str, bytes] = {}
    if out.startswith("s3://"):
        import obstore

        bucket, _, prefix = out[5:].partition("/")
        store = s3.store(bucket)
        for key in s3.keys(bucket, prefix):
            if key.endswith(".tar"):
                found[key] = bytes(obstore.get(store, key).bytes())
    else:
        for path in Path(out).rglob("*.tar"):
            found[str(path)] = path.read_bytes()
    return found


def _all_keys(out: str, s3: Any) -> list[str]:
    if out.startswith("s3://"):
        bucket, _, prefix = out[5:].partition("/")
        return list(s3.keys(bucket, prefix))
    return [str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file() and ".oidownload" not in p.parts]


def _check_shards(out: str, s3: Any, tmp: Path, expected: set[str]) -> None:
    """Every expected image exactly once, each a whole JPEG with its JSON, in shards that
    tarfile and webdataset read without error."""
    import webdataset as wds

    tars = _tars(out, s3, tmp)
    assert tars, "no shards"
    seen: Counter[str] = Counter()
    local = tmp / f"shards-{len(list(tmp.iterdir()))}"
    local.mkdir()
    for name, data in tars.items():
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
        keys = {n.split(".", 1)[0] for n in members}
        for key in keys:
            seen[key] += 1
            meta = json.loads(members[f"{key}.json"])
            assert meta["ImageID"] == key and meta["source"] == "original" and meta["verified"] is True
            with Image.open(io.BytesIO(members[f"{key}.jpg"])) as im:
                im.load()
                assert im.size == (meta["width"], meta["height"])
        (local / Path(name).name).write_bytes(data)
    assert set(seen) == expected and all(n == 1 for n in seen.values()), {k: n for k, n in seen.items() if n != 1}
    samples = list(wds.WebDataset(sorted(str(p) for p in local.glob("*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(expected)
    assert not [k for k in _all_keys(out, s3) if k.endswith((".part", ".oidtmp"))]


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_image_once_in_each_output(tmp_path: Path, make_origin: StartOrigin, s3: Any, fmt: str, where: str) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=71)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    env = _env(s3) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    if where == "s3":
        s3.make_bucket("out-once")
        out = f"s3://out-once/{fmt}/run"
    else:
        out = str(tmp_path / "out")
    res = run_cli("download", manifest, "-o", out, "--output-format", fmt, "--shard-size", "25", "--resize", "64",
                  "--keep-original", env=env)
    assert res.returncode == 0, res.stderr
    if fmt == "webdataset":
        _check_shards(out, s3, tmp_path, set(corpus.ids))
        lists = [k for k in _all_keys(out, s3) if k.endswith("shards.json")]
        assert len(lists) == 1
    else:
        keys = _all_keys(out, s3)
        images = [k for k in keys if k.endswith(".jpg") and "original/" not in k]
        assert sorted(Path(k).stem for k in images) == sorted(corpus.ids)
        originals = [k for k in keys if "original/" in k]
        assert len(originals) == 60
    # The read side: status, report and annotations find every image by its location.
    st = run_cli("status", out, "--json", env=env)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["by_status"]["ok"]["count"] == 60
    dest = tmp_path / "report"
    rep = run_cli("report", out, "-d", dest, env=env)
    assert rep.returncode == 0, rep.stderr
    with open(dest / "success.csv", newline="") as f:
        import csv

        rows = list(csv.DictReader(f))
    assert len(rows) == 60
    from oidownload.state.reader import StateDir
    from oidownload.state.reader import default_state_dir as sd

    os.environ.update(env)
    try:
        state = StateDir.open(out, None)
        assert sd(out) == state.path
        reader = state.reader()
        for w in state.written():
            with Image.open(io.BytesIO(reader.read(w.location))) as im:
                assert im.size == (w.width, w.height)
        assert {r["location"] for r in rows} == {w.location for w in state.written()}
    finally:
        for k in env:
            os.environ.pop(k, None)


def test_bad_credentials_stop_before_any_download(tmp_path: Path, make_origin: StartOrigin, s3: Any) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=72)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    s3.make_bucket("out-creds")
    env = _env(s3) | {"AWS_SECRET_ACCESS_KEY": "not-the-secret", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    for fmt in ("files", "webdataset"):
        res = run_cli("download", manifest, "-o", "s3://out-creds/x", "--output-format", fmt, env=env)
        assert res.returncode == 1, res.stderr
        assert "out-creds" in res.stderr and "403" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("download", manifest, "-o", "s3://no-such-bucket-here/x", env=_env(s3) | {"XDG_STATE_HOME": str(tmp_path / "x2")})
    assert res.returncode == 1 and "NoSuchBucket" in res.stderr, res.stderr
    assert sum(origin.requests.values()) == 0


def _journal_ok(state: Path, *, read_only: bool = False) -> set[str]:
    return {i for i, s in journals.statuses(state, read_only=read_only).items() if s == "ok"}


def _statuses(state: Path, ids: set[str]) -> dict[str, str]:
    return {i: f"{r.status} {r.detail} {r.location}" for i, r in journals.outcomes(state).items() if i in ids}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, make_origin: StartOrigin, s3: Any,
                                                                where: str) -> None:
    corpus = Corpus.generate(300, mix="tiny", seed=73)
    origin = make_origin(corpus, latency=Latency(0.06, 0.3))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    state = tmp_path / "state"
    if where == "s3":
        s3.make_bucket("out-kill")
        out = "s3://out-kill/run"
    else:
        out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", out, "--state-dir", str(state),
           "--output-format", "webdataset", "--shard-size", "15", "--resize", "48", "--concurrency", "4",
           "--progress", "none"]
    env = {**os.environ, **_env(s3)}
    rng = random.Random(int(os.environ.get("OIDL_KILL_SEED", "0")) or (7 if where == "local" else 8))
    kills = 0
    while kills < 10:
        done_before = _journal_ok(state)
        requests_before = dict(origin.requests)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 1.2))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            break  # it finished before the kill: the rest is checked below
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        # Nothing recorded done before this run was asked for again.
        for image_id in done_before:
            assert origin.requests[f"/o/{image_id}_o.jpg"] == requests_before.get(f"/o/{image_id}_o.jpg", 0)
    assert kills >= 5, "the run finished too soon to be killed often enough"
    done_before = _journal_ok(state)
    requests_before = dict(origin.requests)
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert final.returncode == 0, final.stderr[-3000:]
    for image_id in done_before:
        assert origin.requests[f"/o/{image_id}_o.jpg"] == requests_before.get(f"/o/{image_id}_o.jpg", 0)
    missing = set(corpus.ids) - _journal_ok(state)
    assert not missing, (sorted(missing)[:5], final.stderr[-3000:], _statuses(state, missing))
    _check_shards(out, s3, tmp_path, set(corpus.ids))
    staged = list((state / "staging").rglob("*"))
    assert not [p for p in staged if p.is_file()]
    assert not list(state.rglob("*.part"))


def test_a_resplit_after_a_stop_mid_shard_keeps_every_image_once(tmp_path: Path, make_origin: StartOrigin) -> None:
    """A run stopped with its shard open (Ctrl-C, and the requests that hang outlast
    --grace: they are abandoned, and the open shard stays open for the next run), then
    the same output split two ways (--resplit): the new task 0 finds the old task 0's
    open shard under its own names. The old journal holds those samples as done, so
    nothing fetches them again: the shard must be closed with them in it, not cleaned
    up as a leftover."""
    corpus = Corpus.generate(30, mix="tiny", seed=76)
    served, hung = corpus.ids[:15], corpus.ids[15:]
    for image_id in hung:
        corpus.entries[image_id].fault = Fault("hang", 1)  # the stopped run's requests only
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ["download", str(manifest), "-o", str(out), "--output-format", "webdataset", "--shard-size", "100",
            "--resize", "48", "--concurrency", "20", "--progress", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", *args, "--grace", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _journal_ok(out / ".oidownload", read_only=True) != set(served):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(out.rglob(".*-00000-00000.tar.part")), "the stopped run left no open shard"
    for k in range(2):
        res = run_cli(*args, "--num-shards", "2", "--shard-index", str(k), "--resplit")
        assert res.returncode == 0, res.stderr
    fetched = Counter({i: n for path, n in origin.requests.items() for i in corpus.ids if f"/{i}_o.jpg" in path})
    assert all(fetched[i] == 1 for i in served), fetched  # the stopped run's images were not fetched again
    _check_shards(str(out), None, tmp_path, set(corpus.ids))
    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_lost_state_resumes_from_the_bucket(tmp_path: Path, make_origin: StartOrigin, s3: Any, fmt: str) -> None:
    corpus = Corpus.generate(50, mix="tiny", seed=74)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    s3.make_bucket("out-lost")
    out = f"s3://out-lost/{fmt}"
    env = _env(s3) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    args = ("download", manifest, "-o", out, "--output-format", fmt, "--shard-size", "20", "--resize", "64")
    first = run_cli(*args, "--limit", "30", env=env)
    assert first.returncode == 0, first.stderr
    import shutil

    shutil.rmtree(tmp_path / "xdg")  # a pod restarted on a fresh disk
    before = Counter(origin.requests)
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert "found 30 image(s) already in" in again.stderr
    fetched_again = {p for p, n in origin.requests.items() if n > before.get(p, 0)}
    assert len(fetched_again) == 20 and all(before.get(p, 0) == 0 for p in fetched_again)
    if fmt == "webdataset":
        _check_shards(out, s3, tmp_path, set(corpus.ids))
    else:
        assert len([k for k in s3.keys("out-lost", "files") if k.endswith(".jpg")]) == 50


@pytest.mark.parametrize("where", ["local", "s3"])
def test_annotations_of_shards_refer_to_samples(tmp_path: Path, make_origin: StartOrigin, s3: Any, where: str) -> None:
    """COCO from a webdataset output names each image by its sample's location, and the
    box count equals the real annotation rows of the downloaded images."""
    from tests.test_select import DESCRIPTIONS, VAL, mid_of, rows_of

    real = rows_of(VAL / "images.csv")[:80]
    corpus = Corpus.generate(0, mix="tiny", seed=75, ids=[r["ImageID"] for r in real], subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    env = _env(s3) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    if where == "s3":
        s3.make_bucket("out-ann")
        out = "s3://out-ann/wds"
    else:
        out = str(tmp_path / "out")
    boxes = VAL / "annotations-human-bbox.csv"
    res = run_cli("download", manifest, "-o", out, "--output-format", "webdataset", "--shard-size", "30",
                  "--class", "Wheel", "--class", "Person", "--class-descriptions", DESCRIPTIONS, "--annotations", boxes,
                  "--resize", "100", env=env)
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "ann"
    ann = run_cli("annotations", out, "--format", "coco", "-d", dest, env=env)
    assert ann.returncode == 0, ann.stderr
    doc = json.loads((dest / "coco.json").read_text())
    names = {im["open_images_id"]: im["file_name"] for im in doc["images"]}
    assert names and all(re.fullmatch(rf"validation/validation-\d{{5}}-\d{{5}}\.tar#{i}", n) for i, n in names.items())
    wanted = {mid_of("Wheel"), mid_of("Person")}
    expected = [r for r in rows_of(boxes) if r["ImageID"] in names and r["LabelName"] in wanted]
    assert len(doc["annotations"]) == len(expected) > 0
    if where == "s3":
        assert run_cli("annotations", out, "--format", "coco", env=env).returncode == 2  # no local OUT: -d is needed
