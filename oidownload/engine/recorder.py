"""The one place an Outcome ends: progress, the sink's commit, and the journal batch.

An outcome whose file the worker already published is committed at once; one whose
files are staged is handed to the sink and journaled only when a later `sync` says
its bytes are safe. Every flush writes the committed outcomes and the sink's state
in one journal transaction, on the journal's own thread.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from oidownload.core.errors import JournalError, OidownloadError, OutputError
from oidownload.core.records import Conflict, Outcome, Row, Status
from oidownload.engine.metrics import Metrics
from oidownload.engine.progress import Progress
from oidownload.sinks import Release, Sink
from oidownload.state.journal import Journal

# A full disk, a read-only mount or a folder we may not write fails every later write
# too: stop the run rather than record a failure per image.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

Fail = Callable[[OidownloadError, bool], None]


class Recorder:
    def __init__(self, progress: Progress, journal: Journal, sink: Sink, fail: Fail, where: str) -> None:
        self.progress = progress
        self.journal = journal
        self.sink = sink
        self.fail = fail
        self.where = where
        self.pending: list[Outcome] = []
        self.pending_state: dict[str, str | None] = {}
        self.pending_conflicts: list[Conflict] = []
        self.conflicts = 0  # recorded by this run
        # Staged outcomes counted ok in the progress but not yet committed by the sink,
        # by identity: an upload that fails later, or never ends, is counted again.
        self.unconfirmed: dict[int, Outcome] = {}
        self.failed = False
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._lock = asyncio.Lock()
        self.metrics: Metrics | None = None
        self.pending_since = 0.0  # when the oldest of `pending` arrived (monotonic)
        self.commit_seconds = 0.0  # how long the last journal commit took

    def record(self, outcome: Outcome, row: Row | None = None, release: Release = lambda: None) -> None:
        """`release` gives back the outcome's share of the byte budget: at once, or,
        for a staged outcome, when the sink is done with its bytes."""
        if outcome.status is Status.WRITE_ERROR and outcome.errno in FATAL_ERRNOS:
            hint = ("free some space (or fix the mount)" if outcome.errno not in (errno.EACCES, errno.EPERM)
                    else "fix the permissions")
            self.fail(OutputError(
                f"cannot write under {self.where}: {outcome.detail}. The journal is intact: "
                f"{hint} and run the same command again to resume"
            ), outcome.errno in (errno.ENOSPC, errno.EDQUOT))
            release()
            return  # not journaled: it is the disk's fault, not the image's
        self.progress.add(outcome)
        if outcome.status is Status.OK and outcome.staged:
            self.unconfirmed[id(outcome)] = outcome
            self.sink.publish(outcome, row, release)
        else:
            release()
            if not self.pending:
                self.pending_since = time.monotonic()
            self.pending.append(outcome)

    def conflict(self, conflict: Conflict) -> None:
        """A row that lost to an earlier row of its ImageID: journaled, not counted."""
        self.pending_conflicts.append(conflict)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs fn on the journal's thread (SQLite must not block the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    async def flush(self, synced_by: Callable[[], Any] | None = None) -> None:
        async with self._lock:
            synced = await (synced_by() if synced_by is not None else self.sink.sync())
            if synced.error is not None:
                self.fail(synced.error, False)
            self._confirm(synced.committed)
            batch, self.pending = self.pending + synced.committed, []
            state = {**self.pending_state, **synced.state}
            conflicts, self.pending_conflicts = self.pending_conflicts, []
            self.pending_state = {}
            if not batch and not state and not conflicts:
                return
            began = time.monotonic()
            try:
                # Shielded: once a batch left `pending`, a cancelled caller must not drop it
                # (a thread that has not started the write yet would otherwise never do it).
                self.conflicts += await asyncio.shield(self.run(self.journal.record, batch, state, conflicts))
                self.commit_seconds = time.monotonic() - began
                if self.metrics is not None:
                    self.metrics.journaled(batch)
            except JournalError as exc:
                if self.failed:
                    return  # the last try, with the reserve already freed
                self.failed = True
                # Keep the batch: the final flush retries it once the reserve is freed.
                self.pending[:0] = batch
                self.pending_conflicts[:0] = conflicts
                self.pending_state = {**state, **self.pending_state}
                advice = ". Free some space and run the same command again to resume" if exc.full else ""
                self.fail(OutputError(f"{exc}{advice}"), exc.full)

    def _confirm(self, committed: list[Outcome]) -> None:
        """The summary counts what the journal holds: a staged image that the sink
        committed as a failure moves from ok to that status."""
        for outcome in committed:
            if self.unconfirmed.pop(id(outcome), None) is not None and outcome.status is not Status.OK:
                self.progress.amend(outcome, Status.OK)

    def lag(self) -> float:
        """Seconds the oldest outcome not yet handed to the journal has waited."""
        return time.monotonic() - self.pending_since if self.pending else 0.0

    async def close(self, *, complete: bool) -> None:
        """The sink's end of run, with the last flush. Staged images the sink never
        confirmed are not journaled: they leave the summary too, and the next run
        fetches them again."""
        await self.flush(lambda: self.sink.close(complete=complete))
        left, self.unconfirmed = list(self.unconfirmed.values()), {}
        for outcome in left:
            self.progress.retract(outcome)
        if left:
            self.progress.log("unconfirmed", f"{len(left)} image(s) were not confirmed written to {self.where} when "
                              "the run ended; they are not journaled, and the next run fetches them again",
                              level="warning", unconfirmed=len(left))

    def shutdown(self) -> None:
        self.thread.shutdown(wait=True)
