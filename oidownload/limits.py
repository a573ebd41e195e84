"""Bounded resources for the event loop: bytes in flight (`ByteBudget`, one
`Reservation` per body, grown as a body without Content-Length arrives), and per-host
concurrency that backs off when a host says it is overloaded (`HostLimiter`).

asyncio only; single loop, so no locks are needed around the counters.
"""

from __future__ import annotations

import asyncio
import collections

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


class _Host:
    __slots__ = ("active", "held_by", "limit", "not_before", "streak", "users", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.users = 0  # holding a slot, or waiting for one
        self.streak = 0
        self.not_before = 0.0
        self.held_by = 0  # the HTTP status that set not_before
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


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
    """Per-host concurrency, additive-increase / multiplicative-decrease.

    A 429 or 503 halves the host's limit (down to 1) and, with Retry-After, holds new
    requests to it until then; every `limit` successes in a row give one slot back,
    up to the configured maximum. A wait for a host never outlasts the waiting
    image's deadline: a hold past it raises HostHeld at once, and a wait for a free
    slot ends with TimeoutError at the deadline.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._hosts: dict[str, _Host] = {}
        self._sweep_at = _MAX_IDLE_HOSTS

    def limit(self, host: str) -> int:
        h = self._hosts.get(host)
        return h.limit if h else self.maximum

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
            h = self._hosts[host] = _Host(self.maximum)
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

    async def _acquire(self, h: _Host, deadline: float | None) -> None:
        h.users += 1
        if h.active < h.limit and not h.waiters and h.not_before == 0.0:
            h.active += 1  # the common case, without touching the loop's clock
            return
        try:
            await self._wait(h, deadline)
        except BaseException:
            h.users -= 1
            raise
        h.active += 1

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

    def penalise(self, host: str, retry_after: float | None = None, http_status: int = 503) -> None:
        """Halves the host's limit; with retry_after (already capped by the caller),
        holds the host that long."""
        h = self._host(host)
        h.limit = max(1, h.limit // 2)
        h.streak = 0
        if retry_after:
            until = asyncio.get_running_loop().time() + retry_after
            if until > h.not_before:
                h.not_before, h.held_by = until, http_status

    def reward(self, host: str) -> None:
        h = self._hosts.get(host)
        if h is None or h.limit >= self.maximum:
            return
        h.streak += 1
        if h.streak >= h.limit:
            h.limit += 1
            h.streak = 0
            self._wake(h)
