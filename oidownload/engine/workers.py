"""Where the per-image work runs: a process pool (forked when that is safe, spawned
otherwise) fed bodies through memfds, or threads of this process for --format keep.

`start_workers` starts them before any other thread exists; `Workers.submit` hands
one (job, body) over and returns a future of its `Outcome`. When a pool worker dies
(the out-of-memory killer, a signal), `Workers.restart` says which images the dead
worker held, kills what is left of the pool and starts a new one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from oidownload.core.config import ImageConfig, OutputFormat
from oidownload.core.records import Outcome
from oidownload.engine.body import BodyRef, BodyWriter, MemfdPool, memfd_supported, probe
from oidownload.engine.pool import Exited, PipePool
from oidownload.engine.process import Job, WorkerSettings, init_pillow, process_ref
from oidownload.sinks import Target

_settings: WorkerSettings | None = None
_START_TRIES = 3


def init_worker(settings: WorkerSettings, parent_pid: int) -> None:
    """Pool initializer: keeps settings, leaves signals to the parent, and exits if the
    parent dies (a SIGKILLed parent must not leave workers behind)."""
    global _settings
    _settings = settings
    follow_parent(parent_pid)
    init_pillow()


def follow_parent(parent_pid: int) -> None:
    """In a pool worker (this pool's, or verify's): SIGINT/SIGTERM are left to the
    parent, which drains or stops the pool, and the worker exits when the parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def process_in_worker(job: Job, ref: BodyRef) -> Outcome:
    assert _settings is not None, "init_worker was not run"
    return process_ref(job, ref, _settings)


@dataclass
class Workers:
    """Pixel work (decode, resize, encode) runs in a process pool. Without it (--format
    keep) the work is an MD5 and a file write, both of which release the GIL, so
    threads of this process do it: a hop to another process would cost more than the
    work itself."""

    settings: WorkerSettings
    pool: PipePool | None = None
    threads: ThreadPoolExecutor | None = None
    use_memfd: bool = False
    processes: int = 1
    generation: int = 0  # how many times the pool was restarted

    @property
    def in_process(self) -> bool:
        return self.pool is None

    def submit(self, loop: asyncio.AbstractEventLoop, job: Job, body: BodyWriter) -> asyncio.Future[Outcome]:
        """On the loop's thread. Raises BrokenProcessPool once a worker has died."""
        if self.pool is None:
            return loop.run_in_executor(self.threads, process_ref, job, body.handoff(), self.settings)
        return self.pool.submit(loop, job.image_id, process_in_worker, job, body.handoff())

    def restart(self) -> list[Exited]:
        """Which workers died and what they held; then what is left of the old pool is
        killed and a new one started. Blocking: run it off the event loop."""
        assert self.pool is not None
        deaths = self.pool.exited()
        self.pool.close(kill=True)
        for attempt in range(_START_TRIES):
            try:
                # Threads exist now: forking could deadlock the child, so the pool is spawned.
                self.pool = _pool(self.settings, self.processes, "spawn")
                break
            except BrokenProcessPool:  # a worker died while the pool started: another try
                if attempt == _START_TRIES - 1:
                    raise
        self.generation += 1
        return deaths

    def shutdown(self, *, kill: bool) -> None:
        if self.pool is not None:
            self.pool.close(kill=kill)
        elif self.threads is not None:
            self.threads.shutdown(wait=True)


def _pool(settings: WorkerSettings, processes: int, method: str) -> PipePool:
    ctx = multiprocessing.get_context("fork") if method == "fork" else multiprocessing.get_context("spawn")
    return PipePool(ctx, processes, init_worker, (settings, os.getpid()))


def pool_method() -> str:
    """fork while this process has no other thread yet (fast, and the workers share the
    imported modules), spawn otherwise: forking a process that runs threads can
    deadlock the child."""
    return "fork" if sys.platform.startswith("linux") and threading.active_count() == 1 else "spawn"


def start_workers(image: ImageConfig, target: Target, processes: int) -> Workers:
    """The workers, started now. A pool is forked when this process has no other thread
    yet (fast, and the workers share the imported modules), spawned otherwise, because
    forking a process that runs threads can deadlock the child."""
    settings = WorkerSettings.build(image, target)
    if image.format is OutputFormat.KEEP:
        init_pillow()
        return Workers(settings, threads=ThreadPoolExecutor(processes, thread_name_prefix="work"))
    pool = _pool(settings, processes, pool_method())
    use_memfd = False
    if memfd_supported():
        probe_pool = MemfdPool()
        probe_body = BodyWriter(probe_pool)
        try:
            probe_body.write(b"probe")
            use_memfd = pool.call(0, probe, probe_body.handoff()) == 5
        except Exception:
            use_memfd = False  # a hardened /proc: bodies go through the pipe instead
        finally:
            probe_body.close()
            probe_pool.close()
    return Workers(settings, pool, use_memfd=use_memfd, processes=processes)
