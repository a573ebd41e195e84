"""Issue 15 item 8: `report` and `status` on a journal of millions of rows while a
download writes to it. The readers read in short transactions, so the download keeps
committing all along (a reader holding one read transaction for the whole report
stalled the writer until it gave up with "database is locked"), and nobody fails."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency
from tests.conftest import run_cli
from tests.hostile import manifests

BIG = 2_000_000


def make_big_journal(out: Path, n: int) -> None:
    """A journal of n rows of a long-gone earlier run (9 in 10 ok), written by SQLite
    itself in a few seconds. Ids are spread over the negative half of the id space, so
    no synthetic image of the test meets one."""
    empty = out.parent / "empty.csv"
    empty.write_text(",".join(manifests.HEADER) + "\n")
    # The journal, as the download makes it, with the settings the test's download uses.
    made = run_cli("download", empty, "-o", out, "--format", "keep")
    assert made.returncode == 4, made.stderr  # nothing selected
    conn = sqlite3.connect(next((out / ".oidownload").glob("journal-*.sqlite")), isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO inputs(path) VALUES('/gone/train-images.csv')")
    conn.execute("DROP TRIGGER outcomes_ins")  # counted once below, far faster than per row; the next run puts it back
    conn.execute(
        """WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < ?)
        INSERT INTO outcomes(id, status, final, detail, http_status, nbytes, out_bytes, width, height, attempts,
                             seconds, subset, ext, source, verified, input, line, finished)
        SELECT -9000000000000000000 + x * 4000000000000, iif(x % 10, 'ok', 'http_4xx'), 1,
               iif(x % 10, '', '404 Not Found'), iif(x % 10, 200, 404), 50000, iif(x % 10, 20000, 0), 640, 480, 1,
               0.5, 'train', iif(x % 10, 'jpg', ''), 'original', 1, (SELECT max(id) FROM inputs), x + 1, 1.7e9
        FROM seq""", (n,))
    conn.execute("INSERT INTO counts SELECT status, count(*), sum(nbytes) FROM outcomes GROUP BY status "
                 "ON CONFLICT(status) DO UPDATE SET n = excluded.n, bytes = excluded.bytes")
    conn.execute("COMMIT")
    conn.close()


def _total(out: Path) -> int:
    res = run_cli("status", out, "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)["total"])


def test_report_and_status_during_a_download_on_a_big_journal(tmp_path: Path, make_origin: StartOrigin) -> None:
    out = tmp_path / "out"
    make_big_journal(out, BIG)
    corpus = Corpus.generate(500, mix="tiny", seed=211)
    origin = make_origin(corpus, latency=Latency(0.1))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    download = subprocess.Popen(
        [sys.executable, "-m", "oidownload", "download", manifest, "-o", out, "--format", "keep", "--concurrency", "4",
         "--progress", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _total(out) <= BIG and time.monotonic() < deadline:
            time.sleep(0.2)
        report = subprocess.Popen([sys.executable, "-m", "oidownload", "report", out],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        while report.poll() is None:
            seen.append(_total(out))  # status answers while the report reads
            time.sleep(0.5)
        report_out, report_err = report.communicate()
    finally:
        _, err = download.communicate(timeout=300)
    assert download.returncode == 0, err
    assert report.returncode == 0, report_err
    # The download went on committing while the report read two million rows.
    during = seen[1:-1]
    assert len(during) >= 3 and during[-1] > during[0], seen
    assert _total(out) == BIG + 500
    ok_rows = int(report_out.split()[0])
    assert ok_rows >= BIG * 9 // 10
    with open(out / "report" / "success.csv", "rb") as f:
        assert sum(1 for _ in f) == ok_rows + 1
    assert "/gone/train-images.csv is gone" in report_err
