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
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any

from .body import BodyRef, BodyWriter, MemfdPool, memfd_supported, probe
from .config import ImageConfig, OutputFormat
from .process import Job, WorkerSettings, init_pillow, process_ref
from .records import Outcome
from .sinks import Target

_settings: WorkerSettings | None = None
# What each worker is doing, shared with the parent: per worker slot (pid, busy, id).
_board: SynchronizedArray[Any] | None = None
_slot = -1
_FIELDS = 3
_START_TRIES = 3


def init_worker(settings: WorkerSettings, parent_pid: int, board: SynchronizedArray[Any] | None = None,
                slots: Synchronized[Any] | None = None) -> None:
    """Pool initializer: keeps settings, claims a slot on the board, leaves signals to
    the parent, and exits if the parent dies (a SIGKILLed parent must not leave workers
    behind)."""
    global _settings, _board, _slot
    _settings = settings
    if board is not None and slots is not None:
        with slots.get_lock():
            _slot = slots.value
            slots.value += 1
        _board = board
        board[_FIELDS * _slot] = os.getpid()
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
    if _board is None:
        return process_ref(job, ref, _settings)
    at = _FIELDS * _slot
    _board[at + 2] = int(job.image_id, 16)
    _board[at + 1] = 1
    try:
        return process_ref(job, ref, _settings)
    finally:
        _board[at + 1] = 0


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    # Abandoned work may be mid-write; killed workers leave only temporary files,
    # which the next run removes. _processes is the only handle on the workers. They
    # ignore SIGTERM, and one killed while it held the call queue's lock would leave
    # the others blocked on it: only SIGKILL ends them all.
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:
            pass
    pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Death:
    """A pool worker that died: how, and the images it was working on."""

    pid: int
    exitcode: int
    image_ids: tuple[str, ...]

    def describe(self) -> str:
        how = (f"killed by {signal.Signals(-self.exitcode).name}" if self.exitcode < 0
               and -self.exitcode in signal.Signals._value2member_map_ else f"exit code {self.exitcode}")
        return f"pool worker {self.pid} died ({how})"


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
    processes: int = 1
    board: SynchronizedArray[Any] | None = None
    generation: int = 0  # how many times the pool was restarted
    _procs: list[Any] = field(default_factory=list)

    def submit(self, loop: asyncio.AbstractEventLoop, job: Job, body: BodyWriter) -> asyncio.Future[Outcome]:
        if self.in_process:
            return loop.run_in_executor(self.executor, process_ref, job, body.handoff(), self.settings)
        return loop.run_in_executor(self.executor, process_in_worker, job, body.handoff())

    def deaths(self) -> list[Death]:
        """The workers of the current pool that have died, with what they held."""
        live = getattr(self.executor, "_processes", None) or {}
        procs = list({p.pid: p for p in [*self._procs, *live.values()]}.values())
        # The pool sees a death when the worker's pipe closes, a moment before the
        # kernel has its exit status: wait for it, briefly.
        deadline = time.monotonic() + 2.0
        while not any(p.exitcode is not None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.01)
        found = []
        for proc in procs:
            code = proc.exitcode
            if code is None:
                continue
            held: list[str] = []
            if self.board is not None:
                for at in range(0, len(self.board), _FIELDS):
                    if self.board[at] == proc.pid and self.board[at + 1]:
                        held.append(format(self.board[at + 2], "016x"))
            found.append(Death(proc.pid, code, tuple(held)))
        return found

    def restart(self) -> list[Death]:
        """Which workers died and what they held; then the old pool is killed (its
        other workers may be blocked for good) and a new one started. Blocking: run it
        off the event loop."""
        deaths = self.deaths()
        assert isinstance(self.executor, ProcessPoolExecutor)
        _kill_pool(self.executor)
        for attempt in range(_START_TRIES):
            try:
                # Threads exist now: forking could deadlock the child, so the pool is spawned.
                self.executor, self.board, self._procs = _pool(self.settings, self.processes, "spawn")
                break
            except BrokenProcessPool:  # a worker died while the pool started: another try
                if attempt == _START_TRIES - 1:
                    raise
        self.generation += 1
        return deaths

    def shutdown(self, *, kill: bool) -> None:
        if isinstance(self.executor, ProcessPoolExecutor) and (kill or getattr(self.executor, "_broken", False)):
            _kill_pool(self.executor)  # a broken pool's workers may never exit by themselves
        else:
            self.executor.shutdown(wait=True)


def _pool(settings: WorkerSettings, processes: int, method: str) -> tuple[ProcessPoolExecutor, SynchronizedArray[Any], list[Any]]:
    ctx = multiprocessing.get_context(method)
    board = ctx.Array("Q", _FIELDS * processes, lock=False)
    slots = ctx.Value("i", 0)
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=ctx,
        initializer=init_worker,
        initargs=(settings, os.getpid(), board, slots),
    )
    # With fork, the first submit starts every worker (Python does not fork on demand
    # once threads may exist); spawn starts them on demand, so each is asked for once.
    try:
        for fut in [pool.submit(os.getpid) for _ in range(processes)]:
            fut.result()
    except BaseException:
        _kill_pool(pool)
        raise
    procs = list((getattr(pool, "_processes", None) or {}).values())
    return pool, board, procs


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
        return Workers(ThreadPoolExecutor(processes, thread_name_prefix="work"), settings, True, False)
    pool, board, procs = _pool(settings, processes, pool_method())
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
    return Workers(pool, settings, False, use_memfd, processes, board, 0, procs)
