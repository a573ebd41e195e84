"""`oidownload verify`: reads back every image the journal records as written, through
the output's own reader, on every core: there, decodes, has the journal's size, and a
kept original still matches OriginalMD5. What fails is marked `damaged` in the journal
(retryable), so the next download fetches exactly those again.
"""

from __future__ import annotations

import asyncio
import collections
import io
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from PIL import Image

from oidownload.core.config import OutputKind
from oidownload.core.errors import OutputError
from oidownload.core.records import Status, clean_text
from oidownload.engine.cpus import usable_cpus
from oidownload.engine.pool import Exited, PipePool
from oidownload.engine.process import init_pillow, md5_b64
from oidownload.engine.workers import follow_parent, pool_method
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.sinks import Reader, open_reader
from oidownload.state.journal import HeldJournals
from oidownload.state.reader import StateDir, Written

# Rows read from the journal at a time, then sorted by location, so that one chunk
# reads neighbouring files, or samples of one shard (whose index a worker then reads
# once). Bounds memory: about 500 bytes a row.
WINDOW = 100_000
CHUNK = 64  # images per task handed to a worker
_MD5_COLUMN = V3_COLUMNS.index("OriginalMD5")
# As the download's: workers that keep dying for reasons of the machine stop the check
# rather than restart it for ever.
MAX_POOL_RESTARTS = 20

# (image_id, location, width, height, out_bytes, expect an original, OriginalMD5 from the input)
Item = tuple[str, str, int, int, int, bool, str | None]


@dataclass(frozen=True, slots=True)
class Problem:
    image_id: str
    where: str
    why: str
    missing: bool  # the image itself is not there (rather than there but damaged)


@dataclass
class VerifyResult:
    expected: int = 0
    checked: int = 0
    originals: int = 0  # kept originals whose MD5 was checked
    problems: list[Problem] = field(default_factory=list)
    marked: int = 0
    seconds: float = 0.0
    deaths: list[str] = field(default_factory=list)  # pool workers that died (each replaced), described

    @property
    def missing(self) -> int:
        return sum(p.missing for p in self.problems)

    @property
    def damaged(self) -> int:
        return len(self.problems) - self.missing


# -- in the workers -----------------------------------------------------------------------

_reader: Reader | None = None


def _init(out: str, kind: OutputKind, parent_pid: int) -> None:
    global _reader
    follow_parent(parent_pid)
    init_pillow()
    _reader = open_reader(out, kind)


def check_chunk(items: list[Item]) -> tuple[int, list[Problem]]:
    """(kept originals checked, problems) of a chunk, in a worker."""
    assert _reader is not None, "_init was not run"
    problems = []
    originals = 0
    for item in items:
        why, missing, checked_original = check_one(_reader, item)
        originals += checked_original
        if why is not None:
            problems.append(Problem(item[0], _reader.describe(item[1]), why, missing))
    return originals, problems


def check_one(reader: Reader, item: Item) -> tuple[str | None, bool, bool]:
    """(what is wrong or None, whether the image is missing, whether an original's MD5
    was checked). Broad excepts: Pillow and the readers raise many kinds."""
    _, location, width, height, out_bytes, expect_original, input_md5 = item
    try:
        data = reader.read(location)
    except FileNotFoundError:
        return "not there", True, False
    except Exception as exc:
        return f"cannot be read: {clean_text(str(exc), 200)}", False, False
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            # A reduced-scale decode still reads every byte of the entropy-coded data,
            # so truncation and broken data are found at a quarter of the cost.
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Exception as exc:
        return f"does not decode: {clean_text(str(exc), 200)}", False, False
    if width and height and size != (width, height):
        return f"is {size[0]}x{size[1]}, the journal says {width}x{height}", False, False
    if out_bytes and len(data) != out_bytes:
        return f"has {len(data)} bytes, the journal says {out_bytes}", False, False
    if not expect_original:
        return None, False, False
    try:
        original = reader.original(location)
    except Exception as exc:
        return f"its kept original cannot be read: {clean_text(str(exc), 200)}", False, False
    if original is None:
        return "its kept original is missing", False, False
    want = original.md5 or input_md5
    if want is None:
        return None, False, False  # nothing to check it against (the input list is gone)
    got = md5_b64(original.data)
    if got != want:
        return f"its kept original's MD5 is {got}, OriginalMD5 is {want}", False, True
    return None, False, True


# -- in the main process ------------------------------------------------------------------

def _original_md5s(state: StateDir) -> dict[str, str]:
    """OriginalMD5 of every written image, from the input lists (for kept originals)."""
    found: dict[str, str] = {}
    for info in state.inputs():
        for joined in state.joined(info):
            if joined.entry.status == Status.OK and joined.fields and len(joined.fields) > _MD5_COLUMN:
                found[joined.entry.image_id] = joined.fields[_MD5_COLUMN]
    return found


def _items(state: StateDir, md5s: dict[str, str] | None) -> Iterator[list[Item]]:
    """Chunks of work, each window of rows sorted by location."""
    written = state.written()
    while window := list(islice(written, WINDOW)):
        window.sort(key=lambda w: w.location)
        items = [_item(w, md5s) for w in window]
        for i in range(0, len(items), CHUNK):
            yield items[i:i + CHUNK]


def _item(w: Written, md5s: dict[str, str] | None) -> Item:
    expect = md5s is not None and w.verified and w.source == "original"
    return (w.image_id, w.location, w.width, w.height, w.out_bytes, expect,
            md5s.get(w.image_id) if md5s is not None and expect else None)


def verify(out: str, state_dir: Path | None = None, *, processes: int | None = None, mark: bool = True,
           on_progress: Callable[[VerifyResult], None] | None = None,
           on_found: Callable[[VerifyResult], None] | None = None) -> VerifyResult:
    """Checks every written image of OUT. With `mark`, the journals are locked against
    downloads for the whole check (OutputError at once if one is running) and the
    problems are marked `damaged`, after `on_found` has been told them. InputError when
    OUT has no journal."""
    state = StateDir.open(out, state_dir)
    try:
        held = HeldJournals(state.path, "verify") if mark else None
    except OutputError as exc:
        raise OutputError(f"{exc} (`verify --no-mark` checks without changing the journal)") from None
    try:
        return _verify(state, processes or usable_cpus().count, held, on_progress, on_found)
    finally:
        if held is not None:
            held.close()


def _verify(state: StateDir, processes: int, held: HeldJournals | None,
            on_progress: Callable[[VerifyResult], None] | None,
            on_found: Callable[[VerifyResult], None] | None) -> VerifyResult:
    started = time.monotonic()
    result = VerifyResult(expected=sum(c.n for jc in state.counts() for c in jc.counts if c.status == Status.OK))
    md5s = _original_md5s(state) if state.keeps_originals() else None
    out, kind = state.where()

    def start(method: str) -> PipePool:
        ctx = multiprocessing.get_context("fork") if method == "fork" else multiprocessing.get_context("spawn")
        return PipePool(ctx, processes, _init, (out, kind, os.getpid()))

    first = start(pool_method())  # before the loop: a forked worker need not inherit it
    asyncio.run(_check_all(first, start, _items(state, md5s), processes, result, on_progress,
                           lambda location: open_reader(out, kind).describe(location)))
    if on_found is not None:
        on_found(result)  # said before the journal is written: a busy journal may make that wait
    if held is not None and result.problems:
        result.marked = held.mark_damaged({p.image_id: f"verify: {p.why} ({p.where})" for p in result.problems})
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Work:
    items: list[Item]
    deaths: int = 0  # pools broken by the death of the worker that held it


async def _check_all(pool: PipePool, start: Callable[[str], PipePool], chunks: Iterator[list[Item]], processes: int,
                     result: VerifyResult, on_progress: Callable[[VerifyResult], None] | None,
                     describe: Callable[[str], str]) -> None:
    """Every chunk, checked in the pool. A worker that dies (the OOM killer, a kill)
    breaks the pool, as in the download: the pool is restarted and what it had not
    answered is checked again; a chunk whose worker died twice is split into single
    images, and an image whose worker died twice is a problem of its own."""
    loop = asyncio.get_running_loop()
    again: collections.deque[_Work] = collections.deque()
    pending: dict[asyncio.Future[tuple[int, list[Problem]]], tuple[str, _Work]] = {}
    tags = itertools.count()
    restarts = 0
    try:
        while True:
            # Bounded: a few chunks per worker in flight, the rest not yet read.
            while len(pending) < 4 * processes:
                if again:
                    work = again.popleft()
                elif (chunk := next(chunks, None)) is not None:
                    work = _Work(chunk)
                else:
                    break
                tag = str(next(tags))
                pending[pool.submit(loop, tag, check_chunk, work.items)] = (tag, work)
            if not pending:
                break
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            broken = False
            for fut in done:
                if isinstance(fut.exception(), BrokenProcessPool):
                    broken = True
                    continue
                _, work = pending.pop(fut)
                originals, problems = fut.result()
                result.checked += len(work.items)
                result.originals += originals
                result.problems += problems
            if broken:
                restarts += 1
                if restarts > MAX_POOL_RESTARTS:
                    raise OutputError(f"verify's pool workers died {restarts} times (killed by the out-of-memory "
                                      "killer?); rerun with fewer --processes")
                lost = list(pending.values())  # a broken pool fails every job it had
                pending.clear()
                deaths = pool.exited()
                result.deaths += [d.describe() for d in deaths] or ["a pool worker died"]
                pool.close(kill=True)
                try:
                    pool = start("spawn")  # the loop may have made threads: forking could deadlock
                except BrokenProcessPool as exc:
                    raise OutputError(f"cannot restart verify's process pool: {exc}") from None
                _requeue(lost, deaths, again, result, describe)
            if on_progress is not None:
                on_progress(result)
    finally:
        pool.close(kill=True)


def _requeue(lost: list[tuple[str, _Work]], deaths: list[Exited], again: collections.deque[_Work],
             result: VerifyResult, describe: Callable[[str], str]) -> None:
    """The work of a broken pool, queued to be checked again. Only the job a dead worker
    held is blamed (the others were waiting, or in a worker that was killed with the pool)."""
    held = {tag: death for death in deaths for tag in death.holding}
    for tag, work in lost:
        death = held.get(tag)
        if death is None:
            again.append(work)
            continue
        work.deaths += 1
        if work.deaths < 2:
            again.append(work)
        elif len(work.items) > 1:
            # Which image kills it is unknown: each alone, one more death each convicts.
            again.extend(_Work([item], deaths=1) for item in work.items)
        else:
            image_id, location = work.items[0][0], work.items[0][1]
            result.checked += 1
            result.problems.append(Problem(image_id, describe(location), f"checking it killed the worker twice ({death.describe()}; "
                                                              "out of memory?)", False))
