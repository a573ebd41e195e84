"""The masks of one image (--masks, issue 22), fetched after its body: their members read
from the split's mask zip by Range (sources/zipranges.py), near neighbours in one
request, each CRC-checked; or read from a local zip or a folder of PNGs.

Each zip's central directory is read once per run (and cached in the state dir across
runs, with the zip's size and ETag); a zip that changes meanwhile is read again once.
Requests go through the run's session (proxy, headers, timeouts), its per-host limiter
and byte budget, with the images' retry and backoff. A problem with one mask is that
mask's status (its image stays ok); a server that ignores Range is fatal at once.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

from oidownload.core.config import Config
from oidownload.core.errors import OidownloadError
from oidownload.core.records import MaskOutcome, MaskRef, Status, clean_text
from oidownload.engine.fetch import backoff, proxy_for
from oidownload.engine.limits import ByteBudget, HostLimiter
from oidownload.engine.maskframe import MaskIn
from oidownload.sources import zipranges as zr

# The member statuses of zipranges → the mask's status (all final: the zip says so).
_STATUS = {
    zr.MemberStatus.MISSING: Status.MASK_MISSING,
    zr.MemberStatus.CRC: Status.MASK_CRC,
    zr.MemberStatus.TRUNCATED: Status.CORRUPT,
    zr.MemberStatus.CORRUPT: Status.CORRUPT,
    zr.MemberStatus.UNSUPPORTED: Status.CORRUPT,
    zr.MemberStatus.TOO_LARGE: Status.TOO_LARGE,
}
_HTTP = re.compile(r"https?://", re.IGNORECASE)
BATCHES_PER_ZIP = 4  # member reads of one zip under way at once (each of several requests)
MAX_BATCH = 256  # images' requests served by one read: bounds its bytes (a few MB)


@dataclass
class MaskFetch:
    """What the masks of one image came to: the fetched ones for the worker, and the
    outcomes of those that failed before it."""

    got: list[MaskIn] = field(default_factory=list)
    failed: list[MaskOutcome] = field(default_factory=list)
    requests: int = 0


@dataclass
class _Zip:
    reader: zr.RangeReader
    directory: zr.Directory
    # Requests waiting for the next read of this zip's members, and the reads under way.
    pending: list[tuple[list[str], asyncio.Future[dict[str, zr.Member]]]] = field(default_factory=list)
    running: int = 0


# The masks' byte budget: an eighth of the images' (--max-bytes-in-flight-mb), at least this.
MIN_MASK_BUDGET = 4 * 1024 * 1024


class MaskFetcher:
    """One per run: the opened zips (each directory read once) and the fetch of one
    image's masks. `fail` stops the run with a fatal error (a server ignoring Range)."""

    def __init__(self, cfg: Config, limiter: HostLimiter, budget: ByteBudget,
                 fail: Callable[[OidownloadError], None]) -> None:
        self.cfg = cfg
        self.limiter = limiter
        # A budget of their own: an image's body holds its bytes until its masks come, so
        # mask reads waiting on the images' budget wait for ever once bodies fill it (a
        # run of 10,000 originals hung so). Mask reads hold bytes only while they read.
        self.budget = ByteBudget(max(MIN_MASK_BUDGET, budget.capacity // 8))
        self.fail = fail
        self.cache_dir = cfg.output.state_dir / "zipdirs"
        self.rng = random.Random()
        self._zips: dict[str, asyncio.Future[_Zip]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._missing: dict[str, str] = {}  # zips found missing (404): why
        self.requests = 0
        self.bytes = 0

    def wanted(self, image_id: str) -> tuple[MaskRef, ...]:
        return self.cfg.masks.wanted.get(image_id.lower(), ())

    def where(self, subset: str, image_id: str) -> str | None:
        return self.cfg.masks.zips.get((subset, image_id[:1].lower()))

    async def fetch(self, session: aiohttp.ClientSession, subset: str, image_id: str,
                    refs: Sequence[MaskRef]) -> MaskFetch:
        """The masks `refs` of one image; never raises for a mask's or a zip's fault."""
        out = MaskFetch()
        source = self.where(subset, image_id)
        if source is None:
            out.failed = [MaskOutcome(r.box_id, r.label, Status.MASK_MISSING,
                                      f"no mask zip for the subset {clean_text(subset, 40)!r}") for r in refs]
            return out
        if source in self._missing:
            return self._all(out, refs, Status.MASK_MISSING, self._missing[source])
        names = [r.mask_path for r in refs]
        net = self.cfg.net
        loop = asyncio.get_running_loop()
        deadline = loop.time() + net.image_deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                members = await self._members(session, source, names)
                break
            except zr.ZipChanged:  # read its directory again, once more at most
                if attempt > 1:
                    return self._all(out, refs, Status.CONNECTION, f"{source} kept changing while being read")
                continue
            except zr.ZipError as exc:
                code = exc.http_status
                if code in (404, 410):
                    # Said once per run: the other images of this zip do not ask again.
                    self._missing[source] = clean_text(str(exc), 300)
                    return self._all(out, refs, Status.MASK_MISSING, self._missing[source])
                if code is None or (code < 500 and code != 429):
                    # The whole zip is unusable (Range ignored, not a zip): every mask would
                    # fail alike, so the run stops with one message.
                    self.fail(exc)
                    return self._all(out, refs, Status.CONNECTION, clean_text(str(exc), 300))
                failure = (Status.HTTP_429 if code == 429 else Status.HTTP_5XX, clean_text(str(exc), 300))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = (Status.TIMEOUT if isinstance(exc, TimeoutError) else Status.CONNECTION,
                           clean_text(f"{type(exc).__name__}: {exc}", 300))
            delay = backoff(attempt, net, self.rng)
            if attempt > net.retries or loop.time() + delay >= deadline:
                return self._all(out, refs, *failure)
            await asyncio.sleep(delay)
        for r in refs:
            m = members[r.mask_path]
            if m.ok:
                out.got.append(MaskIn(r, m.data))
            else:
                status = _STATUS.get(m.status, Status.CORRUPT)
                out.failed.append(MaskOutcome(r.box_id, r.label, status, clean_text(f"{r.mask_path}: {m.detail}", 300)))
        return out

    @staticmethod
    def _all(out: MaskFetch, refs: Sequence[MaskRef], status: Status, detail: str) -> MaskFetch:
        out.failed = [MaskOutcome(r.box_id, r.label, status, detail) for r in refs]
        out.got = []
        return out

    async def _members(self, session: aiohttp.ClientSession, source: str, names: list[str]) -> dict[str, zr.Member]:
        if not _HTTP.match(source) and Path(source).is_dir():
            return await asyncio.to_thread(zr.read_folder, Path(source), names)
        z = await self._zip(session, source)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, zr.Member]] = loop.create_future()
        z.pending.append((names, fut))
        if z.running < BATCHES_PER_ZIP:
            z.running += 1
            task = loop.create_task(self._batches(z, source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await fut
        except (zr.ZipError, aiohttp.ClientError, TimeoutError, OSError):
            self._forget(source, z)  # opened again by the next try
            raise

    async def _batches(self, z: _Zip, source: str) -> None:
        """Reads the members asked for while the previous read was in flight, all in one
        go: masks of images whose ids are near are near in the zip (it is sorted by
        name), so one request often serves several images."""
        try:
            while z.pending:
                batch, z.pending = z.pending[:MAX_BATCH], z.pending[MAX_BATCH:]
                names = list(dict.fromkeys(n for ns, _ in batch for n in ns))
                try:
                    got = await self._read(z, source, names)
                except asyncio.CancelledError:
                    for _, f in batch:
                        f.cancel()
                    raise
                except BaseException as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for ns, f in batch:
                    if not f.done():
                        f.set_result({n: got[n] for n in ns})
        finally:
            z.running -= 1

    async def _read(self, z: _Zip, source: str, names: list[str]) -> dict[str, zr.Member]:
        spans, _ = zr.plan_ranges(z.directory, names)
        need = sum(s.end - s.start for s in spans)
        held = await self.budget.reserve(max(1, need))
        try:
            host = _host(source)
            if host:
                loop = asyncio.get_running_loop()
                async with self.limiter.slot(host):
                    sent = loop.time()
                    got = await zr.read_members(z.reader, z.directory, names)
                self.limiter.reward(host, loop.time() - sent)
            else:
                got = await zr.read_members(z.reader, z.directory, names)
        finally:
            held.release()
        self.requests += len(spans)
        self.bytes += need
        return got

    def _forget(self, source: str, z: _Zip) -> None:
        """Drops the opened zip `z` (not one opened again since by another image)."""
        fut = self._zips.get(source)
        if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is z:
            del self._zips[source]

    async def _zip(self, session: aiohttp.ClientSession, source: str) -> _Zip:
        """The zip at `source`, its directory read once per run (concurrent callers wait
        for the first)."""
        fut = self._zips.get(source)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._zips[source] = fut
            try:
                fut.set_result(await self._open(session, source))
            except BaseException as exc:
                self._zips.pop(source, None)
                fut.set_exception(exc)
                fut.exception()  # retrieved: the waiters below get it too
                raise
        return await asyncio.shield(fut)

    async def _open(self, session: aiohttp.ClientSession, source: str) -> _Zip:
        reader: zr.RangeReader
        if _HTTP.match(source):
            cached = zr.cache_path(self.cache_dir, source).is_file()
            host = _host(source)
            async with self.limiter.slot(host):
                reader = await zr.HttpRangeReader.open(session, source, zr.CHECK_BYTES if cached else zr.TAIL_BYTES,
                                                       proxy_for(URL(source)))
                directory = await zr.read_directory(reader, cache_dir=self.cache_dir, key=source)
        else:
            path = Path(source)
            if not path.is_file():
                raise zr.ZipError(f"{path}: no such mask zip", 404)
            reader = zr.FileRangeReader(path)
            directory = await zr.read_directory(reader, cache_dir=self.cache_dir, key=str(path.resolve()))
        return _Zip(reader, directory)


def _host(url: str) -> str:
    m = re.match(r"https?://([^/:]+)", url, re.IGNORECASE)
    return m.group(1).lower() if m else ""
