"""Bounded resources for the event loop: bytes in flight (`ByteBudget`, one
`Reservation` per body, grown as a body without Content-Length arrives), and per-host
concurrency that backs off when a host says it is overloaded (`HostLimiter`).

asyncio only; single loop, so no locks are needed around the counters.
"""

from __future__ import annotations

import asyncio
import collections
import math

from oidownload.core.config import AUTO_START

# Idle hosts are forgotten once this many are known, so that rows spread over many
# host names (hostile ones: one per row) keep memory flat.
_MAX_IDLE_HOSTS = 4096


class Reservation:
    """Bytes one body holds in its ByteBudget, from before its first byte until the
    pool is done with it. `release` must be called once, on every path."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget: ByteBudget | None = budget
        self.size = size

    async def grow_to(self, size: int) -> None:
        """Holds `size` bytes in all, waiting for the budget if it must."""
        if self._budget is not None and size > self.size:
            await self._budget._grow(self, size - self.size)
            self.size = size

    def settle(self, size: int) -> None:
        """The body is complete: hold exactly its size."""
        if self._budget is not None and size != self.size:
            self._budget._change(size - self.size)
            self.size = size

    def release(self) -> None:
        if self._budget is not None:
            self._budget._end(self, self.size)
            self._budget, self.size = None, 0


class ByteBudget:
    """Caps the bytes of bodies that are being read, queued for the pool or in it.

    Originals run to 15 MB, so a count of requests alone does not bound memory
    (Scrapy's downloader slots bound bytes for the same reason). A body without a
    Content-Length is charged as it grows, and waits when the budget is spent. Two
    rules keep it from ever waiting forever: a new reservation larger than the whole
    budget is let through when nothing else holds any, and when every holder is
    waiting to grow (none can finish to free bytes), the first of them goes on, and
    keeps going (over the budget, alone) until its body is complete.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.holders = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._growers: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._growing: dict[asyncio.Future[None], Reservation] = {}
        # The one reservation let past the budget, so that the bodies do not take turns
        # (each a chunk further, all of them over the budget together).
        self._overdraft: Reservation | None = None

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.capacity or self.used == 0

    async def reserve(self, n: int) -> Reservation:
        """A new reservation of n bytes, first come, first served."""
        if not self._waiters and not self._growers and self._fits(n):
            self._take(n)
        else:
            await self._wait(self._waiters, n)
        self.holders += 1
        return Reservation(self, n)

    async def _grow(self, res: Reservation, n: int) -> None:
        # Growing bodies go before new ones: finishing them is what frees bytes.
        if res is self._overdraft or (not self._growers and self.used + n <= self.capacity):
            self._take(n)
            return
        await self._wait(self._growers, n, res)

    async def _wait(self, queue: collections.deque[tuple[int, asyncio.Future[None]]], n: int,
                    res: Reservation | None = None) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        queue.append(entry)
        if res is not None:
            self._growing[fut] = res
        self._wake()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._change(-n)  # granted just as we were cancelled
            else:
                if entry in queue:
                    queue.remove(entry)
                self._wake()
            raise
        finally:
            self._growing.pop(fut, None)

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _change(self, n: int) -> None:
        self._take(n)
        if n < 0:
            self._wake()

    def _end(self, res: Reservation, n: int) -> None:
        if res is self._overdraft:
            self._overdraft = None
        self.holders -= 1
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        growers, waiters = self._growers, self._waiters
        while growers:
            n, fut = growers[0]
            if fut.done():  # cancelled: its task removes nothing more
                growers.popleft()
                continue
            if self.used + n > self.capacity:
                # Every holder waiting to grow: nothing would ever free a byte.
                if len(growers) < self.holders or self._overdraft is not None:
                    return
                self._overdraft = self._growing[fut]
            growers.popleft()
            self._take(n)
            fut.set_result(None)
        while waiters and (waiters[0][1].done() or self._fits(waiters[0][0])):
            n, fut = waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


class HostHeld(Exception):
    """A host asked (Retry-After) for a pause that lasts past this image's deadline."""

    def __init__(self, seconds: float, http_status: int) -> None:
        super().__init__(f"held for {seconds:.0f}s")
        self.seconds = seconds
        self.http_status = http_status


# The knee: a round trip's mean latency this many times the least one seen means the
# requests now queue (a full link, a busy server or a busy client) instead of adding
# throughput. Wide enough for a jittery host's noise, narrow enough that a link of
# 40 MB/s is still full when the limit settles.
_INFLATE = 1.5
# Settled at the in-flight count that carries the measured rate at the least latency
# (Little's law), with this headroom: the bottleneck stays busy through jitter.
_HEADROOM = 1.5
# A host that settled is probed once more (up to twice its limit) after this many
# rounds: the link or the server may have changed.
_REPROBE = 64

# _Host.phase
_FIXED, _PROBE, _HOLD, _AIMD = 0, 1, 2, 3


class _Host:
    __slots__ = ("active", "base", "ceiling", "cut_at", "floor", "held_by", "limit", "not_before", "peak", "phase",
                 "round", "streak", "throttled", "top", "users", "waiters", "win_lat", "win_n", "windows")

    def __init__(self, limit: int, ceiling: int, phase: int) -> None:
        self.limit = limit
        self.ceiling = ceiling
        self.phase = phase
        self.active = 0
        self.peak = 0  # most requests in flight at once
        self.throttled = 0  # times the limit was cut
        self.users = 0  # holding a slot, or waiting for one
        self.streak = 0
        self.not_before = 0.0
        self.held_by = 0  # the HTTP status that set not_before
        self.cut_at = 0.0  # loop time of the last cut
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # The current round (--per-host auto): `round` completions, about one round trip;
        # their count and summed latency.
        self.round = limit
        self.win_n = 0
        self.win_lat = 0.0
        self.base = float("inf")  # the least mean latency of a round
        self.floor = 0  # a re-probe settles no lower than the limit it started from
        self.top = ceiling  # nor grows past twice that
        self.windows = 0


class _Slot:
    __slots__ = ("_deadline", "_host", "_limiter")

    def __init__(self, limiter: HostLimiter, host: _Host, deadline: float | None) -> None:
        self._limiter = limiter
        self._host = host
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._host, self._deadline)

    async def __aexit__(self, *exc: object) -> None:
        self._limiter._release(self._host)


class HostLimiter:
    """Per-host concurrency: fixed at `maximum`, or with `auto` found per host.

    Fixed (--per-host N): additive-increase / multiplicative-decrease under N. A 429
    or 503 halves the host's limit (down to 1) and, with Retry-After, holds new
    requests to it until then; every `limit` successes in a row give one slot back,
    up to N.

    Auto (--per-host auto): each host starts at AUTO_START and grows as TCP's slow
    start does, one slot per completed request while requests wait for it (so it
    doubles every round trip), until a round's mean latency grows to _INFLATE times
    the least seen: more in flight now only queue (TCP Vegas's signal). It then
    settles at what Little's law says carries the rate of that round at the least
    latency, times _HEADROOM (BBR's estimate: bottleneck rate x minimum round trip),
    or at the ceiling; and grows once more (up to 2x) every _REPROBE rounds, settling no
    lower than before (only an overload lowers a limit). An overload answer (429,
    503, a reset or a timeout) ends the growth for good: the host is then AIMD as
    above, under the ceiling. The cost is a few counters per completed request.

    A wait for a host never outlasts the waiting image's deadline: a hold past it
    raises HostHeld at once, and a wait for a free slot ends with TimeoutError at
    the deadline.
    """

    def __init__(self, maximum: int, *, auto: bool = False) -> None:
        self.maximum = maximum
        self.auto = auto
        self.start = min(AUTO_START, maximum) if auto else maximum
        self._hosts: dict[str, _Host] = {}
        self._sweep_at = _MAX_IDLE_HOSTS

    def limit(self, host: str) -> int:
        h = self._hosts.get(host)
        return h.limit if h else self.start

    def __len__(self) -> int:
        """How many hosts it keeps state for."""
        return len(self._hosts)

    def hosts(self) -> list[tuple[str, int, int]]:
        """(host, requests in flight, limit) of every host it keeps state for."""
        return [(name, h.active, h.limit) for name, h in self._hosts.items()]

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            if len(self._hosts) >= self._sweep_at:
                self._sweep()
            h = self._hosts[host] = _Host(self.start, self.maximum, _PROBE if self.auto else _FIXED)
        return h

    def _sweep(self) -> None:
        """Forgets hosts nobody is using and that hold nobody back (a penalty is
        forgotten with them; a busy host keeps its own). Amortised: the next sweep
        waits until the dict has doubled."""
        now = asyncio.get_running_loop().time()
        self._hosts = {k: h for k, h in self._hosts.items() if h.users or h.not_before > now}
        self._sweep_at = max(_MAX_IDLE_HOSTS, 2 * len(self._hosts))

    def slot(self, host: str, deadline: float | None = None) -> _Slot:
        """`async with limiter.slot(host, deadline):` holds one of the host's slots;
        `deadline` is in the loop's time."""
        return _Slot(self, self._host(host), deadline)

    def busy(self) -> list[tuple[str, int, int, int, int]]:
        """(host, in flight, limit, most in flight, times cut) of every host whose
        limit moved from where it started: what a user needs to see why a run is as
        fast as it is. A few hosts at most in practice; bounded by the sweep."""
        return [(name, h.active, h.limit, h.peak, h.throttled) for name, h in self._hosts.items()
                if h.limit != self.start or h.throttled]

    def rows(self, most: int = 8) -> list[dict[str, object]]:
        """busy() as JSON objects, busiest first."""
        moved = sorted(self.busy(), key=lambda b: -b[1])[:most]
        return [{"host": name, "in_flight": active, "limit": limit, "peak": peak, "cuts": cuts}
                for name, active, limit, peak, cuts in moved]

    def describe(self, most: int = 3) -> str:
        """'host 118/128 in flight (grew), host2 3/4 (cut 2x)': the hosts whose limit moved,
        busiest first; '' when none did (then the limit explains nothing)."""
        moved = sorted(self.busy(), key=lambda b: -b[1])
        parts = [f"{name} {active}/{limit}" + (f" (cut {cuts}x)" if cuts else " (grew)")
                 for name, active, limit, _, cuts in moved[:most]]
        if len(moved) > most:
            parts.append(f"+{len(moved) - most} more")
        return ("in flight per host: " + ", ".join(parts)) if parts else ""

    async def _acquire(self, h: _Host, deadline: float | None) -> None:
        h.users += 1
        if h.active < h.limit and not h.waiters and h.not_before == 0.0:
            h.active += 1  # the common case, without touching the loop's clock
            if h.active > h.peak:
                h.peak = h.active
            return
        try:
            await self._wait(h, deadline)
        except BaseException:
            h.users -= 1
            raise
        h.active += 1
        if h.active > h.peak:
            h.peak = h.active

    async def _wait(self, h: _Host, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = h.not_before - loop.time()
            if wait > 0:
                if deadline is not None and h.not_before > deadline:
                    raise HostHeld(wait, h.held_by)
                await asyncio.sleep(wait)
                continue
            h.not_before = 0.0
            if h.active < h.limit and not h.waiters:
                return
            fut: asyncio.Future[None] = loop.create_future()
            h.waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except BaseException:
                if fut in h.waiters:
                    h.waiters.remove(fut)
                else:
                    self._wake(h)
                raise
            if h.active < h.limit:
                return

    def _release(self, h: _Host) -> None:
        h.active -= 1
        h.users -= 1
        if h.waiters:
            self._wake(h)

    def _wake(self, h: _Host) -> None:
        free = h.limit - h.active
        while free > 0 and h.waiters:
            fut = h.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def penalise(self, host: str, retry_after: float | None = None, http_status: int = 503,
                 sent_at: float | None = None) -> None:
        """Halves the host's limit; with retry_after (already capped by the caller),
        holds the host that long. With `sent_at` (the loop time the failed request
        was sent), answers to requests sent before the last cut do not cut again: a
        burst of 503s to one round of requests is one signal, as TCP counts one loss
        per window."""
        h = self._host(host)
        now = asyncio.get_running_loop().time()
        if sent_at is None or sent_at >= h.cut_at:
            # Half of what was really in flight (the failed request included) when that
            # was less than the limit, as TCP halves its flight size, not its window.
            flight = h.limit if sent_at is None else min(h.limit, h.active + 1)
            h.limit = max(1, flight // 2)
            h.streak = 0
            h.cut_at = now
            h.throttled += 1
            if h.phase != _FIXED:
                h.phase = _AIMD
        if retry_after:
            until = now + retry_after
            if until > h.not_before:
                h.not_before, h.held_by = until, http_status

    def reward(self, host: str, seconds: float | None = None) -> None:
        """One request to host succeeded; `seconds` from its slot to its last byte
        (auto measures rounds by it; without it a completion only counts)."""
        h = self._hosts.get(host)
        if h is None:
            return
        if h.phase == _PROBE or h.phase == _HOLD:
            self._measure(h, seconds)
            return
        if h.limit >= h.ceiling:
            return
        h.streak += 1
        if h.streak >= h.limit:
            h.limit += 1
            h.streak = 0
            self._wake(h)

    def _measure(self, h: _Host, seconds: float | None) -> None:
        if seconds is not None:
            h.win_n += 1
            h.win_lat += seconds
        if h.phase == _PROBE and h.waiters and h.limit < h.top:
            h.limit += 1
            self._wake(h)
        if h.win_n < h.round:
            return
        # About `round` requests were in flight while this round's were (the limit it
        # started at): at the least latency, that many x base/mean carry the same rate.
        mean, flight = h.win_lat / h.win_n, h.round
        h.win_n, h.win_lat, h.round = 0, 0.0, h.limit
        h.base = min(h.base, mean)
        if h.phase == _HOLD:
            h.windows += 1
            if h.windows >= _REPROBE and h.limit < h.ceiling:
                h.phase, h.floor, h.top = _PROBE, h.limit, min(h.ceiling, 2 * h.limit)
        elif mean > _INFLATE * h.base:
            need = math.ceil(flight * h.base / mean * _HEADROOM)
            self._settle(h, max(h.floor, min(h.ceiling, max(AUTO_START, need))))
        elif h.limit >= h.top:
            self._settle(h, h.limit)

    def _settle(self, h: _Host, limit: int) -> None:
        h.phase, h.windows = _HOLD, 0
        if limit != h.limit:
            h.limit = h.round = limit
            self._wake(h)
