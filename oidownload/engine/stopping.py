"""How a run stops: its stop state (`Halt`), shared by the task and a row's attempts,
and `Stopper`, the Python API's way to stop a run from another thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from oidownload.core.errors import OidownloadError
from oidownload.core.exits import ExitCode

SIGNAL_DEBOUNCE = 1.0  # seconds within which a repeated signal is the same one

# Stops the run with a fatal error (the first one wins); the run raises it at its end.
Fail = Callable[[OidownloadError], None]


@dataclass(slots=True)
class Halt:
    """Whether and why the run is stopping. `stopping` is set by the first stop request
    (a signal, --max-runtime, a fatal error); `abort` by a second signal, which gives up
    on the grace; `woken` by any request, which ends --metrics-linger."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    code: int | None = None  # the exit code the stop asks for
    at: float = 0.0  # when the stop was asked for (monotonic)
    fatal: OidownloadError | None = None  # the first fatal error, raised once the run is over
    abandoned: bool = False  # the grace ran out (or a second signal) with work still in flight
    lingering: bool = False  # the work is over and /metrics lingers: a signal only ends that


class Stoppable(Protocol):
    def request_stop(self, code: int, why: str) -> None: ...


class Stopper:
    """Stops a run from another thread, as a signal would: the Python API's answer to
    a KeyboardInterrupt or a cancelled await while the run has its own loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[asyncio.AbstractEventLoop, Stoppable] | None = None
        self._pending: list[tuple[int, str]] = []

    def attach(self, loop: asyncio.AbstractEventLoop, run: Stoppable) -> None:
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
