"""Signals, SIGKILL at any moment, and a full disk: nothing is lost, no partial file is
ever at a final path, and the same command resumes without re-fetching finished images."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import journal_rows, run_cli


def start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oidownload", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_journal(out: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(journal_rows(out)) >= at_least:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} journal rows after {timeout}s")


def check_disk_matches_journal(out: Path, corpus: Corpus) -> dict[str, tuple[str, str, int]]:
    journal = journal_rows(out)
    assert not list(out.rglob("*.oidtmp")), "temporary files left behind"
    on_disk = {p.stem for p in (out / "train").rglob("*.jpg")}
    ok = {i for i, (status, _, _) in journal.items() if status == "ok"}
    assert ok <= on_disk, "a journaled image has no file"
    for image_id in on_disk:
        with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
            im.load()  # every final file is whole
    return journal


def test_sigterm_exits_143_and_the_same_command_resumes(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(500, mix="tiny", seed=21)
    origin = make_origin(corpus, latency=Latency(0.15))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--concurrency", "4", "--progress", "log", "--resize", "64")
    proc = start(*args)
    wait_for_journal(out, 5)
    time.sleep(5.5)  # progress rows are refreshed every 5 s
    live = json.loads(run_cli("status", out, "--json").stdout)
    assert live["shards"][0]["state"] == "running" and live["total"] >= 5
    assert live["rate_per_s"] > 0 and live["eta_s"] is not None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err
    journal = check_disk_matches_journal(out, corpus)
    assert 5 <= len(journal) < 500
    after = json.loads(run_cli("status", out, "--json").stdout)
    assert after["shards"][0]["state"] == "stopped" and after["total"] == len(journal)
    done_before = {i for i, (s, _, _) in journal.items() if s == "ok"}
    counts_before = {i: origin.requests[f"/o/{i}_o.jpg"] for i in done_before}

    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    journal = check_disk_matches_journal(out, corpus)
    assert len(journal) == 500 and all(s == "ok" for s, _, _ in journal.values())
    assert all(origin.requests[f"/o/{i}_o.jpg"] == n for i, n in counts_before.items())


def test_second_signal_stops_at_once_and_state_stays_consistent(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=22)
    for image_id in corpus.ids[30:]:
        corpus.entries[image_id].fault = Fault("hang")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    proc = start("download", manifest, "-o", out, "--concurrency", "40", "--grace", "60", "--progress", "none")
    wait_for_journal(out, 30)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # the same signal delivered twice at once is one signal
    time.sleep(1.5)
    assert proc.poll() is None  # hanging requests hold the graceful stop...
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 10  # ...but a second signal does not wait for them
    assert proc.returncode == 130, err
    journal = check_disk_matches_journal(out, corpus)
    assert {i for i, (s, _, _) in journal.items() if s == "ok"} == set(corpus.ids[:30])
    conn = sqlite3.connect(next((out / ".oidownload").glob("journal-*.sqlite")))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sigkill_at_many_moments_then_rerun(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(600, mix="tiny", seed=23)
    origin = make_origin(corpus, latency=Latency(0.1, 0.5))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--concurrency", "4", "--progress", "none", "--resize", "80", "--keep-original")
    rng = random.Random(5)
    journaled_at: dict[str, int] = {}  # image id → its request count when first seen journaled
    kills = 0
    for _ in range(8):
        proc = start(*args)
        time.sleep(rng.uniform(0.4, 1.6))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        time.sleep(0.7)  # orphaned pool workers notice and exit
        journal = check_disk_matches_journal(out, corpus)
        for image_id, (status, _, _) in journal.items():
            if status == "ok":
                journaled_at.setdefault(image_id, origin.requests[f"/o/{image_id}_o.jpg"])
    assert kills >= 5
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    journal = check_disk_matches_journal(out, corpus)
    assert len(journal) == 600 and all(s == "ok" for s, _, _ in journal.values())
    for image_id, n in journaled_at.items():
        assert origin.requests[f"/o/{image_id}_o.jpg"] == n, "a journaled image was fetched again"
    for image_id in corpus.ids:
        assert (out / "original" / "train" / image_id[:3] / f"{image_id}.jpg").read_bytes() == corpus.original(image_id)
    assert "did not finish cleanly" in res.stderr


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_fs(tmp_path: Path) -> object:
    target = tmp_path / "small"
    target.mkdir()
    if not _can_mount():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must be able to mount a tmpfs (root and mount(8)) for the disk-full test")
        pytest.skip("needs root to mount a small tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], capture_output=True, text=True)
    if res.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs: {res.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {res.stderr}")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def test_disk_full_stops_with_exit_1_and_a_rerun_continues(tmp_path: Path, make_origin: StartOrigin, small_fs: Path) -> None:
    corpus = Corpus.generate(150, mix="tiny", seed=24)  # ~3 MB of originals for a 1 MB disk
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = small_fs / "out"
    args = ("download", manifest, "-o", out, "--format", "keep", "--progress", "none", "--concurrency", "4")
    res = run_cli(*args)
    assert res.returncode == 1, res.stderr
    assert "No space left on device" in res.stderr or "disk is full" in res.stderr
    assert "run the same command again" in res.stderr
    conn = sqlite3.connect(next((out / ".oidownload").glob("journal-*.sqlite")))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    first = journal_rows(out)
    assert 0 < len(first) < 150 and all(s == "ok" for s, _, _ in first.values())

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    journal = check_disk_matches_journal(out, corpus)
    assert len(journal) == 150 and all(s == "ok" for s, _, _ in journal.values())
    assert all(origin.requests[f"/o/{i}_o.jpg"] == 1 for i in first)
