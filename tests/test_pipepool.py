"""The loop-driven process pool: answers reach the right futures, big jobs do not block the
loop, a dead worker breaks the pool and names the job it was on, close drains or kills."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import multiprocessing
import os
import random
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from oidownload.engine.body import BodyWriter, MemfdPool, opened
from oidownload.engine.pool import PipePool

_ctx_method = ["fork", "spawn"]


def _init(marker: str) -> None:
    os.environ["PIPEPOOL_TEST"] = marker


def _echo(i: int, sleep_ms: float) -> tuple[int, int, str]:
    time.sleep(sleep_ms / 1000)
    return i, os.getpid(), os.environ.get("PIPEPOOL_TEST", "")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _fail(text: str) -> None:
    raise ValueError(text)


def _hang(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


class _Picky(Exception):
    """Pickles, but cannot be rebuilt from its args."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a + b)


def _picky() -> None:
    raise _Picky(1, 2)


def _die_soon(seconds: float) -> int:
    def later() -> None:
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


async def _hanging(flag: Path) -> int:
    """The pid of the worker once it is in _hang."""
    while not flag.exists() or not flag.read_text():
        await asyncio.sleep(0.01)
    return int(flag.read_text())


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except OSError:
        return True


def _pool(method: str, n: int = 2) -> PipePool:
    ctx = multiprocessing.get_context("fork") if method == "fork" else multiprocessing.get_context("spawn")
    return PipePool(ctx, n, _init, ("ready",))


@pytest.mark.parametrize("method", _ctx_method)
def test_every_answer_reaches_its_own_future(method: str) -> None:
    pool = _pool(method)
    pids = set(pool.pids)
    rng = random.Random(7)

    async def run() -> list[tuple[int, int, str]]:
        loop = asyncio.get_running_loop()
        futs = [pool.submit(loop, f"job{i}", _echo, i, rng.choice((0, 0, 1, 5))) for i in range(300)]
        return list(await asyncio.gather(*futs))

    try:
        answers = asyncio.run(run())
    finally:
        pool.close(kill=False)
    assert [a[0] for a in answers] == list(range(300))
    assert {a[2] for a in answers} == {"ready"}  # the initializer ran in each worker
    assert {a[1] for a in answers} == pids  # both workers worked


@pytest.mark.parametrize("method", _ctx_method)
def test_bodies_larger_than_a_pipe_go_through_while_the_loop_runs(method: str) -> None:
    """Bodies travel as bytes when memfds are unavailable: megabytes per job, far more
    than a pipe holds. The loop must go on meanwhile (writes wait for the pipe)."""
    pool = _pool(method)
    bodies = [os.urandom(3_000_000 + i) for i in range(6)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        t = asyncio.create_task(ticker())
        futs = [pool.submit(loop, str(i), _md5, b) for i, b in enumerate(bodies)]
        try:
            return list(await asyncio.gather(*futs))
        finally:
            t.cancel()

    try:
        got = asyncio.run(run())
    finally:
        pool.close(kill=False)
    assert got == [hashlib.md5(b).hexdigest() for b in bodies]
    assert ticks > 3


def test_an_exception_in_the_worker_fails_only_its_future() -> None:
    pool = _pool("fork")

    async def run() -> tuple[BaseException | None, tuple[int, int, str]]:
        loop = asyncio.get_running_loop()
        bad = pool.submit(loop, "bad", _fail, "no good")
        good = pool.submit(loop, "good", _echo, 1, 0)
        await asyncio.wait([bad, good])
        return bad.exception(), good.result()

    try:
        exc, ok = asyncio.run(run())
    finally:
        pool.close(kill=False)
    assert isinstance(exc, ValueError) and str(exc) == "no good"
    assert ok[0] == 1


@pytest.mark.parametrize("method", _ctx_method)
def test_a_killed_worker_breaks_the_pool_and_names_its_job(method: str, tmp_path: Path) -> None:
    pool = _pool(method)
    flag = tmp_path / "pid"

    async def run() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        hang = pool.submit(loop, "the-hanging-one", _hang, str(flag))
        others = [pool.submit(loop, f"other{i}", _echo, i, 200) for i in range(6)]
        os.kill(await _hanging(flag), signal.SIGKILL)
        await asyncio.wait([hang, *others], timeout=30)
        with pytest.raises(BrokenProcessPool):
            pool.submit(loop, "late", _echo, 0, 0)
        return [f.exception() if f.done() else None for f in (hang, *others)]

    try:
        errors = asyncio.run(run())
        exited = pool.exited()
    finally:
        pool.close(kill=True)
    assert isinstance(errors[0], BrokenProcessPool)
    assert all(e is None or isinstance(e, BrokenProcessPool) for e in errors)  # each answered or failed, none hangs
    dead = [e for e in exited if e.pid == int(flag.read_text())]
    assert len(dead) == 1 and dead[0].exitcode == -signal.SIGKILL and dead[0].holding == ("the-hanging-one",)


def test_close_answers_what_was_sent_then_ends_every_worker() -> None:
    pool = _pool("fork")
    pids = pool.pids
    futs: list[asyncio.Future[tuple[int, int, str]]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        futs.extend(pool.submit(loop, str(i), _echo, i, 1) for i in range(4))
        await asyncio.gather(*futs)

    asyncio.run(run())
    pool.close(kill=False)
    assert [f.result()[0] for f in futs] == [0, 1, 2, 3]
    assert all(_gone(pid) for pid in pids)


def test_kill_ends_a_busy_worker_at_once(tmp_path: Path) -> None:
    pool = _pool("fork", 1)
    flag = tmp_path / "pid"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pool.submit(loop, "hang", _hang, str(flag))
        await _hanging(flag)

    asyncio.run(run())
    t0 = time.monotonic()
    pool.close(kill=True)
    assert time.monotonic() - t0 < 10
    assert not Path(f"/proc/{int(flag.read_text())}").exists()


def test_call_runs_in_the_named_worker_before_the_loop() -> None:
    pool = _pool("fork")
    try:
        assert pool.call(1, _echo, 5, 0)[:2] == (5, pool.pids[1])
        with pytest.raises(ValueError, match="before"):
            pool.call(0, _fail, "before")
    finally:
        pool.close(kill=False)


def test_a_pool_dropped_without_close_kills_its_workers() -> None:
    """Workers ignore SIGTERM, all that multiprocessing's exit hook would send them."""
    pool = _pool("fork")
    pids = pool.pids
    del pool
    gc.collect()
    assert all(_gone(pid) for pid in pids)


def test_an_answer_that_cannot_be_read_fails_its_job_and_the_next_ones_go_on() -> None:
    pool = _pool("fork", 1)

    async def run() -> tuple[BaseException | None, list[int]]:
        loop = asyncio.get_running_loop()
        bad = pool.submit(loop, "bad", _picky)
        good = [pool.submit(loop, str(i), _echo, i, 0) for i in range(3)]
        await asyncio.wait([bad, *good], timeout=30)
        return bad.exception(), [f.result()[0] for f in good]

    try:
        exc, answers = asyncio.run(run())
    finally:
        pool.close(kill=True)
    assert isinstance(exc, RuntimeError) and "cannot be read" in str(exc)
    assert answers == [0, 1, 2]


def test_a_call_that_times_out_breaks_the_pool_so_no_answer_lands_on_another_job() -> None:
    pool = _pool("fork", 1)
    try:
        with pytest.raises(BrokenProcessPool, match="did not answer"):
            pool.call(0, _echo, 1, 500, timeout=0.1)

        async def run() -> None:
            with pytest.raises(BrokenProcessPool):
                pool.submit(asyncio.get_running_loop(), "next", _echo, 2, 0)

        asyncio.run(run())
    finally:
        pool.close(kill=True)


def test_close_keeps_its_deadline_when_a_worker_never_reads_its_pipe(tmp_path: Path) -> None:
    """A worker stuck on a job, a body too big for its pipe half written behind it."""
    pool = _pool("fork", 1)
    flag = tmp_path / "pid"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pool.submit(loop, "hang", _hang, str(flag))
        pool.submit(loop, "big", _md5, os.urandom(8_000_000))
        await _hanging(flag)

    asyncio.run(run())
    t0 = time.monotonic()
    pool.close(kill=False, timeout=1.0)
    assert time.monotonic() - t0 < 8
    assert not Path(f"/proc/{int(flag.read_text())}").exists()


def test_a_worker_that_dies_between_jobs_is_not_blamed_on_the_next_one() -> None:
    pool = _pool("fork", 1)

    async def run() -> BaseException | None:
        loop = asyncio.get_running_loop()
        pid = await pool.submit(loop, "first", _die_soon, 0.2)
        time.sleep(1.0)  # the loop is busy: the worker dies idle before it hears of the death
        assert _gone(pid)
        nxt = pool.submit(loop, "innocent", _echo, 1, 0)
        await asyncio.wait([nxt], timeout=30)
        return nxt.exception()

    try:
        exc = asyncio.run(run())
        exited = pool.exited()
    finally:
        pool.close(kill=True)
    assert isinstance(exc, BrokenProcessPool)
    assert len(exited) == 1 and exited[0].exitcode == -signal.SIGKILL and exited[0].holding == ()


@pytest.mark.parametrize("memfd", [False, True])
def test_a_body_can_be_handed_over_again_after_a_pool_broke(memfd: bool) -> None:
    """After a worker death the job goes to the new pool with the same body: as bytes
    (no memfd) it was emptied by the first hand-over."""
    memfds = MemfdPool() if memfd else None
    body = BodyWriter(memfds)
    try:
        body.write(b"abc")
        body.write(b"def")
        refs = [body.handoff(), body.handoff()]
        with opened(refs[0]) as first, opened(refs[1]) as second:
            assert bytes(first[:]) == bytes(second[:]) == b"abcdef"
    finally:
        body.close()
        if memfds is not None:
            memfds.close()
