"""One ImageID, one outcome (issue 14 item 2, issue 15 item 2). A repeated row is
skipped without a request and counted once, in this run or the next; a repeat with
another URL loses to the first row (the rule: the first row wins) and is listed in
the report's conflicts.csv; an ok already on disk is never replaced by a failure."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, run_cli
from tests.hostile import manifests
from tests.hostile.conftest import Hostile, raw, response


def _summary_ok(stderr: str) -> int:
    found = re.search(r"^ok\s+(\d+)", stderr, re.M)
    assert found, stderr
    return int(found.group(1))


def test_the_same_list_twice_is_fetched_and_counted_once(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=141)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    # The boxable list is a subset of the labelled one: a second list overlapping the first.
    subset = corpus.write_manifest(tmp_path / "boxable.csv", origin.base_url, ids=corpus.ids[::2])
    out = tmp_path / "dup"
    # Few requests at once: the repeats arrive after the first rows finished, as at scale.
    args = ("download", manifest, manifest, subset, "-o", out, "--format", "keep", "--progress", "log", "--concurrency", "2")
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert sum(origin.requests.values()) == 40
    assert all(origin.requests[f"/o/{i}_o.jpg"] == 1 for i in corpus.ids)
    assert _summary_ok(res.stderr) == 40
    assert "60 row(s) repeated an ImageID" in res.stderr and "0 disagreed" in res.stderr
    status = json.loads(run_cli("status", out, "--json").stdout)
    assert status["total"] == 40 and status["by_status"]["ok"]["count"] == 40

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert sum(origin.requests.values()) == 40
    assert "(40 already done, skipped)" in again.stderr  # once per image, not once per row


def test_a_repeat_with_another_url_loses_to_the_first_row(tmp_path: Path, make_origin: StartOrigin,
                                                         hostile: Hostile) -> None:
    corpus = Corpus.generate(20, mix="tiny", seed=142)
    origin = make_origin(corpus)
    good, gone = corpus.ids[3], corpus.ids[7]
    hostile.route("/gone.jpg", raw(response("404 Not Found")))
    # A good row, then the same id at a dead URL; and a dead URL first, then its good row.
    manifest = manifests.write(tmp_path / "images.csv", corpus, origin.base_url, [
        (15, manifests.row(good, hostile.url("/gone.jpg"))),
        (2, manifests.row(gone, hostile.url("/gone.jpg"))),
    ])
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--format", "keep", "--retries", "0", "--concurrency", "2")
    assert res.returncode == 0, res.stderr
    rows = journal_rows(out)
    assert len(rows) == 20
    assert rows[good][0] == "ok" and (out / "train" / good[:3] / f"{good}.jpg").read_bytes() == corpus.original(good)
    assert rows[gone][0] == "http_4xx" and origin.requests[f"/o/{gone}_o.jpg"] == 0
    assert hostile.requests["/gone.jpg"] == 1  # only the first row of `gone` was asked for
    assert "2 disagreed" in res.stderr

    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    with open(out / "report" / "conflicts.csv", newline="") as f:
        conflicts = list(csv.DictReader(f))
    assert sorted((c["ImageID"], c["OriginalURL"]) for c in conflicts) == sorted([
        (good, hostile.url("/gone.jpg")), (gone, corpus.manifest_row(gone, origin.base_url)[2])])
    assert all(c["status"] == "conflict" and "first row wins" in c["detail"] for c in conflicts)
    with open(out / "report" / "success.csv", newline="") as f:
        assert [r["OriginalURL"] for r in csv.DictReader(f) if r["ImageID"] == good] == [
            corpus.manifest_row(good, origin.base_url)[2]]
