"""The run: CSV reader → bounded queue → fetch workers → process pool → journal + progress.

The only module that knows about the event loop's tasks, the queue, the pool, the
budgets and signals. Everything a row becomes passes through `_record`, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from oidownload.core.config import Config
from oidownload.core.errors import ConfigError, InputError, OidownloadError, OutputError
from oidownload.core.exits import ExitCode, JobCounts, Verdict, finished_verdict
from oidownload.core.records import (
    RETRYABLE,
    BadRow,
    Conflict,
    Outcome,
    Row,
    Source,
    Status,
    clean_text,
    is_final,
)
from oidownload.core.shard import Shard
from oidownload.engine.accel import pillow_build
from oidownload.engine.body import BodyWriter, MemfdPool, pool_share
from oidownload.engine.cpus import usable_cpus
from oidownload.engine.fds import fit_concurrency
from oidownload.engine.fetch import Failure, default_agent, fetch_body, make_session
from oidownload.engine.limits import ByteBudget, HostLimiter, Reservation
from oidownload.engine.metrics import Exporter, Gauges, Metrics, check_file, expand_path, listen
from oidownload.engine.process import Job
from oidownload.engine.progress import Progress, Tally
from oidownload.engine.recorder import Recorder
from oidownload.engine.workers import Workers, start_workers
from oidownload.inputs.csvrecords import count_rows, estimate_rows
from oidownload.inputs.listing import SelectionFilter, empty_cause
from oidownload.inputs.rows import Format, iter_rows, read_header
from oidownload.inputs.text import decode_errors
from oidownload.sinks import Sink, open_sink
from oidownload.sources.plan import FetchPlan, etag_md5, mirror_plan, plan_fetch, wants_fallback
from oidownload.state.journal import (
    DoneSet,
    Journal,
    journal_files,
    journal_path,
    other_done_sets,
    shard_counts,
    writer_alive,
)
from oidownload.state.reader import StateDir, default_state_dir
from oidownload.state.settings import META_KEY as SETTINGS_KEY
from oidownload.state.settings import check_rerun, written_settings

_READ_BATCH = 512
_FLUSH_EVERY = 0.5  # seconds between journal commits; a kill loses at most this much
# Outcomes waiting for the journal. A journal that falls behind (a slow fsync, a busy
# network filesystem, a reader holding its lock) holds new rows back at this many,
# rather than let them pile up in memory: measured, a 5 s commit let 45,000 pile up.
_MAX_PENDING = 10_000
SIGNAL_DEBOUNCE = 1.0  # seconds within which a repeated signal is the same one
MIRROR_403_LIMIT = 5  # 403s in a row from the mirror that stop the run
# A pool whose workers keep dying for reasons of the machine, not of an image, must not
# restart for ever.
MAX_POOL_RESTARTS = 20


@dataclass
class RunResult:
    tally: Tally
    exit_code: int
    wall: float
    cpu: float
    message: str = ""
    # The job as the journal holds it after the run (this task's share, every run so far).
    job: JobCounts = dataclasses.field(default_factory=JobCounts)


class Stopper:
    """Stops a run from another thread, as a signal would: the Python API's answer to
    a KeyboardInterrupt or a cancelled await while the run has its own loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[asyncio.AbstractEventLoop, _Run] | None = None
        self._pending: list[tuple[int, str]] = []

    def attach(self, loop: asyncio.AbstractEventLoop, run: _Run) -> None:
        with self._lock:
            self._target = (loop, run)
            for code, why in self._pending:
                loop.call_soon_threadsafe(run.request_stop, code, why)
            self._pending.clear()

    def detach(self) -> None:
        with self._lock:
            self._target = None

    def stop(self, code: int = ExitCode.SIGINT, why: str = "interrupted") -> None:
        with self._lock:
            if self._target is None:
                self._pending.append((code, why))
                return
            loop, run = self._target
        try:
            loop.call_soon_threadsafe(run.request_stop, code, why)
        except RuntimeError:
            pass  # the loop just closed: the run is over


@dataclass(frozen=True, slots=True)
class _Tried:
    """What came before an attempt at one row: when it started (the image's deadline
    counts from there), requests so far, the original's failure when this is the
    fallback to the mirror, and whether the mirror copy was fetched a second time."""

    t0: float
    attempts: int = 0
    prior: Outcome | None = None
    refetched: bool = False


# What runs after a run whose journal is complete; its counts go in the summary.
Finish = Callable[[Config, Progress], dict[str, int] | None]


def _selected(rows: Iterator[Row | BadRow], flt: SelectionFilter, limit: int | None) -> Iterator[Row | BadRow | Conflict]:
    # Runs in the reader thread, in file order, so rows skipped as done before a row
    # have been counted by the time that row is tested against the limit. A repeated
    # ImageID is not a row of the selection: it counts neither against the limit nor
    # in the progress.
    emitted = 0
    for row in rows:
        if limit is not None and emitted + flt.done_skipped >= limit:
            return
        if isinstance(row, Row):
            admitted = flt.admit(row)
            if admitted is None:
                continue
            if isinstance(admitted, Conflict):
                yield admitted
                continue
        yield row
        emitted += 1


def pool_slots(processes: int) -> int:
    # Enough queued jobs that no pool worker idles while the next one is handed over.
    return max(2, 3 * processes)


def _fit_descriptors(cfg: Config, progress: Progress) -> Config:
    """The config with a concurrency that fits the open-file limit, said when lowered."""
    fit = fit_concurrency(cfg.net.concurrency, pool_slots(cfg.run.processes or 1))
    if not fit.lowered:
        return cfg
    progress.log("warning", f"the open-file limit (ulimit -n {fit.limit}) fits {fit.concurrency} requests at once: "
                 f"--concurrency lowered from {cfg.net.concurrency}, so that the journal can always be written; "
                 "raise the limit (ulimit -n 4096) to go faster", concurrency=fit.concurrency, nofile=fit.limit)
    per_host = None if cfg.net.per_host is None else min(cfg.net.per_host, fit.concurrency)
    net = dataclasses.replace(cfg.net, concurrency=fit.concurrency, per_host=per_host)
    return dataclasses.replace(cfg, net=net)


@dataclass
class _Pooled:
    """A fetched body on its way through the pool, with what its outcome needs."""

    base: Outcome
    row: Row
    plan: FetchPlan
    tried: _Tried
    note: str
    job: Job
    body: BodyWriter
    held: Reservation
    http_status: int


class _Run:
    session: aiohttp.ClientSession

    def __init__(self, cfg: Config, shard: Shard, progress: Progress, journal: Journal,
                 workers: Workers, formats: list[Format], done: DoneSet, sink: Sink) -> None:
        self.cfg = cfg
        self.shard = shard
        self.progress = progress
        self.journal = journal
        self.workers = workers
        self.sink = sink
        self.recorder = Recorder(progress, journal, sink, self.fail, cfg.output.out)
        # Pooled memfds keep their pages: their share comes out of the byte budget.
        pooled = pool_share(cfg.run.max_bytes_in_flight) if workers.use_memfd else 0
        self.memfds = MemfdPool(pooled) if workers.use_memfd else None
        self.formats = formats
        self.filter = SelectionFilter(shard, done, cfg.select.ids)
        n = cfg.net.concurrency
        self.queue: asyncio.Queue[Row | BadRow | None] = asyncio.Queue(maxsize=2 * n)
        self.budget = ByteBudget(cfg.run.max_bytes_in_flight - pooled)
        self.pool_slots = asyncio.Semaphore(pool_slots(cfg.run.processes or 1))
        self.limiter = HostLimiter(cfg.net.host_ceiling, auto=cfg.net.per_host is None)
        progress.hosts, progress.host_rows = self.limiter.describe, self.limiter.rows
        self.rng = random.Random()
        self.in_pool: set[asyncio.Future[Outcome]] = set()
        # Fallbacks, refetches, and jobs of a pool whose worker died, under way.
        self.extra: set[asyncio.Task[None]] = set()
        self.mirror_403s = 0
        self.restart_lock = asyncio.Lock()
        self.deaths: dict[str, int] = {}  # ImageID -> times its worker died under it
        self.death_cause: dict[str, str] = {}
        self.stopping = asyncio.Event()
        self.ticked = asyncio.Event()  # set: the ticker's last flush, then it ends
        self.abort = asyncio.Event()
        self.stop_code: int | None = None
        self.stopped_at = 0.0
        self.fatal: OidownloadError | None = None
        self.abandoned = False
        self.reader_thread = ThreadPoolExecutor(1, thread_name_prefix="reader")
        self.enqueued = 0
        self.reader_finished = False
        self.counted: int | None = None
        self.input_errors: list[InputError] = []
        self.stopper: Stopper | None = None
        self.exporter: Exporter | None = None
        self.metrics: Metrics | None = None
        self.woken = asyncio.Event()  # any stop request: ends the metrics' linger
        self.lingering = False

    def watch(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.metrics = self.recorder.metrics = exporter.metrics
        exporter.metrics.gauges = self.gauges

    def gauges(self) -> Gauges:
        skipped = self.filter.done_skipped
        return Gauges(
            bytes_in_flight=self.budget.used, bytes_in_flight_limit=self.budget.capacity,
            pool_workers=self.cfg.run.processes or 1, pool_jobs=len(self.in_pool), fetch_queue=self.queue.qsize(),
            journal_pending=len(self.recorder.pending), journal_lag=self.recorder.lag(),
            journal_commit_seconds=self.recorder.commit_seconds, outcomes_per_second=self.progress.rates()[0],
            rows_planned=self.enqueued + skipped if self.reader_finished else self.counted,
            rows_done=self.progress.tally.done + skipped, hosts=self.limiter.hosts(),
        )

    def new_writer(self, charged: int) -> BodyWriter:
        return BodyWriter(self.memfds, charged)

    # -- stopping ---------------------------------------------------------------------
    def request_stop(self, code: int, why: str) -> None:
        now = time.monotonic()
        self.woken.set()
        if self.lingering:
            return  # the work is over: a signal only ends --metrics-linger
        if self.metrics is not None and self.metrics.state == "running":
            self.metrics.state = "stopping"
        if self.stopping.is_set():
            # One signal often arrives twice at once: schedulers signal the whole process
            # group and a wrapper script may pass it on as well. Only a later one is a
            # user's "stop now".
            if code in (ExitCode.SIGINT, ExitCode.SIGTERM) and now - self.stopped_at > SIGNAL_DEBOUNCE:
                self.progress.log("abort", "second signal: stopping now; the journal is flushed, unfinished images resume next run",
                                  level="warning")
                self.abort.set()
            return
        self.stopped_at = now
        self.stop_code = code
        self.progress.log("stop", f"{why}: finishing in-flight images (up to {self.cfg.run.grace:.0f}s, signal again to stop now)")
        self.stopping.set()
        # Rows still queued are simply not started; the next run picks them up.
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in range(self.cfg.net.concurrency):
            self.queue.put_nowait(None)

    def fail(self, exc: OidownloadError, disk_full: bool = False) -> None:
        if disk_full:
            self.journal.release_reserve()
        if self.fatal is None:
            self.fatal = exc
            self.request_stop(ExitCode.FATAL, "fatal error, stopping")

    # -- stages -----------------------------------------------------------------------
    def rows(self) -> Iterator[Row | BadRow]:
        """Every input's rows, in the reader thread. An input that cannot be read to its
        end (a truncated .gz) ends there: the rows before are still downloaded, the
        other inputs are read, and the error ends the run once they are done."""
        sel = self.cfg.select
        accept = (lambda row: row.subset in sel.subsets) if sel.subsets else None
        for path, fmt in zip(self.cfg.inputs, self.formats, strict=True):
            try:
                yield from iter_rows(path, fmt, self.filter, accept)
            except InputError as exc:
                self.input_errors.append(exc)

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        limited = _selected(self.rows(), self.filter, self.cfg.select.limit)
        take = functools.partial(lambda it: list(itertools.islice(it, _READ_BATCH)), limited)
        try:
            while not self.stopping.is_set():
                batch = await loop.run_in_executor(self.reader_thread, take)
                if not batch:
                    break
                for row in batch:
                    if isinstance(row, Conflict):
                        self.recorder.conflict(row)
                        continue
                    if isinstance(row, BadRow) and not row.raw_id and self.shard.index != 0:
                        continue  # no id to shard by: the first task reports it
                    if self.stopping.is_set():
                        return
                    await self.queue.put(row)
                    self.enqueued += 1
        except InputError as exc:
            self.fail(exc)
            return
        self.reader_finished = True
        self.progress.set_total(self.enqueued)
        if not self.stopping.is_set():
            for _ in range(self.cfg.net.concurrency):
                await self.queue.put(None)

    async def fetch_worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            while len(self.recorder.pending) >= _MAX_PENDING and not self.stopping.is_set():
                await asyncio.sleep(_FLUSH_EVERY / 10)
            row = await self.queue.get()
            if row is None or self.stopping.is_set():
                return
            if isinstance(row, BadRow):
                self.record(Outcome(row.raw_id, Status.BAD_ROW, row.detail, file=row.file, line=row.line))
                continue
            await self.handle(session, row)

    async def handle(self, session: aiohttp.ClientSession, row: Row) -> None:
        plan = plan_fetch(row, self.cfg.source)
        if plan is None:
            choice = self.cfg.source.choice.value
            self.record(Outcome(row.image_id, Status.NO_URL, f"the row has no {choice} URL", subset=row.subset,
                                file=row.file, line=row.line))
            return
        await self.attempt(row, plan, _Tried(asyncio.get_running_loop().time()))

    async def attempt(self, row: Row, plan: FetchPlan, tried: _Tried) -> None:
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
            if plan.source is Source.CVDF:
                self.mirror_answered(base)
            base.seconds = loop.time() - tried.t0
            self.finish(base, row, plan, tried)
            return
        if plan.source is Source.CVDF:
            self.mirror_403s = 0
        held = result.held
        body = result.body
        held.settle(body.size)
        expected_md5, checked_by, note = plan.expected_md5, "OriginalMD5", ""
        if plan.check_etag:
            expected_md5, checked_by = etag_md5(result.etag), "the ETag"
            if expected_md5 is None:
                note = f"not hash-checked: the ETag {clean_text(result.etag or 'none', 80)} is not an MD5"
        job = Job(
            row.image_id, row.subset, plan.source,
            expected_size=plan.expected_size, expected_md5=expected_md5, checked_by=checked_by,
            rotation=row.rotation, has_rotation_column=row.has_rotation_column,
            file=row.file, line=row.line, encoding=result.encoding, max_decoded=self.cfg.net.max_body_bytes,
        )
        await self.to_pool(_Pooled(base, row, plan, tried, note, job, body, held, result.http_status))

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

    def mirror_answered(self, outcome: Outcome) -> None:
        """A mirror's 404 is final (it lacks the image); its 403 never is: a private
        bucket or a wrong --mirror-url answers 403 to everything, so after a few in a row
        the run stops instead of failing every row."""
        if outcome.http_status in (404, 410):
            outcome.status = Status.NOT_IN_MIRROR
        elif outcome.http_status == 403:
            outcome.status = Status.MIRROR_REFUSED
            self.mirror_403s += 1
            if self.mirror_403s >= MIRROR_403_LIMIT:
                self.fail(OidownloadError(
                    f"the mirror at {self.cfg.source.mirror_url} answered 403 Forbidden to {self.mirror_403s} "
                    "requests in a row: is --mirror-url right, and is the bucket public? Rows it refused are "
                    "tried again by the next run"))
            return
        self.mirror_403s = 0

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
            if self.workers.generation != generation or self.fatal is not None:
                return self.fatal is None
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
            return self.fatal is None

    def finish(self, outcome: Outcome, row: Row, plan: FetchPlan, tried: _Tried,
               release: Callable[[], None] = lambda: None) -> None:
        """A fetch's outcome: recorded, or, when the original is gone for good and
        --fallback allows, followed by one try of the mirror; a mirror copy whose MD5
        disagrees with its ETag is fetched once more (a torn transfer)."""
        again: tuple[FetchPlan, _Tried] | None = None
        if tried.prior is None and wants_fallback(self.cfg.source, plan, outcome.status, outcome.http_status):
            again = mirror_plan(row, self.cfg.source), dataclasses.replace(tried, attempts=outcome.attempts, prior=outcome)
        elif plan.source is Source.CVDF and outcome.status is Status.MD5_MISMATCH and not tried.refetched:
            again = plan, dataclasses.replace(tried, attempts=outcome.attempts, refetched=True)
        if again is not None and not self.stopping.is_set():
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

    def write_progress(self, running: bool, hosts: str | None) -> None:
        """On the journal's thread; `hosts` was read on the loop's (the limiter's dict
        changes under it)."""
        rate, _ = self.progress.rates()
        # A stopped run keeps no estimate: `status` would show it as the share's size.
        estimate = self.counted if running else None
        planned = self.enqueued + self.filter.done_skipped if self.reader_finished else estimate
        self.journal.set_progress(
            running=running, planned=planned, skipped=self.filter.done_skipped,
            processed=self.progress.tally.done, rate=rate, hosts=hosts,
        )

    async def ticker(self) -> None:
        """Flushes every _FLUSH_EVERY until `ticked` is set. It is stopped that way,
        never cancelled: a cancel in the middle of a flush could drop its batch."""
        loop = asyncio.get_running_loop()
        last_progress = 0.0
        while not self.ticked.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ticked.wait(), _FLUSH_EVERY)
            self.progress.tally.skipped = self.filter.done_skipped
            self.progress.tick()
            await self.recorder.flush()
            if self.exporter is not None:
                self.exporter.tick()
            if loop.time() - last_progress >= 5.0:
                last_progress = loop.time()
                try:
                    await self.recorder.run(self.write_progress, True, self.limiter.describe() or None)
                except OutputError as exc:
                    self.fail(exc)

    def count_total(self, done_at_start: int) -> bool:
        """Before the bar starts: small inputs are counted, and when every row of them is
        this run's to handle (one task, no subset, id or limit to narrow them), the bar
        has its exact total from the start, so it never jumps. False: estimate instead."""
        sel = self.cfg.select
        if self.shard.count != 1 or sel.subsets or sel.ids is not None or sel.limit is not None:
            return False
        counts = [count_rows(p) for p in self.cfg.inputs]
        if any(n is None for n in counts):
            return False
        self.counted = sum(n or 0 for n in counts)
        self.progress.set_total(max(0, self.counted - done_at_start))
        return True

    def estimate_total(self, done_at_start: int, loop: asyncio.AbstractEventLoop) -> None:
        """Background: an estimate gives the bar a total before the reader gets there;
        the exact count replaces it when the reader reaches the end."""
        lines = sum(count_rows(p) or estimate_rows(p) for p in self.cfg.inputs)
        share = lines // self.shard.count
        if self.cfg.select.ids is not None:
            # A class or --ids selection takes at most its images, however long the list:
            # the total starts near the truth instead of far above it (and never below it).
            share = min(share, len(self.cfg.select.ids))
        if self.cfg.select.limit is not None:
            share = min(share, self.cfg.select.limit)
        try:
            # On the loop's thread, so an estimate never lands after the exact count.
            loop.call_soon_threadsafe(self.estimated, share, done_at_start)
        except RuntimeError:
            pass  # the run is over

    def estimated(self, share: int, done_at_start: int) -> None:
        self.counted = share
        if not self.reader_finished:
            self.progress.set_total(max(0, share - done_at_start), exact=False)

    async def end_metrics(self) -> None:
        """The last counts, in the file and (for --metrics-linger, or until a signal)
        on /metrics, so that the last scrape sees the run's end."""
        assert self.exporter is not None and self.metrics is not None
        self.metrics.state = "done"
        self.exporter.tick(force=True)
        linger = self.cfg.run.metrics_linger
        if linger > 0 and self.exporter.sock is not None and not self.abandoned:
            self.woken.clear()
            self.lingering = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), linger)
        await self.exporter.stop()

    async def drain(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers)
        while self.in_pool or self.extra:
            waiting: list[asyncio.Future[Any]] = [*self.in_pool, *self.extra]
            await asyncio.wait(waiting)

    async def close_sink(self) -> None:
        """The sink's close and the last flush, within the run's time: once a stopping
        run's grace is over, or at a second signal, what the sink still waits for (an
        upload to a store that never answers) is abandoned, and the journal keeps
        what was confirmed."""
        closing = asyncio.create_task(self.recorder.close(complete=not self.abandoned and self.fatal is None))
        while not closing.done():
            done, _ = await asyncio.wait([closing], timeout=0.1)
            if done:
                break
            if self.abort.is_set() or (self.stopping.is_set()
                                       and time.monotonic() >= self.stopped_at + self.cfg.run.grace):
                n = self.sink.abandon()
                if n:
                    self.progress.log("abandon", f"stopping: {n} upload(s) still under way to {self.cfg.output.out} "
                                      "abandoned; the next run does them again", level="warning", abandoned=n)
                break
        await closing

    async def main(self, done_at_start: int) -> None:
        loop = asyncio.get_running_loop()
        # Signal handlers belong to the main thread; the Python API runs a pipeline in
        # another thread when its caller's loop is busy, and stops it through a Stopper.
        signals = threading.current_thread() is threading.main_thread()
        if signals:
            for sig, code in ((signal.SIGINT, ExitCode.SIGINT), (signal.SIGTERM, ExitCode.SIGTERM)):
                loop.add_signal_handler(sig, self.request_stop, code, f"{signal.Signals(sig).name} received")
        if self.stopper is not None:
            self.stopper.attach(loop, self)
        if self.cfg.run.max_runtime is not None:
            loop.call_later(self.cfg.run.max_runtime, self.request_stop, ExitCode.MAX_RUNTIME,
                            f"--max-runtime {self.cfg.run.max_runtime:.0f}s reached")
        if not self.count_total(done_at_start):
            threading.Thread(target=self.estimate_total, args=(done_at_start, loop), daemon=True, name="count").start()
        agent = self.cfg.net.user_agent or default_agent(self.shard.tag)
        session = self.session = make_session(dataclasses.replace(self.cfg.net, user_agent=agent))
        self.sink.start()
        if self.exporter is not None:
            await self.exporter.start()
        try:
            workers = [asyncio.create_task(self.fetch_worker(session)) for _ in range(self.cfg.net.concurrency)]
            reader = asyncio.create_task(self.read())
            ticker = asyncio.create_task(self.ticker())
            drain = asyncio.create_task(self.drain(workers))
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait([drain, stop], return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                abort = asyncio.create_task(self.abort.wait())
                await asyncio.wait([drain, abort], timeout=self.cfg.run.grace, return_when=asyncio.FIRST_COMPLETED)
                abort.cancel()
                if not drain.done():
                    self.abandoned = True
                    for task in (*workers, drain, *self.extra):
                        task.cancel()
                    for fut in list(self.in_pool):
                        fut.cancel()
            stop.cancel()
            reader.cancel()
            self.ticked.set()
            await asyncio.gather(drain, reader, ticker, stop, return_exceptions=True)
            if drain.done() and not drain.cancelled() and drain.exception() is not None:
                raise drain.exception()  # type: ignore[misc]
        finally:
            await session.close()
            await self.close_sink()
            try:
                await self.recorder.run(self.write_progress, False, self.limiter.describe() or None)
            except OutputError as exc:
                self.fail(exc)
            self.recorder.shutdown()
            if self.exporter is not None:
                await self.end_metrics()
            if self.memfds is not None and not self.abandoned:
                self.memfds.close()
            self.reader_thread.shutdown(wait=False, cancel_futures=True)
            if self.stopper is not None:
                self.stopper.detach()
            if signals:
                # The work is over and journaled; a signal now must not kill the last steps
                # (the summary, the exit code); a second one does. Blocked while the handlers
                # change hands, or one landing in between would meet the default and kill.
                both = {signal.SIGINT, signal.SIGTERM}
                signal.pthread_sigmask(signal.SIG_BLOCK, both)
                try:
                    for sig in both:
                        loop.remove_signal_handler(sig)
                        signal.signal(sig, _late_signal)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)


def _late_signal(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _cpu_seconds(children: bool = True) -> float:
    """CPU seconds of this process (its threads included), and of the pool workers it
    reaped when `children`: the main process's share is what benchmarks/ tracks."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total


def _prepare_state(state_dir: Path, out: str) -> None:
    # Blame --state-dir only when it was given; else the journal's place follows from OUT.
    given = state_dir != default_state_dir(out)
    what = f"the state dir {state_dir}" if given else f"the journal folder {state_dir} (in OUT)"
    fix = "pick a writable --state-dir" if given else "pick another OUT, or keep the journal elsewhere with --state-dir"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what}: {exc.strerror or exc}; {fix}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{what} is not writable; fix its permissions or {fix}")


def _check_split(state_dir: Path, shard: Shard, resplit: bool) -> None:
    """One split of the rows per output, unless a re-split is asked for; and never two
    splits at once: their tasks would fetch the same images twice."""
    others = [p for p in journal_files(state_dir) if not p.name.endswith(f"-of-{shard.count}.sqlite")]
    if not others:
        return
    counts = "/".join(map(str, sorted(shard_counts(state_dir) - {shard.count})))
    busy = [p.name for p in others if writer_alive(p)]
    if busy:
        raise ConfigError(
            f"{state_dir} is being written with another split of the rows ({', '.join(busy[:3])}), but this run is "
            f"{shard.describe()}: both would fetch the same images. Wait for it to finish, or run with its split"
        )
    if shard.origin not in ("flags", "single task"):
        # A share worked out from the scheduler's environment: resubmitting one array task
        # as an array of one would otherwise make it take every row.
        raise ConfigError(
            f"{state_dir} holds a split {counts} ways (journal-*-of-N), but this task is {shard.describe()}. "
            f"To rerun one array task keep its array: `scontrol requeue JOBID_TASKID`, or pass --num-shards N "
            f"--shard-index I (or OIDOWNLOAD_NUM_SHARDS/OIDOWNLOAD_SHARD_INDEX)"
        )
    if not resplit:
        raise ConfigError(
            f"{state_dir} holds a split {counts} ways (journal-*-of-N), but this run is {shard.describe()}. "
            "Pass --resplit to split the same output another way (finished images are not fetched again), "
            f"or run with --num-shards {counts.split('/')[0]}"
        )


def _rebuild(journal: Journal, sink: Sink, shard: Shard, progress: Progress) -> None:
    """A new journal next to an output that already holds images (the state dir was
    lost, or moved): record what the output holds, so none of it is fetched again."""
    batch: list[Outcome] = []
    found = 0
    for outcome in sink.rebuild(shard.owns):
        batch.append(outcome)
        if len(batch) >= 10_000:
            journal.record(batch)
            found += len(batch)
            batch = []
    journal.record(batch)
    found += len(batch)
    for warning in sink.warnings():
        progress.log("rebuild", warning, level="warning")
    if found:
        progress.log("rebuild", f"the journal was new: found {found} image(s) already in {sink.describe()}; "
                     "they are not fetched again", rebuilt=found)


def run_download(cfg: Config, shard: Shard, progress: Progress, stopper: Stopper | None = None,
                 finish: Finish | None = None) -> RunResult:
    """Runs one task's share to the end, a stop, or a fatal error. Fatal errors are
    raised (after the journal is flushed); everything else is in the result. `finish`
    runs once the journal is closed (the lock file and the --from-lock comparison: the
    engine does not know them); what it returns goes in the summary as `from_lock`."""
    if not cfg.inputs:
        raise InputError("no input CSV given")
    formats = [read_header(p) for p in cfg.inputs]  # a bad header stops us before any request
    state_dir = cfg.output.state_dir
    sink = open_sink(cfg.output, shard, cfg.run.grace)
    _prepare_state(state_dir, cfg.output.out)
    sink.prepare()
    _check_split(state_dir, shard, cfg.run.resplit)
    settings = written_settings(cfg)
    check_rerun(state_dir, cfg.output.out, settings)
    started = time.monotonic()
    cpu0 = _cpu_seconds()
    main0 = _cpu_seconds(children=False)
    if cfg.run.processes is None:
        cpus = usable_cpus()
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, processes=cpus.count))
        chosen = f"one per usable CPU: {cpus.why}"
    else:
        chosen = "--processes"
    processes = cfg.run.processes or 1
    workers = start_workers(cfg.image, sink.target, processes)
    run: _Run | None = None
    exporter: Exporter | None = None
    try:
        # Bound after the pool is forked, so that no worker holds the port open.
        exporter = _exporter(cfg, shard)
        journal = Journal(state_dir, shard, cfg.output.out)
        try:
            marker = state_dir / f"running-{shard.tag}"
            crashed = marker.exists()
            found = sink.recover(journal.sink_state(), shard.owns, crashed)
            # Before the state that goes with it: a crash in between finds the same loss again.
            for lost in found.unproven:
                n = journal.unfound(lost.shard, lost.kept, f"{lost.why}: fetched again")
                if n:
                    progress.log("recover", f"{lost.why}: {n} sample(s) journaled in it are not there and "
                                 "are fetched again", level="warning", shard_file=lost.shard, lost=n)
            journal.record(found.committed, found.state)
            for warning in sink.warnings():
                progress.log("recover", warning, level="warning")
            if crashed:
                progress.log("recover", f"the last run of {shard.describe()} did not finish cleanly; "
                             f"cleaned up after it in {sink.describe()}")
            marker.touch()
            if journal.created:
                _rebuild(journal, sink, shard, progress)
            journal.set_meta("output", json.dumps({"out": cfg.output.out, "kind": cfg.output.kind.value,
                                                    "keep_original": cfg.image.keep_original}))
            journal.set_meta(SETTINGS_KEY, json.dumps(settings))
            if cfg.select.options:
                journal.set_meta("selection_options", cfg.select.options)
            if cfg.select.from_lock is not None:
                journal.set_meta("from_lock", str(cfg.select.from_lock))
            journal.register_inputs(cfg.inputs)
            sel = cfg.select
            if sel.annotations or sel.classes or sel.db:
                journal.set_meta("selection", json.dumps({
                    "annotations": [str(a) for a in sel.annotations], "classes": sorted(sel.classes),
                    "class_descriptions": str(sel.class_descriptions) if sel.class_descriptions else None,
                    "db": sel.db,
                }))
            done = journal.done_set(retry_failed=cfg.select.retry_failed)
            others = other_done_sets(state_dir, shard, retry_failed=cfg.select.retry_failed)
            if others:
                done = DoneSet.merge([done, *others])
            kind = "thread" if workers.in_process else "process"
            progress.log(
                "start",
                f"{shard.describe()}; {len(cfg.inputs)} input file(s); output: {sink.describe()}; "
                f"state: {state_dir}; {len(done)} image(s) already done; "
                f"{processes} worker {kind}{'es' if kind == 'process' and processes > 1 else 's' if processes > 1 else ''} ({chosen})",
                shard_index=shard.index, num_shards=shard.count, done_at_start=len(done),
                output=cfg.output.out, state_dir=str(state_dir), processes=processes, workers=kind,
            )
            cfg = _fit_descriptors(cfg, progress)
            run = _Run(cfg, shard, progress, journal, workers, formats, done, sink)
            run.stopper = stopper
            if exporter is not None:
                run.watch(exporter)
                if exporter.address:
                    progress.log("metrics", f"Prometheus metrics on {exporter.address}", metrics=exporter.address)
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                runner.run(run.main(len(done)))
        finally:
            try:
                sink.release()
            finally:
                journal.close()
    finally:
        workers.shutdown(kill=run is not None and run.abandoned)
        if exporter is not None and exporter.sock is not None:
            exporter.sock.close()  # already closed unless the run failed before its loop
    if not run.abandoned:
        marker.unlink(missing_ok=True)
    compared = finish(cfg, progress) if finish is not None and run.fatal is None else None
    tally = progress.tally
    tally.skipped = run.filter.done_skipped
    if run.filter.duplicates or run.recorder.conflicts:
        progress.log("duplicates", f"{run.filter.duplicates} row(s) repeated an ImageID already met and were skipped "
                     f"without a request (one outcome per ImageID, the first row wins); {run.recorder.conflicts} "
                     "disagreed with it (another OriginalURL or OriginalMD5): see conflicts.csv from `oidownload report`",
                     duplicates=run.filter.duplicates, conflicts=run.recorder.conflicts)
    if decode_errors():
        progress.log("undecodable", f"{decode_errors()} run(s) of bytes in the input were not UTF-8 and were read as U+FFFD",
                     level="warning", undecodable=decode_errors())
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu0
    progress.summary(wall=wall, cpu=cpu, extra={"pillow": pillow_build().describe(),
                                                "main_cpu_s": round(_cpu_seconds(children=False) - main0, 3),
                                                **({"from_lock": compared} if compared is not None else {}),
                                                **({"hosts": rows} if (rows := run.limiter.rows()) else {})})
    if run.fatal is not None:
        raise run.fatal
    if run.input_errors and run.stop_code is None:
        raise InputError("; ".join(str(e) for e in run.input_errors))
    verdict = _verdict(cfg, shard, run, tally)
    job = _job_counts(state_dir, shard)
    if verdict is None:
        verdict = finished_verdict(job, sum(n for s, n in tally.by_status.items() if s in RETRYABLE),
                                   cfg.run.max_failure_rate)
    return RunResult(tally, int(verdict.code), wall, cpu, verdict.message, job)


def _exporter(cfg: Config, shard: Shard) -> Exporter | None:
    """--metrics-port and --metrics-file, checked before any download: a port in use or
    a folder that takes no file stops the run here."""
    r = cfg.run
    if r.metrics_port is None and r.metrics_file is None:
        return None
    path = expand_path(r.metrics_file, shard) if r.metrics_file is not None else None
    if path is not None:
        check_file(path)
    sock = listen(r.metrics_addr, r.metrics_port) if r.metrics_port is not None else None
    return Exporter(Metrics(shard), sock, path)


def _verdict(cfg: Config, shard: Shard, run: _Run, tally: Tally) -> Verdict | None:
    """The code of a run that was stopped or selected nothing; None for a finished run
    whose code depends on the job's counts."""
    if run.stop_code is not None:
        code = ExitCode(run.stop_code)
        if code == ExitCode.MAX_RUNTIME:
            return Verdict(code, "stopped at --max-runtime")
        return Verdict(code, f"{'interrupted' if code == ExitCode.SIGINT else 'terminated'}: "
                             f"the {tally.done} image(s) finished in this run are journaled")
    if tally.done or run.filter.done_skipped:
        return None
    # This task's share of the selection is empty. In a cluster run that is normal when
    # the selection is small: the rows belong to other tasks. Only a selection that no
    # task's share holds is the user's mistake (a --subset that is not in the data,
    # classes no image of the input carries).
    sel = cfg.select
    why = empty_cause(cfg.inputs, subsets=sel.subsets, ids=sel.ids, ids_from=sel.ids_from)
    if why is None:
        return Verdict(ExitCode.OK, f"{shard.describe()} has no row of the selection: the other tasks own them"
                       if shard.count > 1 else "")
    return Verdict(ExitCode.NOTHING_SELECTED, f"nothing selected: {why}")


def _job_counts(state_dir: Path, shard: Shard) -> JobCounts:
    """The whole job of this task, from its journal: every row any run of it has seen."""
    rows = ok = final = 0
    for jc in StateDir(state_dir).counts(only=journal_path(state_dir, shard)):
        for c in jc.counts:
            rows += c.n
            if c.status == Status.OK:
                ok += c.n
            elif is_final(Status(c.status)):
                final += c.n
    return JobCounts(rows, ok, final)
