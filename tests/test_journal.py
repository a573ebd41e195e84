"""The journal's writer on real SQLite files: a failed batch rolls back whole and never
poisons the next one, and one ImageID has one outcome (an ok is never replaced)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from oidownload.journal import Journal, JournalError
from oidownload.records import Outcome, Status
from oidownload.shard import Shard

A, B, C = "00000000000000a1", "00000000000000b2", "00000000000000c3"


def _rows(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {format(r % (1 << 64), "016x"): s for r, s in conn.execute("SELECT id, status FROM outcomes")}
    finally:
        conn.close()


def test_a_failed_batch_rolls_back_and_the_next_one_commits(tmp_path: Path) -> None:
    journal = Journal(tmp_path, Shard())
    try:
        broken = Outcome(B, Status.OK, crop=("not", "a", "number", "!"))  # type: ignore[arg-type]
        with pytest.raises(JournalError, match="ValueError"):
            journal.record([Outcome(A, Status.OK), broken])
        assert not journal.conn.in_transaction
        assert _rows(journal.path) == {}  # the whole batch, not half of it
        journal.record([Outcome(A, Status.OK), Outcome(C, Status.HTTP_4XX, "404 Not Found \udcff")])
    finally:
        journal.close()
    assert _rows(journal.path) == {A: "ok", C: "http_4xx"}


def test_an_ok_is_never_replaced_by_a_failure(tmp_path: Path) -> None:
    journal = Journal(tmp_path, Shard())
    try:
        journal.record([Outcome(A, Status.OK, location="train/000/x.jpg"), Outcome(B, Status.TIMEOUT)])
        journal.record([Outcome(A, Status.HTTP_4XX, "404"), Outcome(B, Status.OK)])
        assert journal.conflicts() == 1
        counts = dict(journal.conn.execute("SELECT status, n FROM counts WHERE n > 0").fetchall())
    finally:
        journal.close()
    assert _rows(journal.path) == {A: "ok", B: "ok"}
    assert counts == {"ok": 2}
