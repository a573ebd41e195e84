"""Faults at the origin: every kind gets its exact status, transient ones are retried
to success, permanent ones are asked once, and a rerun retries only what is retryable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import (
    FAULT_KINDS,
    MIXED_FAULTS,
    Corpus,
    Fault,
    parse_fault_rates,
)
from tests.conftest import journal_rows, run_cli

EXPECTED = {
    "404": "http_4xx", "410": "http_4xx", "500": "http_5xx", "503": "http_5xx",
    "429": "http_429", "429date": "http_429", "reset": "connection", "truncate": "truncated",
    "trickle": "timeout", "stall": "timeout", "hang": "timeout",
    "wrongbytes": "md5_mismatch", "wrongsize": "size_mismatch", "notimage": "corrupt",
    "oversized": "too_large", "placeholder_direct": "unavailable", "redirect_host": "ok",
    "placeholder": "unavailable", "redirect_loop": "bad_redirect", "redirect_scheme": "bad_redirect",
}
PERMANENT = {"404", "410", "wrongbytes", "wrongsize", "notimage", "oversized", "placeholder_direct",
             "placeholder", "redirect_loop", "redirect_scheme", "redirect_host"}
# Short enough that trickle, stall and hang end in seconds; long enough that a busy machine
# (CI shares its cores with servers) does not turn a plain answer into a timeout.
FAST = ["--timeout", "4", "--read-timeout", "3", "--max-body-mb", "1", "--progress", "none"]


def test_every_fault_kind_ends_with_its_status(tmp_path: Path, make_origin: StartOrigin) -> None:
    assert set(EXPECTED) == set(FAULT_KINDS)
    corpus = Corpus.generate(len(FAULT_KINDS), mix="tiny", seed=11)
    by_kind = dict(zip(FAULT_KINDS, corpus.ids, strict=True))
    for kind, image_id in by_kind.items():
        corpus.entries[image_id].fault = Fault(kind)
    origin = make_origin(corpus, trickle_delay=0.3)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = run_cli("download", manifest, "-o", out, "--retries", "1", *FAST)
    assert res.returncode == 5, res.stderr  # retryable failures are left: incomplete
    assert time.monotonic() - t0 < 60  # trickle, stall and hang cannot hold the run
    journal = journal_rows(out)
    for kind, image_id in by_kind.items():
        status, detail, attempts = journal[image_id]
        assert status == EXPECTED[kind], (kind, detail)
        assert attempts == (1 if kind in PERMANENT else 2), (kind, attempts)
        files = list(out.rglob(f"{image_id}.*"))
        assert files == ([out / "train" / image_id[:3] / f"{image_id}.jpg"] if kind == "redirect_host" else [])
    for kind in ("404", "410", "wrongbytes", "placeholder"):
        path = f"/f/{kind}/o/{by_kind[kind]}_o.jpg"
        assert origin.requests[path] == 1, kind  # a permanent answer is never asked again


def test_mixed_faults_1000_images(tmp_path: Path, make_origin: StartOrigin) -> None:
    """5% mixed faults; transient ones fail once or twice, then succeed."""
    rates = parse_fault_rates(MIXED_FAULTS)
    assert abs(sum(r for _, r in rates) - 0.05) < 1e-9
    corpus = Corpus.generate(1000, mix="tiny", seed=12, fault_rates=rates)
    origin = make_origin(corpus, trickle_delay=0.3)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    t0 = time.monotonic()
    # Default retries and backoff; only the timeouts are short, so a trickle ends fast.
    res = run_cli("download", manifest, "-o", out, "--timeout", "2", "--progress", "none", "--resize", "64")
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed < 90
    journal = journal_rows(out)
    assert len(journal) == 1000  # no image lost
    faulted = {i: e.fault for i, e in corpus.entries.items() if e.fault}
    assert 30 <= len(faulted) <= 80
    for image_id, entry in corpus.entries.items():
        status = journal[image_id][0]
        fault = entry.fault
        if fault is None or fault.times is not None or fault.kind == "redirect_host":
            assert status == "ok", (image_id, fault, journal[image_id])
            with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
                im.load()
                assert max(im.size) <= 64
        else:
            assert status == EXPECTED[fault.kind], (fault, journal[image_id])
            assert not list(out.rglob(f"{image_id}.*"))
        if fault is not None and fault.times is not None:
            assert journal[image_id][2] == fault.times + 1  # failed n times, then ok
        if fault is not None and fault.kind == "404":
            assert origin.requests[f"/f/{fault}/o/{image_id}_o.jpg"] == 1
        if fault is not None and fault.kind == "429":
            first, second = origin.times[f"/f/{fault}/o/{image_id}_o.jpg"][:2]
            assert second - first >= 0.9  # Retry-After: 1 was honoured


def test_rerun_retries_only_retryable_unless_retry_failed(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=13)
    ids = corpus.ids
    corpus.entries[ids[0]].fault = Fault("503", 1)
    corpus.entries[ids[1]].fault = Fault("404")
    corpus.entries[ids[2]].fault = Fault("reset", 1)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--retries", "0", "--progress", "none")
    assert run_cli(*args).returncode == 5  # two retryable failures left: run again
    j = journal_rows(out)
    assert (j[ids[0]][0], j[ids[1]][0], j[ids[2]][0]) == ("http_5xx", "http_4xx", "connection")
    assert run_cli(*args).returncode == 0
    j = journal_rows(out)
    assert (j[ids[0]][0], j[ids[1]][0], j[ids[2]][0]) == ("ok", "http_4xx", "ok")
    p404 = f"/f/404/o/{ids[1]}_o.jpg"
    assert origin.requests[p404] == 1
    assert origin.requests[f"/o/{ids[3]}_o.jpg"] == 1  # ok rows are never fetched again
    assert run_cli(*args, "--retry-failed").returncode == 0
    assert origin.requests[p404] == 2
    assert origin.requests[f"/o/{ids[3]}_o.jpg"] == 1


def test_dns_failure_is_its_own_status(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(2, mix="tiny", seed=14)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    text = manifest.read_text().replace(f"{origin.base_url}/o/{corpus.ids[0]}", f"http://no-such-host.invalid/o/{corpus.ids[0]}")
    manifest.write_text(text)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--retries", "0", "--progress", "none")
    assert res.returncode == 5, res.stderr  # dns is retryable
    j = journal_rows(out)
    assert j[corpus.ids[0]][0] == "dns" and j[corpus.ids[1]][0] == "ok"


def test_hostile_rows_never_reach_a_path(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(3, mix="tiny", seed=15)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    lines = manifest.read_text().splitlines()
    good = lines[1]
    hostile = [
        good.replace(corpus.ids[0], "../../etc/passwd", 1),
        good.replace(corpus.ids[0], "/tmp/absolute_x", 1),
        good.replace(corpus.ids[0], "a" * 5000, 1),
        good.replace(f"{origin.base_url}/o/", "file:///etc/passwd#", 1).replace(corpus.ids[0], "1234567812345678", 1),
    ]
    manifest.write_text("\n".join([lines[0], *hostile, *lines[2:]]) + "\n")
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "bad_row" in res.stderr
    j = journal_rows(out)
    assert set(j) == set(corpus.ids[1:])
    # Beside the images: the lock and the Croissant card every run writes at OUT's top (issue 25).
    described = {"oidownload.lock.jsonl.gz", "croissant.json", "oidownload.images.jsonl.gz"}
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file() and ".oidownload" not in p.parts
               and not (p.parent == out and p.name in described)}
    assert written == {Path("train") / i[:3] / f"{i}.jpg" for i in corpus.ids[1:]}
    assert sum(origin.requests.values()) == 2
    import sqlite3

    conn = sqlite3.connect(next((out / ".oidownload").glob("journal-*.sqlite")))
    bad = conn.execute("SELECT line, detail FROM bad_rows ORDER BY line").fetchall()
    assert [line for line, _ in bad] == [2, 3, 4, 5]
    assert all(f"{manifest}:{line}:" in detail for line, detail in bad)


def test_max_failure_rate_exits_3(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(10, mix="tiny", seed=16)
    for image_id in corpus.ids[:4]:
        corpus.entries[image_id].fault = Fault("404")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "a", "--max-failure-rate", "0.3", "--progress", "none")
    assert res.returncode == 3 and "over --max-failure-rate" in res.stderr
    res = run_cli("download", manifest, "-o", tmp_path / "b", "--max-failure-rate", "0.5", "--progress", "none")
    assert res.returncode == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_status_and_report(tmp_path: Path, make_origin: StartOrigin, fmt: str) -> None:
    import csv
    import json

    corpus = Corpus.generate(12, mix="tiny", seed=17)
    corpus.entries[corpus.ids[0]].fault = Fault("404")
    corpus.entries[corpus.ids[1]].fault = Fault("wrongbytes")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    assert run_cli("download", manifest, "-o", out, "--progress", "none").returncode == 0
    if fmt == "json":
        st = json.loads(run_cli("status", out, "--json").stdout)
        assert st["total"] == 12
        assert st["by_status"]["ok"]["count"] == 10 and st["by_status"]["http_4xx"]["count"] == 1
        assert st["shards"][0]["state"] == "finished"
    else:
        res = run_cli("status", out)
        assert res.returncode == 0 and "md5_mismatch" in res.stdout and "finished" in res.stdout
    res = run_cli("report", out)
    assert res.returncode == 0, res.stderr
    with open(out / "report" / "success.csv", newline="") as f:
        ok = list(csv.DictReader(f))
    with open(out / "report" / "failure.csv", newline="") as f:
        failed = list(csv.DictReader(f))
    with open(manifest, newline="") as f:
        source = {r["ImageID"]: r for r in csv.DictReader(f)}
    assert {r["ImageID"] for r in ok} == set(corpus.ids[2:])
    assert {r["ImageID"]: r["status"] for r in failed} == {corpus.ids[0]: "http_4xx", corpus.ids[1]: "md5_mismatch"}
    for r in ok + failed:
        assert r["Title"] == source[r["ImageID"]]["Title"]  # the input columns, quoting intact
        assert r["OriginalMD5"] == source[r["ImageID"]]["OriginalMD5"]
        assert int(r["attempts"]) == 1
    assert all((out / r["location"]).is_file() for r in ok)


def test_status_of_an_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    res = run_cli("status", tmp_path)
    assert res.returncode == 1 and "no journal" in res.stderr


def test_wrong_content_length_is_rejected_before_the_body(tmp_path: Path, make_origin: StartOrigin) -> None:
    import io
    import os

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(buf, "JPEG", quality=95)
    assert len(buf.getvalue()) > 100_000  # bigger than a placeholder could be
    small = Corpus.generate(1, mix="tiny", seed=18)
    corpus = Corpus([buf.getvalue()], small.thumbnails)
    corpus.entries = small.entries
    image_id = corpus.ids[0]
    corpus.entries[image_id].original = 0
    corpus.entries[image_id].fault = Fault("wrongsize")
    origin = make_origin(corpus, trickle_delay=0.3)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--progress", "none")
    assert res.returncode == 5, res.stderr  # its only image failed
    status, detail, _ = journal_rows(tmp_path / "out")[image_id]
    assert status == "size_mismatch" and detail.startswith("Content-Length ")
