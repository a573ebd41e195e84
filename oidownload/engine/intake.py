"""The reader: the input CSVs → the bounded queue the fetch workers take rows from.

It runs the row parsing in its own thread, applies the selection (shard, done,
--ids, --subset, --limit), hands rows that lost to an earlier row of their ImageID
to the recorder, and knows how many rows this task's share holds: counted, estimated,
or read to the end.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from oidownload.core.config import Config
from oidownload.core.errors import InputError
from oidownload.core.records import BadRow, Conflict, Row
from oidownload.core.shard import Shard
from oidownload.engine.progress import Progress
from oidownload.engine.recorder import Recorder
from oidownload.engine.stopping import Fail, Halt
from oidownload.inputs.csvrecords import count_rows, estimate_rows
from oidownload.inputs.listing import SelectionFilter
from oidownload.inputs.rows import Format, iter_rows
from oidownload.state.journal import DoneSet

_READ_BATCH = 512


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


class Intake:
    """The reader's side of a run. `queue` ends with one None per fetch worker once the
    inputs are read (or at a stop); `enqueued` counts the rows put on it, `counted`
    is the share's size as far as it is known before the end."""

    def __init__(self, cfg: Config, shard: Shard, progress: Progress, recorder: Recorder, formats: list[Format],
                 done: DoneSet, halt: Halt, fail: Fail) -> None:
        self.cfg = cfg
        self.shard = shard
        self.progress = progress
        self.recorder = recorder
        self.formats = formats
        self.filter = SelectionFilter(shard, done, cfg.select.ids)
        self.halt = halt
        self.fail = fail
        self.queue: asyncio.Queue[Row | BadRow | None] = asyncio.Queue(maxsize=2 * cfg.net.concurrency)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="reader")
        self.enqueued = 0
        self.finished = False  # the reader reached the end of every input
        self.counted: int | None = None
        self.errors: list[InputError] = []

    def planned(self, estimate: int | None) -> int | None:
        """The rows of the share: exact once the reader reached the end, else `estimate`."""
        return self.enqueued + self.filter.done_skipped if self.finished else estimate

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
                self.errors.append(exc)

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        limited = _selected(self.rows(), self.filter, self.cfg.select.limit)
        take = functools.partial(lambda it: list(itertools.islice(it, _READ_BATCH)), limited)
        try:
            while not self.halt.stopping.is_set():
                batch = await loop.run_in_executor(self.thread, take)
                if not batch:
                    break
                for row in batch:
                    if isinstance(row, Conflict):
                        self.recorder.conflict(row)
                        continue
                    if isinstance(row, BadRow) and not row.raw_id and self.shard.index != 0:
                        continue  # no id to shard by: the first task reports it
                    if self.halt.stopping.is_set():
                        return
                    await self.queue.put(row)
                    self.enqueued += 1
        except InputError as exc:
            self.fail(exc)
            return
        self.finished = True
        self.progress.set_total(self.enqueued)
        if not self.halt.stopping.is_set():
            for _ in range(self.cfg.net.concurrency):
                await self.queue.put(None)

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
        if not self.finished:
            self.progress.set_total(max(0, share - done_at_start), exact=False)
