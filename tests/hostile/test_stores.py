"""Issue 28 section 3: an object store whose answers fail or never come. The summary,
the exit code and the journal say the same; a hung store never holds the process past
its grace, its --max-runtime or a second signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import run_cli
from tests.hostile.fakes3 import FakeS3


def _summary(stderr: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([a-z_0-9]+)\s+(\d+)\s", stderr, re.M)}


def _journal(state: Path) -> dict[str, str]:
    return journals.statuses(state)


def test_a_failed_upload_is_not_counted_as_written(tmp_path: Path, make_origin: StartOrigin, fake_s3: FakeS3) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=2801)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    refused = set(corpus.ids[:4])
    fake_s3.fail = lambda key: "SlowDown" if Path(key).stem in refused else None
    state = tmp_path / "state"
    res = run_cli("download", manifest, "-o", "s3://out/run", "--state-dir", state, "--progress", "log",
                  env=fake_s3.env)
    assert res.returncode == 5, res.stderr  # retryable failures are left
    summary = _summary(res.stderr)
    assert summary.get("ok") == 26 and summary.get("write_error") == 4, res.stderr
    journal = _journal(state)
    assert sorted(i for i, s in journal.items() if s == "write_error") == sorted(refused)
    assert sum(s == "ok" for s in journal.values()) == 26
    assert len([k for k in fake_s3.keys("out") if k.endswith(".jpg")]) == 26


def _hung_run(tmp_path: Path, make_origin: StartOrigin, fake_s3: FakeS3, fmt: str, *args: str) -> subprocess.Popen[str]:
    corpus = Corpus.generate(12, mix="tiny", seed=2802)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    # Every image (or shard) upload is accepted and never answered; the bucket check is.
    fake_s3.hang = lambda key: key.endswith((".jpg", ".tar", ".json"))
    cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", "s3://out/run", "--state-dir",
           str(tmp_path / "state"), "--output-format", fmt, "--shard-size", "4", "--progress", "log", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **fake_s3.env})


def _wait_hung(proc: subprocess.Popen[str], fake_s3: FakeS3) -> None:
    deadline = time.monotonic() + 60
    while not fake_s3.hung:
        assert proc.poll() is None and time.monotonic() < deadline, "no upload reached the store"
        time.sleep(0.1)


@pytest.mark.parametrize("fmt", ["files", "webdataset"])
def test_max_runtime_ends_a_run_whose_store_never_answers(tmp_path: Path, make_origin: StartOrigin,
                                                          fake_s3: FakeS3, fmt: str) -> None:
    t0 = time.monotonic()
    proc = _hung_run(tmp_path, make_origin, fake_s3, fmt, "--max-runtime", "4", "--grace", "2")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    # --max-runtime 4 + --grace 2, with the start-up and a second of slack: not the
    # store's own timeouts (minutes, before).
    assert time.monotonic() - t0 < 15, err
    assert fake_s3.hung
    assert "Traceback" not in err
    journal = _journal(tmp_path / "state")
    assert not any(s == "ok" for s in journal.values()), "an upload never answered is journaled ok"
    assert _summary(err).get("ok", 0) == 0, err
    # What was not confirmed is done again: the next run, the store answering, finishes.
    fake_s3.hang = lambda key: False
    res = run_cli("download", tmp_path / "images.csv", "-o", "s3://out/run", "--state-dir", tmp_path / "state",
                  "--output-format", fmt, "--shard-size", "4", env=fake_s3.env)
    assert res.returncode == 0, res.stderr
    assert sum(s == "ok" for s in _journal(tmp_path / "state").values()) == 12


def test_a_second_signal_ends_a_run_whose_store_never_answers(tmp_path: Path, make_origin: StartOrigin,
                                                             fake_s3: FakeS3) -> None:
    proc = _hung_run(tmp_path, make_origin, fake_s3, "files", "--grace", "120")
    try:
        _wait_hung(proc, fake_s3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # past the debounce: a second signal, not the same one twice
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert time.monotonic() - t0 < 10, err
    assert "Traceback" not in err
    assert not any(s == "ok" for s in _journal(tmp_path / "state").values())


@pytest.mark.slow
def test_a_store_that_never_answers_fails_each_upload_in_time(tmp_path: Path, make_origin: StartOrigin,
                                                              fake_s3: FakeS3) -> None:
    """No stop at all: the request timeouts, which follow --grace, end each upload
    (retried) as a retryable write_error."""
    t0 = time.monotonic()
    proc = _hung_run(tmp_path, make_origin, fake_s3, "files", "--grace", "1")
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode in (1, 5), err  # 10 in a row stop the run; fewer leave it incomplete
    assert time.monotonic() - t0 < 60, err
    statuses = set(_journal(tmp_path / "state").values())
    assert statuses <= {"write_error"}, statuses
    assert "Traceback" not in err


def test_a_store_that_stops_answering_after_the_shards_are_up(tmp_path: Path, make_origin: StartOrigin,
                                                              fake_s3: FakeS3) -> None:
    """Every shard is uploaded, then the store stops answering listings: the shard
    lists (shards.json) cannot be written. --max-runtime still ends the run in time, and
    every sample uploaded is journaled."""
    corpus = Corpus.generate(12, mix="tiny", seed=2805)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    fake_s3.hang = lambda key: not key and any(k.endswith(".tar") for k in fake_s3.objects)
    t0 = time.monotonic()
    res = run_cli("download", manifest, "-o", "s3://out/run", "--state-dir", tmp_path / "state", "--output-format",
                  "webdataset", "--shard-size", "4", "--max-runtime", "4", "--grace", "2", env=fake_s3.env, timeout=60)
    assert res.returncode == 75, res.stderr
    assert time.monotonic() - t0 < 15, res.stderr
    assert fake_s3.hung and "Traceback" not in res.stderr
    assert sorted(_journal(tmp_path / "state").values()) == ["ok"] * 12
