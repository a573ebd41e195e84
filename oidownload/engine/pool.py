"""A process pool driven by the event loop's own thread, over one pair of pipes per worker.

concurrent.futures' ProcessPoolExecutor hands every job through a manager thread and a
queue feeder thread, and every result back through the manager and a thread-safe wake-up
of the loop: measured, those two threads cost 0.4 ms of the main process's CPU per image
(a third of it) besides the GIL hand-offs. Here the loop writes a job frame straight into
the worker's pipe and reads result frames when the pipe is readable: no thread, no lock.

Each worker runs its jobs in the order sent, answers in that order, and marks the number
of the job at work in a shared array, so the parent knows which job a dead worker held
(none if it died between jobs). A worker that dies (its sentinel becomes readable) breaks the pool: every pending future fails
with BrokenProcessPool, as concurrent.futures does, and `exited` names what each dead
worker was working on. The caller restarts the pool with a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import os
import pickle
import select
import signal
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from typing import Any

_HEADER = struct.Struct("<I")
_STOP = b""  # an empty frame: the worker returns
_READ_SIZE = 1 << 16
# Jobs sent ahead to a worker: one it works on and one waiting in its pipe, so it never
# idles while the loop is busy; more would queue work behind a slow image in one worker
# while another is free.
AHEAD = 2


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


# -- in the worker --------------------------------------------------------------------------

def _serve(jobs: Connection, results: Connection, board: Any, slot: int, inherited: Sequence[int],
           initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    """Runs jobs in the order they come. board[slot] is the number of the job at work
    (1 for the first), 0 between jobs: a worker killed while idle must not have the job
    waiting in its pipe blamed for its death."""
    for fd in inherited:  # a forked worker's copies of the other workers' parent ends
        try:
            os.close(fd)
        except OSError:
            pass
    initializer(*initargs)
    out = results.fileno()
    _write_all(out, _frame(pickle.dumps((True, None))))  # ready
    number = 0
    with open(jobs.fileno(), "rb", buffering=_READ_SIZE, closefd=False) as src:
        while True:
            head = src.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return  # the parent is gone
            payload = src.read(_HEADER.unpack(head)[0])
            if payload == _STOP:
                return
            number += 1
            board[slot] = number
            try:
                fn, args = pickle.loads(payload)
                reply: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # returned to the caller's future, as an executor does
                reply = (False, exc)
            board[slot] = 0
            try:
                data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                data = pickle.dumps((False, RuntimeError(f"the worker's answer cannot be pickled: {exc!r}")))
            _write_all(out, _frame(data))


def _answer(frame: bytes) -> tuple[bool, Any]:
    """(ok, value) from an answer frame. An exception that pickles but cannot be rebuilt
    (its __init__ wants other arguments) must still end its job, as a failure."""
    try:
        ok, value = pickle.loads(frame)
    except Exception as exc:
        return False, RuntimeError(f"the worker's answer cannot be read: {type(exc).__name__}: {exc}")
    return bool(ok), value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- in the parent --------------------------------------------------------------------------

def _reap(procs: list[Any]) -> None:
    for proc in list(procs):
        try:
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)
        except (ValueError, OSError):
            pass


@dataclass(frozen=True, slots=True)
class Exited:
    """A worker that died: how, and the job it was working on (its tag), if any."""

    pid: int
    exitcode: int
    holding: tuple[str, ...]

    def describe(self) -> str:
        how = (f"killed by {signal.Signals(-self.exitcode).name}" if self.exitcode < 0
               and -self.exitcode in signal.Signals._value2member_map_ else f"exit code {self.exitcode}")
        return f"pool worker {self.pid} died ({how})"


@dataclass(eq=False)
class _Worker:
    proc: Any  # multiprocessing.Process of the pool's context
    jobs: int  # the parent's write end
    results: int  # the parent's read end
    # What the worker was sent and has not answered, oldest first: (future, tag, job number).
    sent: collections.deque[tuple[asyncio.Future[Any], str, int]] = field(default_factory=collections.deque)
    numbered: int = 0  # jobs sent so far; the worker numbers them the same way
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)


class PipePool:
    """`submit` must be called on the loop's thread; `start`, `call` (before any submit),
    `exited` and `close` may block and run anywhere."""

    def __init__(self, ctx: ForkContext | SpawnContext, processes: int, initializer: Callable[..., None],
                 initargs: tuple[Any, ...], start_timeout: float = 120.0) -> None:
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: collections.deque[tuple[asyncio.Future[Any], str, bytes]] = collections.deque()
        self._broken = False
        self._closed = False
        self._attached = False
        fork = ctx.get_start_method() == "fork"
        self._board = ctx.RawArray("q", processes)  # the job each worker is at; see _serve
        # Workers ignore SIGTERM, which is all multiprocessing's exit hook sends before it
        # joins them: a pool never closed (an error on the way out, a pool dropped) is
        # killed here instead. atexit, not only weakref.finalize: this module imported
        # multiprocessing first, so this hook runs before multiprocessing's.
        procs: list[Any] = []
        self._reaper = weakref.finalize(self, _reap, procs)
        self._reaper.atexit = False
        self._at_exit = functools.partial(_reap, procs)
        atexit.register(self._at_exit)
        try:
            for slot in range(processes):
                job_r, job_w = os.pipe()
                res_r, res_w = os.pipe()
                # A forked child holds copies of every parent end made so far, its own too.
                inherited = [fd for w in self._workers for fd in (w.jobs, w.results)] + [job_w, res_r] if fork else []
                # Connections, because a spawned child gets descriptors only in that form.
                child_jobs, child_results = Connection(job_r, writable=False), Connection(res_w, readable=False)
                proc = ctx.Process(target=_serve, args=(child_jobs, child_results, self._board, slot, inherited,
                                                          initializer, initargs),
                                   daemon=True)
                proc.start()
                procs.append(proc)
                child_jobs.close()
                child_results.close()
                self._workers.append(_Worker(proc, job_w, res_r))
            for w in self._workers:
                self._reply(w, start_timeout)  # ready: the initializer ran
        except BaseException:
            self.close(kill=True)
            raise

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def call(self, index: int, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Runs fn in worker `index` and waits for its answer: for checks before the run."""
        assert self._loop is None, "call() is for before the loop drives the pool"
        if self._broken or self._closed:
            raise BrokenProcessPool("the pool is broken")
        w = self._workers[index]
        w.numbered += 1
        _write_all(w.jobs, _frame(pickle.dumps((fn, args))))
        ok, value = self._reply(w, timeout)
        if not ok:
            raise value
        return value

    def _reply(self, w: _Worker, timeout: float) -> tuple[bool, Any]:
        """The worker's next answer. A late answer would be taken for the next job's,
        so one that does not come in time breaks the pool."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._take_frame(w)
            if frame is not None:
                return _answer(frame)
            left = deadline - time.monotonic()
            if left <= 0:
                self._broken = True
                raise BrokenProcessPool(f"pool worker {w.proc.pid} did not answer within {timeout:.0f}s")
            poll = select.poll()  # not select(): descriptors past 1024 are common at high concurrency
            poll.register(w.results, select.POLLIN)
            poll.register(w.proc.sentinel, select.POLLIN)
            ready = {fd for fd, _ in poll.poll(left * 1000)}
            if w.results in ready:
                data = os.read(w.results, _READ_SIZE)
                if data:
                    w.inbox += data
                    continue
            if ready:
                w.proc.join(1.0)
                self._broken = True
                raise BrokenProcessPool(f"pool worker {w.proc.pid} died while starting (exit code {w.proc.exitcode})")

    @staticmethod
    def _take_frame(w: _Worker) -> bytes | None:
        box = w.inbox
        if len(box) < _HEADER.size:
            return None
        end = _HEADER.size + _HEADER.unpack_from(box)[0]
        if len(box) < end:
            return None
        frame = bytes(box[_HEADER.size:end])
        del box[:end]
        return frame

    # -- driven by the loop --

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._attached = True
        for w in self._workers:
            os.set_blocking(w.jobs, False)
            os.set_blocking(w.results, False)
            loop.add_reader(w.results, self._readable, w)
            loop.add_reader(w.proc.sentinel, self._died, w)

    def submit(self, loop: asyncio.AbstractEventLoop, tag: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """fn(*args) in a worker; `tag` names the job in `exited` should its worker die."""
        if self._broken or self._closed:
            raise BrokenProcessPool("a pool worker died; the pool must be restarted")
        if self._loop is None:
            self._attach(loop)
        fut: asyncio.Future[Any] = loop.create_future()
        payload = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
        w = min(self._workers, key=lambda x: len(x.sent))
        if len(w.sent) < AHEAD:
            self._send(w, fut, tag, payload)
        else:
            self._pending.append((fut, tag, payload))
        return fut

    def _send(self, w: _Worker, fut: asyncio.Future[Any], tag: str, payload: bytes) -> None:
        w.numbered += 1
        w.sent.append((fut, tag, w.numbered))
        data = _frame(payload)
        if not w.outbox:
            try:
                n = os.write(w.jobs, data)
            except BlockingIOError:
                n = 0
            except OSError:
                return  # the worker is gone: its sentinel fails the future in a moment
            data = data[n:]
            if not data:
                return
            assert self._loop is not None
            self._loop.add_writer(w.jobs, self._writable, w)
        w.outbox += data

    def _writable(self, w: _Worker) -> None:
        try:
            n = os.write(w.jobs, w.outbox)
        except BlockingIOError:
            return
        except OSError:
            n = len(w.outbox)  # the worker is gone
        del w.outbox[:n]
        if not w.outbox and self._loop is not None:
            self._loop.remove_writer(w.jobs)

    def _readable(self, w: _Worker) -> None:
        while True:
            try:
                data = os.read(w.results, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                if self._loop is not None:
                    self._loop.remove_reader(w.results)  # end of file: the sentinel tells the rest
                break
            w.inbox += data
            if len(data) < _READ_SIZE:
                break
        while w.sent and (frame := self._take_frame(w)) is not None:
            fut, _, _ = w.sent.popleft()
            ok, value = _answer(frame)
            if not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        while self._pending and len(w.sent) < AHEAD and not self._broken:
            fut, tag, payload = self._pending.popleft()
            if not fut.done():  # cancelled while it waited
                self._send(w, fut, tag, payload)

    def _died(self, w: _Worker) -> None:
        """A worker's sentinel fired: the pool is broken. What every worker was on is
        kept for `exited`; every future still open fails."""
        if self._closed or self._broken:
            return
        self._broken = True  # first: nothing more is sent to it (or to the others)
        self._readable(w)  # answers it sent before dying still count
        self._detach()
        error = BrokenProcessPool(f"pool worker {w.proc.pid} died")
        for x in self._workers:
            for fut, _, _ in x.sent:
                if not fut.done():
                    fut.set_exception(error)
        for fut, _, _ in self._pending:
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    def _detach(self) -> None:
        """On the loop's thread, or once the loop is closed: a broken pool detached
        itself already, so the restart's thread never touches the loop."""
        if not self._attached or self._loop is None or self._loop.is_closed():
            return
        self._attached = False
        for w in self._workers:
            for fd in (w.results, w.proc.sentinel):
                self._loop.remove_reader(fd)
            self._loop.remove_writer(w.jobs)

    def exited(self, wait: float = 2.0) -> list[Exited]:
        """The workers that have died, and the job each was on. The sentinel fires a
        moment before the kernel has the exit status: wait for it, briefly."""
        deadline = time.monotonic() + wait
        while not any(w.proc.exitcode is not None for w in self._workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        found = []
        for slot, w in enumerate(self._workers):
            if w.proc.exitcode is None:
                continue
            at = self._board[slot]  # 0: it died between jobs, holding none
            found.append(Exited(w.proc.pid, w.proc.exitcode, tuple(tag for _, tag, n in w.sent if n == at)))
        return found

    def close(self, *, kill: bool, timeout: float = 30.0) -> None:
        """Stops the workers: at once (kill) or once each has answered what it was sent."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        deadline = time.monotonic() + timeout
        if not kill:
            for w in self._workers:
                # The rest of a frame half written, then the stop; a worker that does not
                # read them by the deadline is killed below.
                self._write_by(w.jobs, bytes(w.outbox) + _frame(_STOP), deadline)
        for w in self._workers:
            if not kill:
                w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.exitcode is None:
                # They ignore SIGTERM (signals are the parent's): only SIGKILL ends them.
                w.proc.kill()
            w.proc.join()
            for fd in (w.jobs, w.results):
                try:
                    os.close(fd)
                except OSError:
                    pass
            w.proc.close()
        self._reaper.detach()
        atexit.unregister(self._at_exit)

    @staticmethod
    def _write_by(fd: int, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        try:
            os.set_blocking(fd, False)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    poll = select.poll()
                    poll.register(fd, select.POLLOUT)
                    poll.poll(left * 1000)
        except OSError:
            pass  # the worker is gone
