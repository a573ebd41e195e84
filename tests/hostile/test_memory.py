"""Memory that must stay flat whatever the rows: outcomes waiting for a journal that
falls behind are bounded (new rows wait instead), seen from the server's side."""

from __future__ import annotations

import base64
import hashlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oidownload.exits import ExitCode
from oidownload.rows import V3_COLUMNS
from oidownload.testing.origin import Corpus, Origin
from tests.conftest import journal_rows

StartOrigin = Callable[..., Origin]
MAX_PENDING = 10_000  # pipeline._MAX_PENDING


def _journaled(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outcomes").fetchone()[0])


def _first_rows(journal: Path, timeout: float) -> sqlite3.Connection:
    """A connection to the journal once it holds a row. The file appears before its
    tables do (the schema is created a moment later, slower on a busy machine), so
    "no such table" and a lock while it is made mean: not yet."""
    deadline = time.monotonic() + timeout
    while True:
        if journal.exists():
            conn = sqlite3.connect(journal)
            try:
                if _journaled(conn):
                    return conn
            except sqlite3.OperationalError:
                pass
            conn.close()
        assert time.monotonic() < deadline, f"nothing journaled in {journal} after {timeout:.0f} s"
        time.sleep(0.05)


@pytest.mark.slow  # 30,000 rows through a held lock: about 17 s
def test_a_journal_that_falls_behind_holds_new_rows_back(tmp_path: Path, make_origin: StartOrigin) -> None:
    """A reader holds the journal's lock, so no batch can be committed: the outcomes
    wait in memory. Rows go on only up to a bound; the rest wait for the journal (on a
    slow disk, this was 45,000 outcomes after one 5 s commit, and grew with the stall)."""
    origin = make_origin(Corpus.generate(1, mix="tiny", seed=61))
    rng = random.Random(62)
    rows = 3 * MAX_PENDING
    manifest = tmp_path / "images.csv"
    md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(",".join(V3_COLUMNS) + "\n")
        for _ in range(rows):  # ids the origin does not know: each is a quick 404
            i = f"{rng.getrandbits(64):016x}"
            f.write(f"{i},train,{origin.base_url}/o/{i}_o.jpg,,,,,,1,{md5},\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", "download", manifest, "-o", out, "--format", "keep",
                             "--retries", "0", "--progress", "none"], stderr=subprocess.PIPE, text=True)
    try:
        journal = out / ".oidownload" / "journal-0-of-1.sqlite"
        reader = _first_rows(journal, 60)
        reader.execute("BEGIN")
        held = _journaled(reader)  # a read transaction: no commit can finish until it ends
        asked = []
        for _ in range(200):
            asked.append(sum(origin.requests.values()))
            if len(asked) > 20 and asked[-1] == asked[-20]:
                break  # the fetch workers are waiting
            time.sleep(0.1)
        reader.rollback()
        reader.close()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.INCOMPLETE, err  # every image failed (404s)
    assert asked[-1] < rows, "every row was fetched while nothing could be journaled"
    # Journaled at the lock, one batch being committed, the bound, the rows in flight.
    assert asked[-1] - held <= 2 * MAX_PENDING + 200, (held, asked[-1])
    assert len(journal_rows(out)) == rows
