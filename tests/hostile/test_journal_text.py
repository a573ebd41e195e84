"""Issue 15 item 1: text from the network or the filesystem that is not UTF-8 (a status
line's reason phrase, an input file's name) is stored made safe, and never stops the
journal: every written image is journaled, on this run and the next."""

from __future__ import annotations

import os
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, run_cli
from tests.hostile import manifests
from tests.hostile.conftest import Hostile, raw

BAD_ID = "ffffffffffff0001"


def test_a_non_utf8_reason_phrase_is_journaled_and_journaling_goes_on(
        tmp_path: Path, make_origin: StartOrigin, hostile: Hostile) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=151)
    origin = make_origin(corpus)
    hostile.route("/bad.jpg", raw(b"HTTP/1.1 404 Not Found \xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    manifest = manifests.write(tmp_path / "images.csv", corpus, origin.base_url,
                               [(30, manifests.row(BAD_ID, hostile.url("/bad.jpg")))])
    out = tmp_path / "out"
    for _ in range(2):  # and again: a poisoned journal would fail every rerun
        res = run_cli("download", manifest, "-o", out, "--format", "keep", "--retries", "0")
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr and "space" not in res.stderr
    rows = journal_rows(out)
    assert {i for i, r in rows.items() if r[0] == "ok"} == set(corpus.ids)
    status, detail, _ = rows[BAD_ID]
    assert status == "http_4xx" and "404" in detail
    assert "\udcff" not in detail and detail.isprintable()
    assert hostile.requests["/bad.jpg"] == 1  # final: the rerun did not ask again


def test_an_input_named_in_latin1_is_journaled(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(20, mix="tiny", seed=152)
    origin = make_origin(corpus)
    name = os.fsencode(tmp_path) + b"/imag\xe9s.csv"
    manifest = manifests.write(name, corpus, origin.base_url,
                               [(5, ["0123456789abcdeg", "train", "http://127.0.0.1:1/x.jpg", "", "", "", "", "", "1",
                                     "AAAAAAAAAAAAAAAAAAAAAA==", ""])])
    out = tmp_path / "out"
    for _ in range(2):
        res = run_cli("download", manifest, "-o", out, "--format", "keep")
        assert res.returncode == 0, res.stderr
    rows = journal_rows(out)
    assert {i for i, r in rows.items() if r[0] == "ok"} == set(corpus.ids)
    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    failures = (out / "report" / "failure.csv").read_text(encoding="utf-8")
    assert failures.count("bad_row") == 1 and "0123456789abcdeg" in failures
    assert (out / "report" / "success.csv").read_text().count("\n") == 21
