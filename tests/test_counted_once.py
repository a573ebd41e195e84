"""Issue 15 item 15: nothing is counted twice. Bad rows are keyed by the input's resolved
path, whatever its spelling; a second split of the same OUT is refused unless asked
for (and always while another split runs); `status` counts each ImageID once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import journal_rows, run_cli
from tests.hostile import manifests


def _cli(cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=240, env=dict(os.environ))


def test_bad_rows_are_counted_once_whatever_the_spelling_of_their_file(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(10, mix="tiny", seed=191)
    origin = make_origin(corpus)
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    bad = [(2, ["not-an-id", "train", "http://127.0.0.1:9/x.jpg", "", "", "", "", "", "1", "AAAAAAAAAAAAAAAAAAAAAA==", ""]),
           (5, manifests.row("00000000000000ab", "ftp://127.0.0.1/x.jpg")),
           (8, manifests.row("00000000000000cd", "http://127.0.0.1:9/x.jpg", size=-1))]
    manifests.write(ws / "images.csv", corpus, origin.base_url, bad)
    (ws / "link.csv").symlink_to(ws / "images.csv")
    out = tmp_path / "out"
    for spelling in ("images.csv", "./images.csv", "sub/../images.csv", "link.csv", ws / "images.csv"):
        res = _cli(ws, "download", spelling, "-o", out, "--format", "keep")
        assert res.returncode == 0, res.stderr
    both = _cli(ws, "download", "images.csv", "./link.csv", "-o", out, "--format", "keep")
    assert both.returncode == 0, both.stderr
    status = json.loads(run_cli("status", out, "--json").stdout)
    assert status["by_status"]["bad_row"]["count"] == 3
    assert status["total"] == 13
    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    assert (out / "report" / "failure.csv").read_text().count("bad_row") == 3


def test_a_second_split_is_refused_unless_asked_for_and_status_counts_once(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=192)
    flaky = corpus.ids[::4]
    for i in flaky:
        corpus.entries[i].fault = Fault.parse("503x1")  # fails the first run, then serves
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    first = run_cli("download", manifest, "-o", out, "--format", "keep", "--retries", "0")
    assert first.returncode == 5, first.stderr  # incomplete: the flaky ones are left

    halves = [("--num-shards", "2", "--shard-index", str(k)) for k in range(2)]
    refused = run_cli("download", manifest, "-o", out, "--format", "keep", *halves[0])
    assert refused.returncode == 2 and "--resplit" in refused.stderr, refused.stderr
    asked = sum(origin.requests.values())
    for half in halves:
        res = run_cli("download", manifest, "-o", out, "--format", "keep", *half, "--resplit")
        assert res.returncode == 0, res.stderr
    # Only the flaky ones were asked for again; the finished ones were not fetched twice.
    assert sum(origin.requests.values()) == asked + len(flaky)
    assert all(origin.requests[f"/f/503x1/o/{i}_o.jpg"] == 2 for i in flaky)
    status = json.loads(run_cli("status", out, "--json").stdout)
    assert status["total"] == 60  # the flaky ones are in two journals: counted once, as ok
    assert status["by_status"] == {"ok": {"count": 60, "bytes": status["bytes"], "final": True}}
    assert len(journal_rows(out)) == 60


def test_another_split_is_refused_while_one_runs(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=193)
    origin = make_origin(corpus, latency=Latency(0.2))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    running = subprocess.Popen([sys.executable, "-m", "oidownload", "download", manifest, "-o", out, "--format", "keep",
                                "--concurrency", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((out / ".oidownload").glob("journal-*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        res = run_cli("download", manifest, "-o", out, "--format", "keep", "--num-shards", "2", "--shard-index", "1",
                      "--resplit")
        assert res.returncode == 2, res.stderr
        assert "being written with another split" in res.stderr
    finally:
        _, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    assert all(n == 1 for n in origin.requests.values()) and len(origin.requests) == 30
