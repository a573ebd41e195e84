"""The journal on real SQLite files: a failed batch rolls back whole and never poisons
the next one; one ImageID has one outcome (an ok is never replaced); the done-set's
lookups in any order agree with a plain set (its finger makes sorted lookups cheap,
and must never make one wrong)."""

from __future__ import annotations

import array
import random
from pathlib import Path

import pytest

from oidownload.core.errors import JournalError
from oidownload.core.records import Outcome, Status
from oidownload.core.shard import Shard
from oidownload.state.journal import DoneSet, Journal
from oidownload.testing import journals

A, B, C = "00000000000000a1", "00000000000000b2", "00000000000000c3"


def _rows(path: Path) -> dict[str, str]:
    return journals.statuses(path)


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


def test_a_flush_cancelled_before_its_write_started_still_writes_its_batch(tmp_path: Path) -> None:
    """The shutdown race (issue 15 item 12): the ticker's flush is cancelled at the end of
    the run while the journal's thread has not yet started its write (a CPU-busy machine
    is slow to schedule it). The batch must still reach the journal."""
    import asyncio
    import io
    import time

    from oidownload.core.config import OutputConfig, ProgressMode
    from oidownload.engine.progress import Progress
    from oidownload.engine.recorder import Recorder
    from oidownload.sinks.files import FilesSink

    journal = Journal(tmp_path / "state", Shard())
    sink = FilesSink(OutputConfig(str(tmp_path / "out"), tmp_path / "state"), Shard())
    failures: list[Exception] = []
    recorder = Recorder(Progress(ProgressMode.NONE, stream=io.StringIO()), journal, sink,
                        lambda exc, full: failures.append(exc), str(tmp_path / "out"))

    async def end_of_run() -> None:
        busy = asyncio.ensure_future(recorder.run(time.sleep, 0.3))  # the thread is not free yet
        for i in range(50):
            recorder.record(Outcome(f"{i:016x}", Status.OK, location=f"train/000/{i:016x}.jpg"))
        ticker_flush = asyncio.ensure_future(recorder.flush())
        await asyncio.sleep(0.05)
        ticker_flush.cancel()  # the run ended: the ticker is stopped mid-flush
        await asyncio.gather(ticker_flush, return_exceptions=True)
        await busy
        await recorder.close(complete=True)

    try:
        asyncio.run(end_of_run())
        recorder.shutdown()
    finally:
        journal.close()
    assert not failures
    assert len(_rows(journal.path)) == 50


def test_done_set_agrees_with_a_set_in_any_order() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        pool = sorted({rng.getrandbits(64) for _ in range(rng.randrange(0, 40))})
        done = sorted(rng.sample(pool, rng.randrange(0, len(pool) + 1)))
        ds, expected = DoneSet(array.array("Q", done)), set(done)
        queries = [format(v, "016x") for v in pool] + [format(rng.getrandbits(64), "016x") for _ in range(4)]
        if rng.random() < 0.5:
            rng.shuffle(queries)
        else:
            queries.sort()
        for q in queries * 2:  # and again: a repeated id is still found
            assert (q in ds) == (int(q, 16) in expected), q
    assert "not-hex-at-all!!" not in DoneSet(array.array("Q", [1]))


def test_done_set_meets_each_done_id_once() -> None:
    ds = DoneSet(array.array("Q", [3, 7, 11]))
    seen = [ds.meet(format(v, "016x")) for v in (3, 5, 7, 7, 11, 3, 12)]
    assert seen == [1, 0, 1, 2, 1, 2, 0]
