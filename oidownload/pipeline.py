"""The run: CSV reader → bounded queue → fetch workers → process pool → journal + progress.

The only module that knows about the event loop's tasks, the queue, the pool, the
budgets and signals. Everything a row becomes passes through `_record`, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import itertools
import json
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .body import BodyWriter, MemfdPool
from .config import Config, SourceChoice
from .errors import ConfigError, InputError, OidownloadError, OutputError
from .fetch import Failure, fetch_body, make_session
from .journal import DoneSet, Journal, other_done_sets, shard_counts
from .limits import ByteBudget, HostLimiter, Reservation
from .process import Job
from .progress import Progress, Tally
from .recorder import Recorder
from .records import BadRow, Outcome, Row, Source, Status
from .rows import Format, decode_errors, estimate_rows, iter_rows, read_header
from .selection import SelectionFilter
from .shard import Shard
from .sinks import Sink, open_sink
from .workers import Workers, start_workers

_READ_BATCH = 512
_FLUSH_EVERY = 0.5  # seconds between journal commits; a kill loses at most this much
# Outcomes waiting for the journal. A journal that falls behind (a slow fsync, a busy
# network filesystem, a reader holding its lock) holds new rows back at this many,
# rather than let them pile up in memory: measured, a 5 s commit let 45,000 pile up.
_MAX_PENDING = 10_000
SIGNAL_DEBOUNCE = 1.0  # seconds within which a repeated signal is the same one


class ExitCode(enum.IntEnum):
    OK = 0
    FATAL = 1
    USAGE = 2
    TOO_MANY_FAILURES = 3
    MAX_RUNTIME = 75  # EX_TEMPFAIL: stopped on time, rerun to resume
    SIGINT = 130
    SIGTERM = 143


@dataclass
class RunResult:
    tally: Tally
    exit_code: int
    wall: float
    cpu: float
    message: str = ""


def choose_source(row: Row, choice: SourceChoice) -> tuple[Source, str]:
    """(source, URL) for a row; the URL is empty when the row has none for the choice."""
    if choice is SourceChoice.ORIGINAL:
        return Source.ORIGINAL, row.original_url
    if choice is SourceChoice.THUMBNAIL:
        return Source.THUMBNAIL, row.thumbnail_url
    if row.thumbnail_url:
        return Source.THUMBNAIL, row.thumbnail_url
    return Source.ORIGINAL, row.original_url


def _limited(rows: Iterator[Row | BadRow], flt: SelectionFilter, limit: int | None) -> Iterator[Row | BadRow]:
    # Runs in the reader thread, in file order, so rows skipped as done before a row
    # have been counted by the time that row is tested against the limit.
    emitted = 0
    for row in rows:
        if limit is not None and emitted + flt.done_skipped >= limit:
            return
        yield row
        emitted += 1


class _Run:
    def __init__(self, cfg: Config, shard: Shard, progress: Progress, journal: Journal,
                 workers: Workers, formats: list[Format], done: DoneSet, sink: Sink) -> None:
        self.cfg = cfg
        self.shard = shard
        self.progress = progress
        self.journal = journal
        self.workers = workers
        self.sink = sink
        self.recorder = Recorder(progress, journal, sink, self.fail, cfg.output.out)
        self.memfds = MemfdPool() if workers.use_memfd else None
        self.formats = formats
        self.filter = SelectionFilter(shard, done, cfg.select.ids)
        n = cfg.net.concurrency
        self.queue: asyncio.Queue[Row | BadRow | None] = asyncio.Queue(maxsize=2 * n)
        self.budget = ByteBudget(cfg.run.max_bytes_in_flight)
        # Enough queued jobs that no pool worker idles while the next one is handed over.
        self.pool_slots = asyncio.Semaphore(max(2, 3 * cfg.run.processes))
        self.limiter = HostLimiter(cfg.net.per_host)
        self.rng = random.Random()
        self.in_pool: set[asyncio.Future[Outcome]] = set()
        self.inflight: set[str] = set()
        self.stopping = asyncio.Event()
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

    def new_writer(self) -> BodyWriter:
        return BodyWriter(self.memfds)

    # -- stopping ---------------------------------------------------------------------
    def request_stop(self, code: int, why: str) -> None:
        now = time.monotonic()
        if self.stopping.is_set():
            # One signal often arrives twice at once: schedulers signal the whole process
            # group and a wrapper script may pass it on as well. Only a later one is a
            # user's "stop now".
            if code in (ExitCode.SIGINT, ExitCode.SIGTERM) and now - self.stopped_at > SIGNAL_DEBOUNCE:
                self.progress.log("abort", "second signal: stopping now; the journal is flushed, unfinished images resume next run")
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
        limited = _limited(self.rows(), self.filter, self.cfg.select.limit)
        take = functools.partial(lambda it: list(itertools.islice(it, _READ_BATCH)), limited)
        try:
            while not self.stopping.is_set():
                batch = await loop.run_in_executor(self.reader_thread, take)
                if not batch:
                    break
                for row in batch:
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
            if row.image_id in self.inflight:
                continue  # the same id twice in the input: one download is enough
            await self.handle(session, row)

    async def handle(self, session: aiohttp.ClientSession, row: Row) -> None:
        loop = asyncio.get_running_loop()
        source, url = choose_source(row, self.cfg.select.source)
        base = Outcome(row.image_id, Status.OK, subset=row.subset, source=source, file=row.file, line=row.line)
        if not url:
            base.status, base.detail = Status.NO_URL, f"the row has no {source.value} URL"
            self.record(base)
            return
        self.inflight.add(row.image_id)
        t0 = loop.time()
        original = source is Source.ORIGINAL
        got = await fetch_body(
            session, url,
            expected_size=row.original_size if original else None,
            net=self.cfg.net, limiter=self.limiter, reserve=self.budget.reserve,
            new_writer=self.new_writer, deadline=t0 + self.cfg.net.image_deadline, rng=self.rng,
        )
        base.attempts = got.attempts
        result = got.result
        if isinstance(result, Failure):
            base.status, base.detail, base.http_status = result.status, result.detail, result.http_status
            if result.status is Status.BAD_ROW:
                base.detail = f"{row.file}:{row.line}: {base.detail}"
            base.seconds = loop.time() - t0
            self.record(base)
            return
        held = result.held
        body = result.body
        held.settle(body.size)
        job = Job(
            row.image_id, row.subset, source,
            expected_size=row.original_size if original else None,
            expected_md5=row.original_md5 if original else None,
            rotation=row.rotation, has_rotation_column=row.has_rotation_column,
            file=row.file, line=row.line,
        )
        try:
            await self.pool_slots.acquire()
            fut = self.workers.submit(loop, job, body)
        except (BrokenProcessPool, RuntimeError) as exc:
            self.pool_slots.release()
            held.release()
            body.close()
            self.fail(OutputError(f"the process pool stopped working: {exc}"))
            return
        except BaseException:
            held.release()
            body.close()
            raise
        self.in_pool.add(fut)
        fut.add_done_callback(functools.partial(self.processed, base, row, held, body, t0, result.http_status))

    def processed(self, base: Outcome, row: Row, held: Reservation, body: BodyWriter, t0: float, http_status: int,
                  fut: asyncio.Future[Outcome]) -> None:
        self.in_pool.discard(fut)
        self.pool_slots.release()
        held.release()
        if fut.cancelled():
            # The worker may still be reading the memfd: closing it now could let its
            # descriptor number be reused under the worker. The process is stopping.
            self.inflight.discard(base.image_id)
            return
        body.close()
        exc = fut.exception()
        if isinstance(exc, BrokenProcessPool):
            self.inflight.discard(base.image_id)
            self.fail(OutputError(
                "a pool worker died unexpectedly (killed by the out-of-memory killer?); "
                "rerun to resume, perhaps with fewer --processes or a smaller --max-bytes-in-flight"
            ))
            return
        if exc is not None:
            base.status, base.detail = Status.CORRUPT, f"worker error: {type(exc).__name__}: {exc}"
            outcome = base
        else:
            outcome = fut.result()
            outcome.attempts = base.attempts
        outcome.http_status = http_status
        outcome.seconds = asyncio.get_running_loop().time() - t0
        self.record(outcome, row)

    def record(self, outcome: Outcome, row: Row | None = None) -> None:
        self.inflight.discard(outcome.image_id)
        self.recorder.record(outcome, row)

    def write_progress(self, running: bool) -> None:
        rate, _ = self.progress.rates()
        planned = self.enqueued + self.filter.done_skipped if self.reader_finished else self.counted
        self.journal.set_progress(
            running=running, planned=planned, skipped=self.filter.done_skipped,
            processed=self.progress.tally.done, rate=rate,
        )

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last_progress = 0.0
        while True:
            await asyncio.sleep(_FLUSH_EVERY)
            self.progress.tally.skipped = self.filter.done_skipped
            self.progress.tick()
            await self.recorder.flush()
            if loop.time() - last_progress >= 5.0:
                last_progress = loop.time()
                try:
                    await self.recorder.run(self.write_progress, True)
                except OutputError as exc:
                    self.fail(exc)

    def estimate_total(self, done_at_start: int) -> None:
        """Background: an estimate gives the bar a total before the reader gets there;
        the exact count replaces it when the reader reaches the end."""
        lines = sum(estimate_rows(p) for p in self.cfg.inputs)
        share = lines // self.shard.count
        if self.cfg.select.limit is not None:
            share = min(share, self.cfg.select.limit)
        self.counted = share
        if not self.reader_finished:
            self.progress.set_total(max(0, share - done_at_start))

    async def drain(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers)
        while self.in_pool:
            await asyncio.wait(list(self.in_pool))

    async def main(self, done_at_start: int) -> None:
        loop = asyncio.get_running_loop()
        for sig, code in ((signal.SIGINT, ExitCode.SIGINT), (signal.SIGTERM, ExitCode.SIGTERM)):
            loop.add_signal_handler(sig, self.request_stop, code, f"{signal.Signals(sig).name} received")
        if self.cfg.run.max_runtime is not None:
            loop.call_later(self.cfg.run.max_runtime, self.request_stop, ExitCode.MAX_RUNTIME,
                            f"--max-runtime {self.cfg.run.max_runtime:.0f}s reached")
        threading.Thread(target=self.estimate_total, args=(done_at_start,), daemon=True, name="count").start()
        # The shard in the User-Agent lets an origin's logs tell cluster tasks apart.
        agent = f"{self.cfg.net.user_agent} shard/{self.shard.tag}"
        session = make_session(dataclasses.replace(self.cfg.net, user_agent=agent))
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
                    for task in (*workers, drain):
                        task.cancel()
                    for fut in list(self.in_pool):
                        fut.cancel()
            stop.cancel()
            reader.cancel()
            ticker.cancel()
            await asyncio.gather(drain, reader, ticker, stop, return_exceptions=True)
            if drain.done() and not drain.cancelled() and drain.exception() is not None:
                raise drain.exception()  # type: ignore[misc]
        finally:
            await session.close()
            await self.recorder.close(complete=not self.abandoned and self.fatal is None)
            try:
                await self.recorder.run(self.write_progress, False)
            except OutputError as exc:
                self.fail(exc)
            self.recorder.shutdown()
            if self.memfds is not None and not self.abandoned:
                self.memfds.close()
            self.reader_thread.shutdown(wait=False, cancel_futures=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _prepare_state(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the state dir {state_dir}: {exc.strerror or exc}; pick a writable --state-dir") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise OutputError(f"the state dir {state_dir} is not writable; pick a writable --state-dir or fix its permissions")


def _check_split(state_dir: Path, shard: Shard) -> None:
    """A share worked out from the scheduler's environment must match the split OUT
    already has: resubmitting one array task as an array of one would otherwise make it
    take every row (and race the other tasks for them). Explicit flags may re-split."""
    if shard.origin in ("flags", "single task"):
        return
    others = shard_counts(state_dir) - {shard.count}
    if others:
        raise ConfigError(
            f"{state_dir} holds a split {'/'.join(map(str, sorted(others)))} ways (journal-*-of-N), but this task "
            f"is {shard.describe()}. To rerun one array task keep its array: `scontrol requeue JOBID_TASKID`, or "
            f"pass --num-shards N --shard-index I (or OIDOWNLOAD_NUM_SHARDS/OIDOWNLOAD_SHARD_INDEX)"
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
    if found:
        progress.log("rebuild", f"the journal was new: found {found} image(s) already in {sink.describe()}; "
                     "they are not fetched again", rebuilt=found)


def run_download(cfg: Config, shard: Shard, progress: Progress) -> RunResult:
    """Runs one task's share to the end, a stop, or a fatal error. Fatal errors are
    raised (after the journal is flushed); everything else is in the result."""
    if not cfg.inputs:
        raise InputError("no input CSV given")
    formats = [read_header(p) for p in cfg.inputs]  # a bad header stops us before any request
    state_dir = cfg.output.state_dir
    sink = open_sink(cfg.output, shard)
    _prepare_state(state_dir)
    sink.prepare()
    _check_split(state_dir, shard)
    started = time.monotonic()
    cpu0 = _cpu_seconds()
    workers = start_workers(cfg.image, sink.target, cfg.run.processes)
    run: _Run | None = None
    try:
        journal = Journal(state_dir, shard, cfg.output.out)
        try:
            marker = state_dir / f"running-{shard.tag}"
            crashed = marker.exists()
            sink.recover(journal.sink_state(), shard.owns, crashed)
            if crashed:
                progress.log("recover", f"the last run of {shard.describe()} did not finish cleanly; "
                             f"cleaned up after it in {sink.describe()}")
            marker.touch()
            if journal.created:
                _rebuild(journal, sink, shard, progress)
            journal.set_meta("output", json.dumps({"out": cfg.output.out, "kind": cfg.output.kind.value}))
            journal.register_inputs(cfg.inputs)
            sel = cfg.select
            if sel.annotations or sel.classes:
                journal.set_meta("selection", json.dumps({
                    "annotations": [str(a) for a in sel.annotations], "classes": sorted(sel.classes),
                    "class_descriptions": str(sel.class_descriptions) if sel.class_descriptions else None,
                }))
            done = journal.done_set(retry_failed=cfg.select.retry_failed)
            others = other_done_sets(state_dir, shard, retry_failed=cfg.select.retry_failed)
            if others:
                done = DoneSet.merge([done, *others])
            progress.log(
                "start",
                f"oidownload: {shard.describe()}; {len(cfg.inputs)} input file(s); output: {sink.describe()}; "
                f"state: {state_dir}; {len(done)} image(s) already done",
                shard_index=shard.index, num_shards=shard.count, done_at_start=len(done),
                output=cfg.output.out, state_dir=str(state_dir),
            )
            run = _Run(cfg, shard, progress, journal, workers, formats, done, sink)
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                runner.run(run.main(len(done)))
        finally:
            journal.close()
    finally:
        workers.shutdown(kill=run is not None and run.abandoned)
    if not run.abandoned:
        marker.unlink(missing_ok=True)
    tally = progress.tally
    tally.skipped = run.filter.done_skipped
    if decode_errors():
        progress.log("warning", f"{decode_errors()} run(s) of bytes in the input were not UTF-8 and were read as U+FFFD",
                     undecodable=decode_errors())
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu0
    progress.summary(wall=wall, cpu=cpu)
    if run.fatal is not None:
        raise run.fatal
    if run.input_errors and run.stop_code is None:
        raise InputError("; ".join(str(e) for e in run.input_errors))
    code = run.stop_code if run.stop_code is not None else ExitCode.OK
    message = ""
    mfr = cfg.run.max_failure_rate
    if code == ExitCode.OK and mfr is not None and tally.done and tally.failure_rate() > mfr:
        code = ExitCode.TOO_MANY_FAILURES
        message = f"{tally.failed} of {tally.done} images failed ({tally.failure_rate():.1%}), over --max-failure-rate {mfr:.1%}"
    if code == ExitCode.MAX_RUNTIME:
        message = "stopped at --max-runtime; run the same command again to resume"
    return RunResult(tally, int(code), wall, cpu, message)
