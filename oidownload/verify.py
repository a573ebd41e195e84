"""`oidownload verify`: reads back every image the journal records as written, through
the output's own reader, on every core: there, decodes, has the journal's size, and a
kept original still matches OriginalMD5. What fails is marked `damaged` in the journal
(retryable), so the next download fetches exactly those again.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from PIL import Image

from .config import OutputKind
from .cpus import usable_cpus
from .errors import OutputError
from .journal import HeldJournals
from .process import init_pillow, md5_b64
from .records import Status, clean_text
from .rows import V3_COLUMNS
from .sinks import Reader, open_reader
from .state import StateDir, Written
from .workers import follow_parent, pool_method

# Rows read from the journal at a time, then sorted by location, so that one chunk
# reads neighbouring files, or samples of one shard (whose index a worker then reads
# once). Bounds memory: about 500 bytes a row.
WINDOW = 100_000
CHUNK = 64  # images per task handed to a worker
_MD5_COLUMN = V3_COLUMNS.index("OriginalMD5")

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
           on_progress: Callable[[VerifyResult], None] | None = None) -> VerifyResult:
    """Checks every written image of OUT. With `mark`, the journals are locked against
    downloads for the whole check (OutputError at once if one is running) and the
    problems are marked `damaged`. InputError when OUT has no journal."""
    state = StateDir.open(out, state_dir)
    try:
        held = HeldJournals(state.path, "verify") if mark else None
    except OutputError as exc:
        raise OutputError(f"{exc} (`verify --no-mark` checks without changing the journal)") from None
    try:
        return _verify(state, processes or usable_cpus().count, held, on_progress)
    finally:
        if held is not None:
            held.close()


def _verify(state: StateDir, processes: int, held: HeldJournals | None,
            on_progress: Callable[[VerifyResult], None] | None) -> VerifyResult:
    started = time.monotonic()
    result = VerifyResult(expected=sum(c.n for jc in state.counts() for c in jc.counts if c.status == Status.OK))
    md5s = _original_md5s(state) if state.keeps_originals() else None
    out, kind = state.where()
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(pool_method()), initializer=_init,
                               initargs=(out, kind, os.getpid()))
    pending: dict[Future[tuple[int, list[Problem]]], int] = {}
    try:
        chunks = _items(state, md5s)
        while True:
            # Bounded: a few chunks per worker in flight, the rest not yet read.
            while len(pending) < 4 * processes and (chunk := next(chunks, None)) is not None:
                pending[pool.submit(check_chunk, chunk)] = len(chunk)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                n = pending.pop(fut)
                originals, problems = fut.result()
                result.checked += n
                result.originals += originals
                result.problems += problems
            if on_progress is not None:
                on_progress(result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if held is not None and result.problems:
        result.marked = held.mark_damaged({p.image_id: f"verify: {p.why} ({p.where})" for p in result.problems})
    result.seconds = time.monotonic() - started
    return result
