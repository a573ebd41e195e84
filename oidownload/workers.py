"""Where the per-image work runs: a process pool (forked when that is safe, spawned
otherwise) fed bodies through memfds, or threads of this process for --format keep.

`start_workers` starts them before any other thread exists; `Workers.submit` hands
one (job, body) over and returns a future of its `Outcome`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from .body import BodyRef, BodyWriter, MemfdPool, memfd_supported, probe
from .config import ImageConfig, OutputFormat
from .process import Job, WorkerSettings, init_pillow, process_ref
from .records import Outcome
from .sinks import Target

_settings: WorkerSettings | None = None


def init_worker(settings: WorkerSettings, parent_pid: int) -> None:
    """Pool initializer: keeps settings, leaves signals to the parent, and exits if the
    parent dies."""
    global _settings
    _settings = settings
    follow_parent(parent_pid)
    init_pillow()


def follow_parent(parent_pid: int) -> None:
    """In a pool worker: SIGINT/SIGTERM are left to the parent (which drains or stops
    the pool), and the worker exits when the parent dies: a SIGKILLed parent must not
    leave workers behind."""
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


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    # Abandoned work may be mid-write; killed workers leave only temporary files,
    # which the next run removes. _processes is the only handle on the workers.
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:
            pass
    pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Workers:
    """Pixel work (decode, resize, encode) runs in a process pool. Without it (--format
    keep) the work is an MD5 and a file write, both of which release the GIL, so
    threads of this process do it: a hop to another process would cost more than the
    work itself."""

    executor: Executor
    settings: WorkerSettings
    in_process: bool
    use_memfd: bool

    def submit(self, loop: asyncio.AbstractEventLoop, job: Job, body: BodyWriter) -> asyncio.Future[Outcome]:
        if self.in_process:
            return loop.run_in_executor(self.executor, process_ref, job, body.handoff(), self.settings)
        return loop.run_in_executor(self.executor, process_in_worker, job, body.handoff())

    def shutdown(self, *, kill: bool) -> None:
        if kill and isinstance(self.executor, ProcessPoolExecutor):
            _kill_pool(self.executor)
        else:
            self.executor.shutdown(wait=True)


def pool_context() -> multiprocessing.context.BaseContext:
    """fork while this process has no other thread yet (fast, and the workers share the
    imported modules), spawn otherwise: forking a process that runs threads can
    deadlock the child."""
    method = "fork" if sys.platform.startswith("linux") and threading.active_count() == 1 else "spawn"
    return multiprocessing.get_context(method)


def start_workers(image: ImageConfig, target: Target, processes: int) -> Workers:
    """The workers, started now, in a pool from `pool_context`."""
    settings = WorkerSettings.build(image, target)
    if image.format is OutputFormat.KEEP:
        init_pillow()
        return Workers(ThreadPoolExecutor(processes, thread_name_prefix="work"), settings, True, False)
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=pool_context(),
        initializer=init_worker,
        initargs=(settings, os.getpid()),
    )
    # With fork, the first submit starts every worker (Python does not fork on demand
    # once threads may exist); with spawn this only warms one up.
    pool.submit(os.getpid).result()
    use_memfd = False
    if memfd_supported():
        probe_pool = MemfdPool()
        probe_body = BodyWriter(probe_pool)
        try:
            probe_body.write(b"probe")
            use_memfd = pool.submit(probe, probe_body.handoff()).result(timeout=30) == 5
        except Exception:
            use_memfd = False  # a hardened /proc: bodies go through the pipe instead
        finally:
            probe_body.close()
            probe_pool.close()
    return Workers(pool, settings, False, use_memfd)
