"""One row's attempts: fetch → (fallback or refetch) → process pool → record.

`Attempts` takes a row from a fetch worker and sees it through to exactly one
outcome, handed to the recorder: the fetch under the run's budgets, the plan's
fallback when the first source failed for good, the body's trip through the pool
(restarted when a worker dies under it), and the outcome's details.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import aiohttp

from oidownload.core.config import Config
from oidownload.core.errors import OutputError
from oidownload.core.records import MaskOutcome, Outcome, Row, Status
from oidownload.engine.body import BodyWriter, MemfdPool
from oidownload.engine.fetch import Failure, fetch_body
from oidownload.engine.limits import ByteBudget, HostLimiter, Reservation
from oidownload.engine.maskframe import MaskIn
from oidownload.engine.masks import MaskFetcher
from oidownload.engine.metrics import Metrics
from oidownload.engine.process import Job
from oidownload.engine.progress import Progress
from oidownload.engine.recorder import Recorder
from oidownload.engine.stopping import Fail, Halt
from oidownload.engine.workers import Workers
from oidownload.sources import FetchPlan, Tried, open_source

# A pool whose workers keep dying for reasons of the machine, not of an image, must not
# restart for ever.
MAX_POOL_RESTARTS = 20


def pool_slots(processes: int) -> int:
    # Enough queued jobs that no pool worker idles while the next one is handed over.
    return max(2, 3 * processes)


@dataclass
class _Pooled:
    """A fetched body on its way through the pool, with what its outcome needs."""

    base: Outcome
    row: Row
    plan: FetchPlan
    tried: Tried
    note: str
    job: Job
    body: BodyWriter
    held: Reservation
    http_status: int
    mask_failed: tuple[MaskOutcome, ...] = ()  # masks (issue 22) that failed before the pool


class Attempts:
    """The per-row path of one run, from a fetch worker's row to its outcome. It owns
    the pool's side of the run (the job slots, the jobs in it, their restarts after a
    worker's death); the budgets (bytes, hosts) and the stop state are the task's,
    shared with it. `session` and `metrics` are set once the loop runs."""

    session: aiohttp.ClientSession

    def __init__(self, cfg: Config, progress: Progress, recorder: Recorder, workers: Workers,
                 memfds: MemfdPool | None, budget: ByteBudget, limiter: HostLimiter, halt: Halt, fail: Fail) -> None:
        self.cfg = cfg
        self.progress = progress
        self.recorder = recorder
        self.workers = workers
        self.memfds = memfds
        self.budget = budget
        self.limiter = limiter
        self.halt = halt
        self.fail = fail
        self.source = open_source(cfg.source)
        # masks (issue 22): None without --masks, so that path does no mask work at all
        self.masks = MaskFetcher(cfg, limiter, budget, fail) if cfg.masks.enabled else None
        self.metrics: Metrics | None = None
        self.rng = random.Random()
        self.pool_slots = asyncio.Semaphore(pool_slots(cfg.run.processes or 1))
        self.in_pool: set[asyncio.Future[Outcome]] = set()
        # Fallbacks, refetches, and jobs of a pool whose worker died, under way.
        self.extra: set[asyncio.Task[None]] = set()
        self.restart_lock = asyncio.Lock()
        self.deaths: dict[str, int] = {}  # ImageID -> times its worker died under it
        self.death_cause: dict[str, str] = {}

    def new_writer(self, charged: int) -> BodyWriter:
        return BodyWriter(self.memfds, charged)

    async def handle(self, session: aiohttp.ClientSession, row: Row) -> None:
        plan = self.source.plan(row)
        if plan is None:
            self.record(Outcome(row.image_id, Status.NO_URL, f"the row has no {self.source.name} URL", subset=row.subset,
                                file=row.file, line=row.line))
            return
        await self.attempt(row, plan, Tried(asyncio.get_running_loop().time()))

    async def attempt(self, row: Row, plan: FetchPlan, tried: Tried) -> None:
        """Fetches one plan for a row and hands the body to the pool; `finish` decides
        what a final outcome leads to."""
        loop = asyncio.get_running_loop()
        base = Outcome(row.image_id, Status.OK, subset=row.subset, source=plan.source, file=row.file, line=row.line,
                       url=plan.url)
        got = await fetch_body(
            self.session, plan.url,
            expected_size=plan.expected_size,
            net=self.cfg.net, limiter=self.limiter, reserve=self.budget.reserve,
            new_writer=self.new_writer, deadline=tried.t0 + self.cfg.net.image_deadline, rng=self.rng,
            stored=plan.check_etag,
            metrics=self.metrics,
        )
        base.attempts = tried.attempts + got.attempts
        result = got.result
        if isinstance(result, Failure):
            base.status, base.detail, base.http_status = result.status, result.detail, result.http_status
            if result.status is Status.BAD_ROW:
                base.detail = f"{row.file}:{row.line}: {base.detail}"
            stop = plan.via.failed(base)
            if stop is not None:
                self.fail(stop)
            base.seconds = loop.time() - tried.t0
            self.finish(base, row, plan, tried)
            return
        held = result.held
        body = result.body
        held.settle(body.size)
        expected_md5, checked_by, note = plan.via.checks(plan, result.etag)
        masks_in: tuple[MaskIn, ...] = ()
        mask_failed: tuple[MaskOutcome, ...] = ()
        if self.masks is not None and (refs := self.masks.wanted(row.image_id)):
            # masks (issue 22): fetched now, so that the worker frames them with the pixels
            fetched = await self.masks.fetch(self.session, row.subset, row.image_id, refs)
            masks_in, mask_failed = tuple(fetched.got), tuple(fetched.failed)
        job = Job(
            row.image_id, row.subset, plan.source,
            expected_size=plan.expected_size, expected_md5=expected_md5, checked_by=checked_by,
            rotation=row.rotation, has_rotation_column=row.has_rotation_column,
            file=row.file, line=row.line, encoding=result.encoding, max_decoded=self.cfg.net.max_body_bytes,
            masks=masks_in,
        )
        await self.to_pool(_Pooled(base, row, plan, tried, note, job, body, held, result.http_status, mask_failed))

    async def to_pool(self, p: _Pooled) -> None:
        """Hands a body to the pool; a pool found broken is restarted first."""
        loop = asyncio.get_running_loop()
        while True:
            generation = self.workers.generation
            try:
                await self.pool_slots.acquire()
                fut = self.workers.submit(loop, p.job, p.body)
                break
            except BrokenProcessPool:
                self.pool_slots.release()
                if await self.restart_pool(generation):
                    continue
                self.drop(p)
                return
            except RuntimeError as exc:
                self.pool_slots.release()
                self.drop(p)
                self.fail(OutputError(f"the process pool stopped working: {exc}"))
                return
            except BaseException:
                self.drop(p)
                raise
        self.in_pool.add(fut)
        fut.add_done_callback(functools.partial(self.processed, p, generation))

    def drop(self, p: _Pooled) -> None:
        p.held.release()
        p.body.close()

    def processed(self, p: _Pooled, generation: int, fut: asyncio.Future[Outcome]) -> None:
        self.in_pool.discard(fut)
        self.pool_slots.release()
        release = p.held.release
        if fut.cancelled():
            # The worker may still be reading the memfd: closing it now could let its
            # descriptor number be reused under the worker. The process is stopping.
            release()
            return
        exc = fut.exception()
        if isinstance(exc, BrokenProcessPool):
            # A worker died: every job of that pool fails with this. The body is kept
            # for another try in a new pool.
            task = asyncio.get_running_loop().create_task(self.after_death(p, generation))
            self.extra.add(task)
            task.add_done_callback(self.extra.discard)
            return
        p.body.close()
        base = p.base
        if exc is not None:
            base.status, base.detail = Status.CORRUPT, f"worker error: {type(exc).__name__}: {exc}"
            outcome = base
        else:
            outcome = fut.result()
            outcome.attempts = base.attempts
            outcome.url = base.url
            if p.note and outcome.status is Status.OK:
                outcome.detail = "; ".join(filter(None, (p.note, outcome.detail)))
            if p.mask_failed and outcome.status is Status.OK:
                outcome.masks = (*outcome.masks, *p.mask_failed)
        outcome.http_status = p.http_status
        outcome.seconds = asyncio.get_running_loop().time() - p.tried.t0
        # A staged image keeps its share of the budget until its sink has it out of
        # the way (an upload, say): that is what bounds the bytes waiting there.
        self.finish(outcome, p.row, p.plan, p.tried, release)

    async def after_death(self, p: _Pooled, generation: int) -> None:
        """One job of a pool whose worker died: tried again in the new pool, unless it
        was in the dying worker twice (then it is what kills workers: worker_died)."""
        if not await self.restart_pool(generation):
            self.drop(p)
            return
        died = self.deaths.get(p.job.image_id, 0)
        if died < 2:
            await self.to_pool(p)
            return
        p.body.close()
        base = p.base
        base.status = Status.WORKER_DIED
        base.detail = (f"the pool worker processing this image died {died} times ({self.death_cause.get(p.job.image_id, '')}); "
                       "out of memory? try a lower --max-decode-mb or fewer --processes")
        base.http_status = p.http_status
        base.seconds = asyncio.get_running_loop().time() - p.tried.t0
        self.finish(base, p.row, p.plan, p.tried, p.held.release)

    async def restart_pool(self, generation: int) -> bool:
        """Restarts the pool once per breakage (the first caller does it; the others
        find it done). False when workers kept dying and the run stops."""
        async with self.restart_lock:
            if self.workers.generation != generation or self.halt.fatal is not None:
                return self.halt.fatal is None
            if self.workers.generation >= MAX_POOL_RESTARTS:
                self.fail(OutputError(
                    f"pool workers died {self.workers.generation + 1} times (killed by the out-of-memory killer?); "
                    "rerun with fewer --processes, a lower --max-decode-mb or a smaller --max-bytes-in-flight-mb"
                ))
                return False
            try:
                deaths = await asyncio.get_running_loop().run_in_executor(None, self.workers.restart)
            except (BrokenProcessPool, OSError) as exc:
                self.fail(OutputError(f"cannot restart the process pool: {exc}"))
                return False
            for death in deaths:
                for image_id in death.holding:
                    self.deaths[image_id] = self.deaths.get(image_id, 0) + 1
                    self.death_cause[image_id] = death.describe()
                held = ", ".join(death.holding) or "no image"
                self.progress.log("worker-died", f"{death.describe()} while processing {held}; the pool was restarted. "
                                  "An image whose worker dies twice ends as worker_died", pid=death.pid,
                                  exitcode=death.exitcode, image_ids=list(death.holding))
            return self.halt.fatal is None

    def finish(self, outcome: Outcome, row: Row, plan: FetchPlan, tried: Tried,
               release: Callable[[], None] = lambda: None) -> None:
        """A fetch's outcome: recorded, or followed by the attempt the plan's source asks
        for (the fallback when the original is gone for good, a second fetch of a mirror
        copy whose MD5 disagrees with its ETag)."""
        again = plan.via.again(row, plan, outcome, tried)
        if again is not None and not self.halt.stopping.is_set():
            release()
            task = asyncio.get_running_loop().create_task(self.attempt(row, *again))
            self.extra.add(task)
            task.add_done_callback(self.extra.discard)
            return
        prior = tried.prior
        if prior is not None:
            why = f"the original was {prior.status.value}: {prior.detail}"
            outcome.detail = why if outcome.status is Status.OK and not outcome.detail else f"{why}; mirror: {outcome.detail}"
        outcome.original_md5, outcome.original_size = row.original_md5, row.original_size
        self.record(outcome, row, release)

    def record(self, outcome: Outcome, row: Row | None = None, release: Callable[[], None] = lambda: None) -> None:
        self.recorder.record(outcome, row, release)

