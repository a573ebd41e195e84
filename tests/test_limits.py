"""Retry-After parsing, backoff, and the per-host limiter's back-off and recovery."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from oidownload.core.config import NetConfig
from oidownload.engine.fetch import backoff, parse_retry_after
from oidownload.engine.limits import ByteBudget, HostLimiter, Reservation


def test_retry_after_both_forms() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert abs((parse_retry_after(formatdate(now + 30, usegmt=True), now=now) or 0) - 30) <= 1
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_full_jitter_backoff_is_bounded_and_grows() -> None:
    net = NetConfig(backoff_base=0.5, backoff_max=4.0)
    rng = random.Random(1)
    for attempt, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        samples = [backoff(attempt, net, rng) for _ in range(200)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.8  # spread over the whole range, not a constant


def test_host_limiter_halves_on_overload_and_recovers() -> None:
    async def scenario() -> list[int]:
        lim = HostLimiter(8)
        seen = [lim.limit("a")]
        lim.penalise("a")
        seen.append(lim.limit("a"))
        lim.penalise("a")
        lim.penalise("a")
        lim.penalise("a")
        seen.append(lim.limit("a"))
        for _ in range(200):
            lim.reward("a")
        seen.append(lim.limit("a"))
        seen.append(lim.limit("b"))
        return seen

    assert asyncio.run(scenario()) == [8, 4, 1, 8, 8]


def test_host_limiter_caps_concurrency_and_waits_for_retry_after() -> None:
    async def scenario() -> tuple[int, float]:
        lim = HostLimiter(4)
        lim.penalise("h")  # limit 2
        active = peak = 0

        async def one() -> None:
            nonlocal active, peak
            async with lim.slot("h"):
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        await asyncio.gather(*(one() for _ in range(20)))
        lim.penalise("h", retry_after=0.3)
        t0 = time.monotonic()
        await one()
        return peak, time.monotonic() - t0

    peak, waited = asyncio.run(scenario())
    assert peak == 2
    assert waited >= 0.28


def test_byte_budget_bounds_bytes_and_lets_a_giant_through_alone() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(100)
        log: list[str] = []
        first = await budget.reserve(60)
        held: list[Reservation] = []

        async def take(n: int, name: str) -> None:
            held.append(await budget.reserve(n))
            log.append(name)

        t1 = asyncio.create_task(take(50, "fifty"))
        t2 = asyncio.create_task(take(500, "giant"))
        await asyncio.sleep(0.01)
        assert log == [] and budget.used == 60
        first.release()
        await asyncio.sleep(0.01)
        assert log == ["fifty"]  # the giant waits for the budget to empty
        held[0].release()
        await asyncio.sleep(0.01)
        await asyncio.gather(t1, t2)
        assert budget.used == 500 and budget.peak == 500
        return log

    assert asyncio.run(scenario()) == ["fifty", "giant"]


def test_byte_budget_charges_growth_and_never_deadlocks() -> None:
    """Bodies without Content-Length grow their reservations: growth waits while
    another holder can still free bytes, and when every holder is waiting to grow
    the first goes on (alone past the budget), so the wait always ends."""

    async def scenario() -> None:
        budget = ByteBudget(100)
        a, b = await budget.reserve(40), await budget.reserve(40)
        in_pool = await budget.reserve(20)
        grow_a = asyncio.create_task(a.grow_to(70))
        await asyncio.sleep(0.01)
        assert not grow_a.done() and budget.used == 100  # the pool's body can still free bytes
        grow_b = asyncio.create_task(b.grow_to(100))
        new = asyncio.create_task(budget.reserve(1))
        await asyncio.sleep(0.01)
        assert not grow_a.done() and not grow_b.done() and not new.done()
        in_pool.release()  # 80 used, both growers blocked and they are all the holders
        await asyncio.sleep(0.01)
        assert grow_a.done() and not grow_b.done() and a.size == 70 and budget.used == 110
        a.settle(65)
        a.release()
        await asyncio.sleep(0.01)
        assert grow_b.done() and b.size == 100 and not new.done()  # growth goes first
        b.release()
        await asyncio.sleep(0.01)
        assert new.done() and budget.used == 1 and budget.holders == 1
        cancelled = asyncio.create_task(new.result().grow_to(500))
        extra = await budget.reserve(99)
        await asyncio.sleep(0.01)
        assert not cancelled.done()
        cancelled.cancel()
        await asyncio.sleep(0.01)
        extra.release()
        new.result().release()
        assert budget.used == 0 and budget.holders == 0

    asyncio.run(scenario())


def test_host_limiter_forgets_idle_hosts() -> None:
    """Rows spread over a million host names must not keep a million hosts' state."""

    async def scenario() -> int:
        lim = HostLimiter(4)
        for i in range(20_000):
            async with lim.slot(f"h{i}.example"):
                pass
        lim.penalise("busy.example", retry_after=60)
        return len(lim)

    kept = asyncio.run(scenario())
    assert kept <= 4096 + 1


def test_readme_status_table_matches_the_code() -> None:
    from pathlib import Path

    from oidownload.core.records import STATUS_MEANING, Status, is_final

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for status in Status:
        kind = "final" if is_final(status) else "retryable"
        assert f"| `{status.value}` | {kind} | {STATUS_MEANING[status]} |" in readme


def _drive(lim: HostLimiter, requests: int, serve: Callable[[], Awaitable[None]]) -> int:
    """Sends `requests` requests through the limiter from 512 workers; the most in flight."""
    peak = active = 0

    async def worker(todo: list[int]) -> None:
        nonlocal peak, active
        while todo:
            todo.pop()
            loop = asyncio.get_running_loop()
            async with lim.slot("h"):
                sent = loop.time()
                active += 1
                peak = max(peak, active)
                await serve()
                active -= 1
            lim.reward("h", loop.time() - sent)

    async def scenario() -> None:
        todo = list(range(requests))
        await asyncio.gather(*(worker(todo) for _ in range(512)))

    asyncio.run(scenario())
    return peak


def test_auto_doubles_each_round_trip_and_settles_at_the_knee() -> None:
    # Bound by the round trip: every doubling doubles the throughput, up to the ceiling.
    lim = HostLimiter(256, auto=True)
    assert lim.limit("h") == 16
    assert _drive(lim, 3000, lambda: asyncio.sleep(0.02)) == 256

    # A server that serves 24 at a time: beyond that, more in flight only queue there.
    capacity = asyncio.Semaphore(24)

    async def busy() -> None:
        async with capacity:
            await asyncio.sleep(0.01)

    lim = HostLimiter(256, auto=True)
    _drive(lim, 1500, busy)
    assert 16 <= lim.limit("h") <= 64

    fixed = HostLimiter(8)
    assert _drive(fixed, 200, lambda: asyncio.sleep(0.005)) == 8 and fixed.limit("h") == 8


def test_auto_settles_where_a_full_link_stays_full() -> None:
    """A link that carries one request a millisecond, 20 ms away: 20 in flight fill it.
    Past that the latency grows instead of the throughput, and the host settles with
    headroom above 20, far below the ceiling it would reach were the latency ignored."""
    free_at = 0.0
    done: list[float] = []

    async def link() -> None:
        nonlocal free_at
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.02)
        now = loop.time()
        free_at = max(free_at, now) + 0.001
        await asyncio.sleep(free_at - now)
        done.append(loop.time())

    lim = HostLimiter(256, auto=True)
    _drive(lim, 2500, link)
    assert 20 <= lim.limit("h") <= 64, lim.limit("h")
    # Once settled the link is kept busy: the last 1,000 took about a second.
    assert done[-1] - done[-1000] < 1.0 / 0.9, done[-1] - done[-1000]


def test_auto_stops_growing_after_an_overload_and_cuts_once_per_round() -> None:
    async def scenario() -> list[int]:
        lim = HostLimiter(256, auto=True)
        loop = asyncio.get_running_loop()
        async with lim.slot("h"):
            sent = loop.time()
        seen = [lim.limit("h")]
        lim.penalise("h", sent_at=sent)
        lim.penalise("h", sent_at=sent)  # the same round: no second cut
        seen.append(lim.limit("h"))
        for _ in range(100):
            lim.reward("h", 0.01)
        seen.append(lim.limit("h"))  # additive now: +1 per `limit` successes
        return seen

    assert asyncio.run(scenario()) == [16, 1, 14]  # 1+2+...+13 = 91 successes reach 14
