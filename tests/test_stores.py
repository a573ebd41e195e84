"""Object-store outputs, one suite over the stores (stores.py: a store is one entry,
either layout goes into it): S3 (SeaweedFS), Azure Blob Storage (Azurite) and the
reading side of gs:// (fake-gcs-server, which takes no XML-API writes). Every image once
and readable, a stateless rerun that makes no image request, wrong credentials and a
missing container refused before any download, and every reading command (status,
report, verify, annotations COCO and CSV, gallery) through the store."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import V3, run_cli

VAL = V3 / "validation"
BOXES = VAL / "annotations-human-bbox.csv"


def _boxed_ids(n: int) -> list[str]:
    with open(BOXES, newline="", encoding="utf-8") as f:
        boxed = {r["ImageID"] for r in csv.DictReader(f)}
    with open(VAL / "images.csv", newline="", encoding="utf-8") as f:
        return [r["ImageID"] for r in csv.DictReader(f) if r["ImageID"] in boxed][:n]


@dataclass
class Target:
    scheme: str
    server: Any  # s3server.S3Server or azurite.Azurite: make_bucket, keys, store
    env: dict[str, str]  # what a user sets for this store
    wrong: dict[str, str]  # the same with a wrong secret

    def make(self, name: str) -> str:
        """A new bucket of this store: s3 and gs share one server, so the name has the scheme."""
        name = f"{self.scheme}-{name}"
        self.server.make_bucket(name)
        return name

    def read(self, bucket: str, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.server.store(bucket), key).bytes())


def _gs_env(s3: Any) -> dict[str, str]:
    """gs:// is Cloud Storage's S3 dialect (HMAC keys); its writes are tested against
    SeaweedFS as the endpoint (STORAGE_EMULATOR_HOST), since no GCS emulator takes them."""
    return {"AWS_ACCESS_KEY_ID": s3.env["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": s3.env["AWS_SECRET_ACCESS_KEY"],
            "STORAGE_EMULATOR_HOST": s3.endpoint}


@pytest.fixture(params=["s3", "az", "gs"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "az":
        az = request.getfixturevalue("azurite")
        from oidownload.testing.azurite import KEY

        return Target("az", az, az.env, az.env | {"AZURE_STORAGE_ACCOUNT_KEY": "QUJD" + KEY[4:]})
    s3 = request.getfixturevalue("s3")
    env = s3.env if request.param == "s3" else _gs_env(s3)
    return Target(request.param, s3, env, env | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"})


def _samples(target: Target, bucket: str, prefix: str) -> Counter[str]:
    """ImageID → how often it is in a final shard of the store; every image decodes."""
    seen: Counter[str] = Counter()
    for key in target.server.keys(bucket, prefix):
        if not key.endswith(".tar"):
            continue
        with tarfile.open(fileobj=io.BytesIO(target.read(bucket, key))) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg") and ".original." not in m.name:
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                    seen[m.name.split(".")[0]] += 1
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_every_image_once_read_back_and_a_stateless_rerun_fetches_nothing(
        tmp_path: Path, make_origin: StartOrigin, target: Target, fmt: str) -> None:
    ids = _boxed_ids(24)
    corpus = Corpus.generate(0, mix="tiny", seed=26, ids=ids, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    bucket = target.make(f"stores-{fmt}")
    out = f"{target.scheme}://{bucket}/run"
    env = target.env | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    args = ("download", manifest, "-o", out, "--output-format", fmt, "--shard-size", "10", "--resize", "96",
            "--progress", "none")
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.stderr
    if fmt == "files":
        images = [k for k in target.server.keys(bucket, "run") if k.endswith(".jpg")]
        assert sorted(Path(k).stem for k in images) == sorted(ids)
        for key in images:
            with Image.open(io.BytesIO(target.read(bucket, key))) as im:
                assert max(im.size) == 96
    else:
        assert _samples(target, bucket, "run") == Counter({i: 1 for i in ids})
    assert not [k for k in target.server.keys(bucket) if k.endswith((".part", ".oidtmp")) or "oidownload-check" in k]

    # The reading commands, through the store.
    st = run_cli("status", out, "--json", env=env)
    assert st.returncode == 0 and json.loads(st.stdout)["by_status"]["ok"]["count"] == 24, st.stderr
    rep = run_cli("report", out, "-d", tmp_path / "report", env=env)
    assert rep.returncode == 0, rep.stderr
    with open(tmp_path / "report" / "success.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 24
    ver = run_cli("verify", out, "--progress", "none", env=env)
    assert ver.returncode == 0 and "24 ok" in ver.stderr, ver.stdout + ver.stderr
    coco = run_cli("annotations", out, "--format", "coco", "--annotations", BOXES, "-d", tmp_path / "coco", env=env)
    assert coco.returncode == 0, coco.stderr
    doc = json.loads((tmp_path / "coco" / "coco.json").read_text())
    assert {im["open_images_id"] for im in doc["images"]} == set(ids) and doc["annotations"]
    assert all(im["width"] <= 96 and im["height"] <= 96 for im in doc["images"])  # the written sizes, read back
    flat = run_cli("annotations", out, "--format", "csv", "--annotations", BOXES, "-d", tmp_path / "csv", env=env)
    assert flat.returncode == 0, flat.stderr
    assert list((tmp_path / "csv").rglob("*.csv"))
    gal = run_cli("gallery", out, "-o", tmp_path / "gallery", "--annotations", BOXES, "--progress", "none", env=env)
    assert gal.returncode == 0, gal.stderr
    assert (tmp_path / "gallery" / "index.html").is_file()
    assert "Traceback" not in "".join(r.stderr for r in (res, st, rep, ver, coco, flat, gal))

    # A pod restarted on a fresh disk: the journal is rebuilt from the store, no image is fetched again.
    shutil.rmtree(tmp_path / "xdg")
    before = sum(origin.requests.values())
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert "found 24 image(s) already in" in again.stderr
    assert sum(origin.requests.values()) == before


@pytest.mark.slow
def test_sigkills_lose_and_duplicate_nothing(tmp_path: Path, make_origin: StartOrigin, target: Target) -> None:
    """Shards into the store, the run killed at random moments: no image journaled as done
    is fetched again, and in the end every image is in exactly one uploaded shard."""
    import os
    import random
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from oidownload.testing.origin import Latency

    corpus = Corpus.generate(150, mix="tiny", seed=30)
    origin = make_origin(corpus, latency=Latency(0.06, 0.3))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    bucket = target.make("stores-kill")
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", f"{target.scheme}://{bucket}/run",
           "--state-dir", str(state), "--output-format", "webdataset", "--shard-size", "15", "--resize", "48",
           "--concurrency", "4", "--progress", "none"]
    env = {**os.environ, **target.env}

    def done() -> set[str]:
        ids: set[str] = set()
        for path in state.glob("journal-*.sqlite"):
            conn = sqlite3.connect(path)
            ids |= {format(r % (1 << 64), "016x") for (r,) in conn.execute("SELECT id FROM outcomes WHERE status='ok'")}
            conn.close()
        return ids

    rng = random.Random(26)
    kills = 0
    while kills < 4:
        before, asked = done(), dict(origin.requests)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.6, 1.4))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        assert all(origin.requests[f"/o/{i}_o.jpg"] == asked.get(f"/o/{i}_o.jpg", 0) for i in before)
    assert kills >= 2, "the run finished too soon to be killed"
    before, asked = done(), dict(origin.requests)
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert final.returncode == 0, final.stderr[-3000:]
    assert all(origin.requests[f"/o/{i}_o.jpg"] == asked.get(f"/o/{i}_o.jpg", 0) for i in before)
    assert _samples(target, bucket, "run") == Counter({i: 1 for i in corpus.ids})


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_wrong_credentials_and_a_missing_container_stop_before_any_download(
        tmp_path: Path, make_origin: StartOrigin, target: Target, fmt: str) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=27)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    bucket = target.make("stores-creds")
    res = run_cli("download", manifest, "-o", f"{target.scheme}://{bucket}/x", "--output-format", fmt,
                  env=target.wrong | {"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert res.returncode == 1, res.stderr
    assert f"cannot write to {target.scheme}://{bucket}/x" in res.stderr and "Traceback" not in res.stderr
    assert ("403" in res.stderr or "SignatureDoesNotMatch" in res.stderr
            or "AuthorizationFailure" in res.stderr), res.stderr
    res = run_cli("download", manifest, "-o", f"{target.scheme}://no-such-container-here/x", "--output-format", fmt,
                  env=target.env | {"XDG_STATE_HOME": str(tmp_path / "xdg2")})
    assert res.returncode == 1, res.stderr
    assert "no-such-container-here" in res.stderr and "Traceback" not in res.stderr
    assert sum(origin.requests.values()) == 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_gs_reads_from_a_cloud_storage_emulator(tmp_path: Path, make_origin: StartOrigin, s3: Any, fake_gcs: Any,
                                                fmt: str) -> None:
    """The reading commands of a gs:// output against fake-gcs-server's XML API: the
    output is written through the S3 dialect (to SeaweedFS), copied object by object
    into the emulator, and read back from there with the same state dir."""
    ids = _boxed_ids(12)
    corpus = Corpus.generate(0, mix="tiny", seed=29, ids=ids, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    bucket = f"gcs-read-{fmt}"
    s3.make_bucket(bucket)
    out = f"gs://{bucket}/p"
    xdg = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    res = run_cli("download", manifest, "-o", out, "--output-format", fmt, "--shard-size", "5", "--resize", "80",
                  "--progress", "none", env=_gs_env(s3) | xdg)
    assert res.returncode == 0, res.stderr
    import obstore

    fake_gcs.make_bucket(bucket)
    keys = s3.keys(bucket)
    assert keys
    for key in keys:
        fake_gcs.upload(bucket, key, bytes(obstore.get(s3.store(bucket), key).bytes()))
    s3_store = s3.store(bucket)
    for key in keys:  # nothing is left to read in SeaweedFS: every read below is the emulator's
        obstore.delete(s3_store, key)
    env = {"STORAGE_EMULATOR_HOST": fake_gcs.endpoint} | xdg  # no credentials: the emulator checks none
    st = run_cli("status", out, "--json", env=env)
    assert st.returncode == 0 and json.loads(st.stdout)["by_status"]["ok"]["count"] == 12, st.stderr
    ver = run_cli("verify", out, "--progress", "none", "--no-mark", env=env)
    assert ver.returncode == 0 and "12 ok" in ver.stderr, ver.stdout + ver.stderr
    coco = run_cli("annotations", out, "--format", "coco", "--annotations", BOXES, "-d", tmp_path / "coco", env=env)
    assert coco.returncode == 0, coco.stderr
    doc = json.loads((tmp_path / "coco" / "coco.json").read_text())
    assert {im["open_images_id"] for im in doc["images"]} == set(ids)
    gal = run_cli("gallery", out, "-o", tmp_path / "gallery", "--annotations", BOXES, "--progress", "none", env=env)
    assert gal.returncode == 0, gal.stderr
    # Writing is what the emulator cannot do: the check before any download says so.
    again = run_cli("download", manifest, "-o", out, "--output-format", fmt, env=env)
    assert again.returncode == 1 and f"cannot write to {out}" in again.stderr, again.stderr
    assert "Traceback" not in "".join(r.stderr for r in (st, ver, coco, gal, again))


def test_a_large_shard_goes_up_in_parts_and_reads_back_by_range(tmp_path: Path, target: Target,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed shard of 12 MiB is a multipart (Azure: block) upload of 5 MiB parts, read
    back whole and by range through the sink's own blobs."""
    import os

    from oidownload.sinks.s3 import S3Blobs, parse_uri

    bucket = target.make("stores-large")
    for key, value in target.env.items():
        monkeypatch.setenv(key, value)
    blobs = S3Blobs(parse_uri(f"{target.scheme}://{bucket}/big"))
    data = os.urandom(12 * 1024 * 1024 + 123)
    shard = tmp_path / "00000-00000.tar"
    shard.write_bytes(data)
    blobs.check_writable()
    blobs.put_file("validation/00000-00000.tar", shard)
    assert blobs.read("validation/00000-00000.tar") == data
    assert blobs.read_range("validation/00000-00000.tar", 5 * 1024 * 1024 - 7, 100) == data[5 * 1024 * 1024 - 7:][:100]
    assert dict(blobs.files("validation")) == {"00000-00000.tar": len(data)}
    assert blobs.folders("") == ["validation"]


def test_azure_connection_string(tmp_path: Path, make_origin: StartOrigin, azurite: Any) -> None:
    """AZURE_STORAGE_CONNECTION_STRING alone (as the portal and Azurite print it) is enough."""
    corpus = Corpus.generate(6, mix="tiny", seed=28)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    azurite.make_bucket("conn-string")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    res = run_cli("download", manifest, "-o", "az://conn-string/p", env=env)
    assert res.returncode == 0, res.stderr
    assert len([k for k in azurite.keys("conn-string", "p") if k.endswith(".jpg")]) == 6
    assert run_cli("status", "az://conn-string/p", env=env).returncode == 0
    # fsspec's spelling of the same store
    res = run_cli("download", manifest, "-o", "abfs://conn-string/q", env=env)
    assert res.returncode == 0 and "files in abfs://conn-string/q" in res.stderr, res.stderr
    assert len([k for k in azurite.keys("conn-string", "q") if k.endswith(".jpg")]) == 6


def test_store_names_are_checked(tmp_path: Path) -> None:
    manifest = Corpus.generate(1, mix="tiny").write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    for out, why in (("az://Bad_Container/x", "is not a az:// container name"),
                     ("gs://x/p", "is not a gs:// bucket name"),
                     ("ftp://host/p", "only local folders and s3://, az://, gs://")):
        res = run_cli("download", manifest, "-o", out, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
        assert res.returncode != 0 and why in res.stderr, res.stderr
