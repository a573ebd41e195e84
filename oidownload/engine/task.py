"""The task core: the event loop's tasks for one run of one task's share.

The reader fills a bounded queue; `concurrency` fetch workers take rows from it and
hand each to the row's attempts; a ticker flushes the journal and the progress. The
only module that knows the loop's tasks, the stop requests and signals, and how a run
drains (or gives up on its grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any

import aiohttp

from oidownload.core.config import Config
from oidownload.core.errors import OidownloadError, OutputError
from oidownload.core.exits import ExitCode
from oidownload.core.records import BadRow, Outcome, Status
from oidownload.core.shard import Shard
from oidownload.engine.attempt import Attempts
from oidownload.engine.body import MemfdPool, pool_share
from oidownload.engine.fetch import default_agent, make_session
from oidownload.engine.intake import Intake
from oidownload.engine.limits import ByteBudget, HostLimiter
from oidownload.engine.metrics import Exporter, Gauges, Metrics
from oidownload.engine.progress import Progress
from oidownload.engine.recorder import Recorder
from oidownload.engine.stopping import SIGNAL_DEBOUNCE, Halt, Stopper
from oidownload.engine.workers import Workers
from oidownload.inputs.rows import Format
from oidownload.sinks import Sink
from oidownload.state.journal import DoneSet, Journal

_FLUSH_EVERY = 0.5  # seconds between journal commits; a kill loses at most this much
# Outcomes waiting for the journal. A journal that falls behind (a slow fsync, a busy
# network filesystem, a reader holding its lock) holds new rows back at this many,
# rather than let them pile up in memory: measured, a 5 s commit let 45,000 pile up.
_MAX_PENDING = 10_000


class Task:
    """One run of one task's share, from its first row to its last flush: `main` runs it
    in a loop of its own. Its parts: the reader (`intake`), a row's attempts
    (`attempts`, which own the pool's side), the recorder (journal, sink, progress),
    the budgets shared by every row in flight (`budget` for bytes, `limiter` for
    hosts), and the stop state (`halt`). What the run ended as is read from these
    once `main` returns."""

    def __init__(self, cfg: Config, shard: Shard, progress: Progress, journal: Journal,
                 workers: Workers, formats: list[Format], done: DoneSet, sink: Sink) -> None:
        self.cfg = cfg
        self.shard = shard
        self.progress = progress
        self.journal = journal
        self.sink = sink
        self.halt = Halt()
        self.recorder = Recorder(progress, journal, sink, self.fail, cfg.output.out)
        self.intake = Intake(cfg, shard, progress, self.recorder, formats, done, self.halt, self.fail)
        # Pooled memfds keep their pages: their share comes out of the byte budget.
        pooled = pool_share(cfg.run.max_bytes_in_flight) if workers.use_memfd else 0
        memfds = MemfdPool(pooled) if workers.use_memfd else None
        self.budget = ByteBudget(cfg.run.max_bytes_in_flight - pooled)
        self.limiter = HostLimiter(cfg.net.host_ceiling, auto=cfg.net.per_host is None)
        progress.hosts, progress.host_rows = self.limiter.describe, self.limiter.rows
        self.attempts = Attempts(cfg, progress, self.recorder, workers, memfds, self.budget, self.limiter,
                                 self.halt, self.fail)
        self.ticked = asyncio.Event()  # set: the ticker's last flush, then it ends
        self.stopper: Stopper | None = None
        self.exporter: Exporter | None = None
        self.metrics: Metrics | None = None

    def watch(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.metrics = self.recorder.metrics = self.attempts.metrics = exporter.metrics
        exporter.metrics.gauges = self.gauges

    def gauges(self) -> Gauges:
        skipped = self.intake.filter.done_skipped
        return Gauges(
            bytes_in_flight=self.budget.used, bytes_in_flight_limit=self.budget.capacity,
            pool_workers=self.cfg.run.processes or 1, pool_jobs=len(self.attempts.in_pool),
            fetch_queue=self.intake.queue.qsize(),
            journal_pending=len(self.recorder.pending), journal_lag=self.recorder.lag(),
            journal_commit_seconds=self.recorder.commit_seconds, outcomes_per_second=self.progress.rates()[0],
            rows_planned=self.intake.planned(self.intake.counted),
            rows_done=self.progress.tally.done + skipped, hosts=self.limiter.hosts(),
        )

    # -- stopping ---------------------------------------------------------------------
    def request_stop(self, code: int, why: str) -> None:
        now = time.monotonic()
        self.halt.woken.set()
        if self.halt.lingering:
            return  # the work is over: a signal only ends --metrics-linger
        if self.metrics is not None and self.metrics.state == "running":
            self.metrics.state = "stopping"
        if self.halt.stopping.is_set():
            # One signal often arrives twice at once: schedulers signal the whole process
            # group and a wrapper script may pass it on as well. Only a later one is a
            # user's "stop now".
            if code in (ExitCode.SIGINT, ExitCode.SIGTERM) and now - self.halt.at > SIGNAL_DEBOUNCE:
                self.progress.log("abort", "second signal: stopping now; the journal is flushed, unfinished images resume next run",
                                  level="warning")
                self.halt.abort.set()
            return
        self.halt.at = now
        self.halt.code = code
        self.progress.log("stop", f"{why}: finishing in-flight images (up to {self.cfg.run.grace:.0f}s, signal again to stop now)")
        self.halt.stopping.set()
        # Rows still queued are simply not started; the next run picks them up.
        while not self.intake.queue.empty():
            self.intake.queue.get_nowait()
        for _ in range(self.cfg.net.concurrency):
            self.intake.queue.put_nowait(None)

    def fail(self, exc: OidownloadError, disk_full: bool = False) -> None:
        if disk_full:
            self.journal.release_reserve()
        if self.halt.fatal is None:
            self.halt.fatal = exc
            self.request_stop(ExitCode.FATAL, "fatal error, stopping")

    # -- the loop's tasks -------------------------------------------------------------
    async def fetch_worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            while len(self.recorder.pending) >= _MAX_PENDING and not self.halt.stopping.is_set():
                await asyncio.sleep(_FLUSH_EVERY / 10)
            row = await self.intake.queue.get()
            if row is None or self.halt.stopping.is_set():
                return
            if isinstance(row, BadRow):
                self.attempts.record(Outcome(row.raw_id, Status.BAD_ROW, row.detail, file=row.file, line=row.line))
                continue
            await self.attempts.handle(session, row)

    def write_progress(self, running: bool, hosts: str | None) -> None:
        """On the journal's thread; `hosts` was read on the loop's (the limiter's dict
        changes under it)."""
        rate, _ = self.progress.rates()
        # A stopped run keeps no estimate: `status` would show it as the share's size.
        estimate = self.intake.counted if running else None
        self.journal.set_progress(
            running=running, planned=self.intake.planned(estimate), skipped=self.intake.filter.done_skipped,
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
            self.progress.tally.skipped = self.intake.filter.done_skipped
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

    async def end_metrics(self) -> None:
        """The last counts, in the file and (for --metrics-linger, or until a signal)
        on /metrics, so that the last scrape sees the run's end."""
        assert self.exporter is not None and self.metrics is not None
        self.metrics.state = "done"
        self.exporter.tick(force=True)
        linger = self.cfg.run.metrics_linger
        if linger > 0 and self.exporter.sock is not None and not self.halt.abandoned:
            self.halt.woken.clear()
            self.halt.lingering = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.halt.woken.wait(), linger)
        await self.exporter.stop()

    async def drain(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers)
        while self.attempts.in_pool or self.attempts.extra:
            waiting: list[asyncio.Future[Any]] = [*self.attempts.in_pool, *self.attempts.extra]
            await asyncio.wait(waiting)

    async def close_sink(self) -> None:
        """The sink's close and the last flush, within the run's time: once a stopping
        run's grace is over, or at a second signal, what the sink still waits for (an
        upload to a store that never answers) is abandoned, and the journal keeps
        what was confirmed."""
        closing = asyncio.create_task(self.recorder.close(complete=not self.halt.abandoned and self.halt.fatal is None))
        while not closing.done():
            done, _ = await asyncio.wait([closing], timeout=0.1)
            if done:
                break
            if self.halt.abort.is_set() or (self.halt.stopping.is_set()
                                            and time.monotonic() >= self.halt.at + self.cfg.run.grace):
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
        if not self.intake.count_total(done_at_start):
            threading.Thread(target=self.intake.estimate_total, args=(done_at_start, loop), daemon=True, name="count").start()
        agent = self.cfg.net.user_agent or default_agent(self.shard.tag)
        session = self.attempts.session = make_session(dataclasses.replace(self.cfg.net, user_agent=agent))
        self.sink.start()
        if self.exporter is not None:
            await self.exporter.start()
        try:
            workers = [asyncio.create_task(self.fetch_worker(session)) for _ in range(self.cfg.net.concurrency)]
            reader = asyncio.create_task(self.intake.read())
            ticker = asyncio.create_task(self.ticker())
            drain = asyncio.create_task(self.drain(workers))
            stop = asyncio.create_task(self.halt.stopping.wait())
            await asyncio.wait([drain, stop], return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                abort = asyncio.create_task(self.halt.abort.wait())
                await asyncio.wait([drain, abort], timeout=self.cfg.run.grace, return_when=asyncio.FIRST_COMPLETED)
                abort.cancel()
                if not drain.done():
                    self.halt.abandoned = True
                    for task in (*workers, drain, *self.attempts.extra):
                        task.cancel()
                    for fut in list(self.attempts.in_pool):
                        fut.cancel()
            stop.cancel()
            reader.cancel()
            self.ticked.set()
            await asyncio.gather(drain, reader, ticker, stop, return_exceptions=True)
            failed = drain.exception() if drain.done() and not drain.cancelled() else None
            if failed is not None:
                raise failed
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
            if self.attempts.memfds is not None and not self.halt.abandoned:
                self.attempts.memfds.close()
            self.intake.thread.shutdown(wait=False, cancel_futures=True)
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
