"""The progress bar ends in its true state; an interrupted run leaves no estimated
total behind for `status`, and its last words say how to resume."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import journal_rows, run_cli


def _last_bar(stderr: str) -> str:
    renders = [part for part in re.split(r"[\r\n]", stderr) if "img" in part and "[" in part]
    assert renders, stderr
    return renders[-1]


def _journaled(out: Path) -> int:
    try:
        return len(journal_rows(out))
    except sqlite3.Error:  # the journal is being created
        return 0


def test_bar_ends_with_the_true_counts(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(10, mix="tiny", seed=90)
    for image_id in corpus.ids[:2]:
        corpus.entries[image_id].fault = Fault("404")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--progress", "bar")
    assert res.returncode == 0, res.stderr
    last = _last_bar(res.stderr)
    assert "10/10" in last and "ok=8 failed=2" in last, last


def test_interrupted_run_leaves_no_estimate_and_says_how_to_resume(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=91)
    origin = make_origin(corpus, latency=Latency(0.2))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ["download", str(manifest), "-o", str(out), "--concurrency", "2", "--progress", "bar", "--format", "keep"]
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _journaled(out):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # the estimate thread has given the bar its total by now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = len(journal_rows(out))
    assert 0 < done < 60
    assert f"to resume, run the same command again: oidownload {' '.join(args)}" in err
    last = _last_bar(err)
    # A small input is counted before the bar starts: after Ctrl-C the bar keeps that exact total.
    assert f"{done}/60" in last.replace(" ", ""), last
    st = json.loads(run_cli("status", out, "--json").stdout)
    assert st["shards"][0]["state"] == "stopped" and st["shards"][0]["planned"] is None
    text = run_cli("status", out).stdout
    assert re.search(r"0-of-1\s+stopped\s+\d+\s+\?", text), text
    # The same command finishes the job, and then the count is exact.
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    st = json.loads(run_cli("status", out, "--json").stdout)
    assert st["shards"][0]["state"] == "finished" and st["shards"][0]["planned"] == 60
