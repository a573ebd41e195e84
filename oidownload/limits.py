"""Bounded resources for the event loop: bytes in flight, and per-host concurrency
that backs off when a host says it is overloaded (429/503) and recovers after.

asyncio only; single loop, so no locks are needed around the counters.
"""

from __future__ import annotations

import asyncio
import collections


class ByteBudget:
    """Caps the bytes of bodies that are being read, queued for the pool or in it.

    Originals run to 15 MB, so a count of requests alone does not bound memory
    (Scrapy's downloader slots bound bytes for the same reason). A request larger
    than the whole budget is let through when nothing else holds any, so it can
    never wait forever.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.capacity or self.used == 0

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def adjust(self, old: int, new: int) -> None:
        """A reservation made on a guess (Content-Length absent) becomes the real size."""
        self.used += new - old
        self.peak = max(self.peak, self.used)
        if new < old:
            self._wake()

    def _wake(self) -> None:
        # First come, first served: a large request is not starved by small ones.
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


class _Host:
    __slots__ = ("active", "limit", "not_before", "streak", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.streak = 0
        self.not_before = 0.0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


class _Slot:
    __slots__ = ("_host", "_limiter")

    def __init__(self, limiter: HostLimiter, host: _Host) -> None:
        self._limiter = limiter
        self._host = host

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._host)

    async def __aexit__(self, *exc: object) -> None:
        self._limiter._release(self._host)


class HostLimiter:
    """Per-host concurrency, additive-increase / multiplicative-decrease.

    A 429 or 503 halves the host's limit (down to 1) and, with Retry-After, holds new
    requests to it until then; every `limit` successes in a row give one slot back,
    up to the configured maximum.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._hosts: dict[str, _Host] = {}

    def limit(self, host: str) -> int:
        h = self._hosts.get(host)
        return h.limit if h else self.maximum

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _Host(self.maximum)
        return h

    def slot(self, host: str) -> _Slot:
        """`async with limiter.slot(host):` holds one of the host's slots."""
        return _Slot(self, self._host(host))

    async def _acquire(self, h: _Host) -> None:
        if h.active < h.limit and not h.waiters and h.not_before == 0.0:
            h.active += 1  # the common case, without touching the loop's clock
            return
        loop = asyncio.get_running_loop()
        while True:
            wait = h.not_before - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            h.not_before = 0.0
            if h.active < h.limit and not h.waiters:
                break
            fut: asyncio.Future[None] = loop.create_future()
            h.waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut in h.waiters:
                    h.waiters.remove(fut)
                else:
                    self._wake(h)
                raise
            if h.active < h.limit:
                break
        h.active += 1

    def _release(self, h: _Host) -> None:
        h.active -= 1
        if h.waiters:
            self._wake(h)

    def _wake(self, h: _Host) -> None:
        free = h.limit - h.active
        while free > 0 and h.waiters:
            fut = h.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def penalise(self, host: str, retry_after: float | None = None) -> None:
        h = self._host(host)
        h.limit = max(1, h.limit // 2)
        h.streak = 0
        if retry_after:
            h.not_before = max(h.not_before, asyncio.get_running_loop().time() + retry_after)

    def reward(self, host: str) -> None:
        h = self._hosts.get(host)
        if h is None or h.limit >= self.maximum:
            return
        h.streak += 1
        if h.streak >= h.limit:
            h.limit += 1
            h.streak = 0
            self._wake(h)
