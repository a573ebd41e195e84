"""The sink contract (issue 21), in the spirit of rclone's `fstests.Run`: every entry of
the sink table (`SINKS`: local files, local webdataset shards, and both layouts in a
real S3 server) passes the same suite, driven through its own protocol as
engine/run.py and engine/recorder.py drive it: place (the worker's `Target`, called
in-process) → publish → sync commits → crash → recover → rebuild, reading back
through the output's `Reader`. Nothing is mocked.

Where a sink commits differently by design (a bucket's shard commits only once it is
closed and uploaded), the difference is a documented `Rule` keyed like SINKS, not a
skipped test: a new table entry joins every test here and fails until it has its
rule, its place and a lister for its layout."""

from __future__ import annotations

import asyncio
import io
import itertools
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.core import fsio
from oidownload.core.config import OutputConfig, OutputKind
from oidownload.core.records import Outcome, Status
from oidownload.core.shard import Shard
from oidownload.sinks import (
    LOCAL,
    SINKS,
    STORE,
    Blobs,
    Member,
    Reader,
    Synced,
    open_blobs,
    open_reader,
    open_sink,
)
from oidownload.sinks.files import relative_path
from oidownload.state.journal import Journal

Key = tuple[str, OutputKind]
Owns = Callable[[str], bool]
SHARD_SIZE = 3
GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Rule:
    """How a sink commits, by design."""

    # The worker writes into the state dir and the main process publishes; otherwise
    # the worker publishes the image itself and it is committed when recorded.
    staged: bool
    # Of n images published in one subset (shards of `s`), how many the syncs commit
    # before close; close(complete=True) commits the rest.
    before_close: Callable[[int, int], int]
    why: str
    # After a crash, an image published but not committed may still be readable (whole):
    # an upload that succeeded after the last sync. Shards cut what was not committed.
    uncommitted_stay: bool = False


RULES: dict[Key, Rule] = {
    (LOCAL, OutputKind.FILES): Rule(
        False, lambda n, s: n, "the worker renames each file into place: committed when recorded, no publish"),
    (LOCAL, OutputKind.WEBDATASET): Rule(
        True, lambda n, s: n, "each sync fsyncs the open shard and commits its samples with its durable length"),
    (STORE, OutputKind.FILES): Rule(
        True, lambda n, s: n, "each image commits at the first sync after its upload succeeded; one uploaded "
        "after the last sync stays in the bucket, whole, and is uploaded again over itself", uncommitted_stay=True),
    (STORE, OutputKind.WEBDATASET): Rule(
        True, lambda n, s: n - n % s,
        "a shard is built in the state dir and uploaded when closed: only closed shards' samples commit before close"),
}


# -- the places: where each `where` of the table puts an output for a test -------------
def _local_place(request: pytest.FixtureRequest, tmp: Path) -> str:
    return str(tmp / "out")


def _store_place(request: pytest.FixtureRequest, tmp: Path) -> str:
    server: Any = request.getfixturevalue("s3")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    # One bucket for the whole suite, a prefix per test: each bucket takes SeaweedFS volumes
    # of its own, and a bucket per test used up the server's for the suites after this one.
    if not _BUCKETS:
        server.make_bucket("contract")
        _BUCKETS.add("contract")
    return f"s3://contract/{uuid.uuid4().hex[:12]}/run"


_BUCKETS: set[str] = set()


PLACES: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {LOCAL: _local_place, STORE: _store_place}


# -- the listers: what an output holds, by layout, read with the formats' own tools ----
def _list_files(blobs: Blobs) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, _ in blobs.walk(""):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] != "original" and "." in parts[2]:
            found[parts[2].partition(".")[0]] = key
    return found


def _list_shards(blobs: Blobs) -> dict[str, str]:
    """Samples of the final shards, by plain tarfile (as a WebDataset loader reads them)."""
    found: dict[str, str] = {}
    for key, _ in blobs.walk(""):
        if key.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(blobs.read(key))) as tf:
                for name in tf.getnames():
                    image_id, _, suffix = name.partition(".")
                    if suffix in ("jpg", "png"):
                        assert image_id not in found, f"{image_id} is in two samples"
                        found[image_id] = f"{key}#{image_id}"
    return found


LISTERS: dict[OutputKind, Callable[[Blobs], dict[str, str]]] = {
    OutputKind.FILES: _list_files, OutputKind.WEBDATASET: _list_shards}


def test_every_table_entry_is_covered() -> None:
    """A new sink must say how it commits, where its tests put it, and how it is listed."""
    assert set(RULES) == set(SINKS)
    assert set(PLACES) == {w for w, _ in SINKS}
    assert set(LISTERS) == {kind for _, kind in SINKS}


# -- images and the driver ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Img:
    image_id: str
    subset: str
    ext: str
    data: bytes
    original: bytes | None = None  # --keep-original's verified original, kept beside it


def _ids(owns: Owns, start: int = 0) -> Iterator[str]:
    n = start
    while True:
        n += 1
        image_id = f"{n * 0x9E3779B97F4A7C15 % (1 << 64):016x}"
        if owns(image_id):
            yield image_id


def make_images(n: int, subsets: tuple[str, ...] = ("validation",), owns: Owns = lambda i: True,
                start: int = 0) -> list[Img]:
    """Small real images, JPEG and PNG in turn, each of its own colour; every third with
    a kept original."""
    out = []
    for k, image_id in enumerate(itertools.islice(_ids(owns, start), n)):
        ext = "jpg" if k % 2 == 0 else "png"
        image = Image.new("RGB", (16 + k, 12), (40 * k % 256, 90, 200))
        original = _encoded(image.resize((32 + k, 24)), "JPEG") if k % 3 == 0 else None
        out.append(Img(image_id, subsets[k % len(subsets)], ext, _encoded(image, "JPEG" if ext == "jpg" else "PNG"),
                       original))
    return out


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@dataclass
class Output:
    key: Key
    config: OutputConfig

    @property
    def rule(self) -> Rule:
        return RULES[self.key]

    def reader(self) -> Reader:
        return open_reader(self.config.out, self.config.kind)

    def blobs(self) -> Blobs:
        return open_blobs(self.config.out, GRACE)

    def listed(self) -> dict[str, str]:
        return LISTERS[self.config.kind](self.blobs())

    def local_files(self) -> dict[str, int]:
        """Every file below the output (when local) and the state dir: path → size."""
        roots = [self.config.state_dir] + ([Path(self.config.out)] if self.key[0] == LOCAL else [])
        return {str(p): p.stat().st_size for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=sorted(SINKS), ids=lambda k: f"{k[0]}-{k[1].value}")
def output(request: pytest.FixtureRequest, tmp_path: Path) -> Output:
    where, kind = request.param
    out = PLACES[where](request, tmp_path)
    return Output(request.param, OutputConfig(out, tmp_path / "state", kind, shard_size=SHARD_SIZE))


@dataclass
class Run:
    """One process's use of a sink, in the engine's order: open, prepare, recover, start,
    place/publish, syncs, close. `journal` is what the engine would journal: the
    outcomes the recorder commits at once (nothing staged) and those a sync, close or
    recover says are committed; `state` is the sink state journaled with them."""

    out: Output
    shard: Shard = field(default_factory=Shard)
    journal: dict[str, Outcome] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    published: dict[str, Outcome] = field(default_factory=dict)
    released: int = 0

    def __post_init__(self) -> None:
        self.sink = open_sink(self.out.config, self.shard, GRACE)
        self.sink.prepare()

    def recover(self, state: dict[str, str] | None = None, *, crashed: bool = False,
                owns: Owns | None = None) -> Synced:
        found = self.sink.recover(dict(state or {}), owns or self.shard.owns, crashed)
        self.commit(found)
        return found

    def commit(self, synced: Synced) -> None:
        assert synced.error is None, synced.error
        for outcome in synced.committed:
            assert outcome.status is Status.OK, outcome
            assert outcome.image_id not in self.journal, f"{outcome.image_id} committed twice"
            self.journal[outcome.image_id] = outcome
        for k, v in synced.state.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v

    def place(self, img: Img) -> Outcome:
        members: list[Member] = [(img.ext, img.data)]
        if img.original is not None:
            members.append(("original.jpg", img.original))
        placed = self.sink.target.place(img.subset, img.image_id, members)
        outcome = Outcome(img.image_id, Status.OK, subset=img.subset, ext=img.ext, out_bytes=len(img.data),
                          width=16, height=12, location=placed.location, staged=placed.staged)
        assert bool(outcome.staged) == self.out.rule.staged, self.out.rule.why
        self.published[img.image_id] = outcome
        if outcome.staged:
            self.sink.publish(outcome, None, self._release)
        else:
            self.journal[img.image_id] = outcome  # the recorder: committed when recorded
        return outcome

    def _release(self) -> None:
        self.released += 1

    async def sync(self) -> Synced:
        synced = await self.sink.sync()
        self.commit(synced)
        return synced

    async def settle(self, want: int, timeout: float = 20.0) -> None:
        """Syncs until `want` images are committed (an upload takes its time), then once
        more: a sync never commits more than the rule says."""
        deadline = time.monotonic() + timeout
        while len(self.journal) < want:
            assert time.monotonic() < deadline, f"{len(self.journal)} of {want} committed after {timeout}s"
            await self.sync()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        await self.sync()

    async def close(self) -> None:
        self.commit(await self.sink.close(complete=True))
        self.sink.release()


def assert_reads(out: Output, outcomes: dict[str, Outcome], images: dict[str, Img]) -> None:
    """Every outcome's location reads back the very bytes placed (and its kept original),
    through the Reader."""
    reader = out.reader()
    for image_id, outcome in outcomes.items():
        assert outcome.location, outcome
        assert reader.read(outcome.location) == images[image_id].data, reader.describe(outcome.location)
        kept = reader.original(outcome.location)
        assert (kept.data if kept is not None else None) == images[image_id].original, reader.describe(outcome.location)
        assert image_id in reader.describe(outcome.location)


def by_id(images: list[Img]) -> dict[str, Img]:
    return {img.image_id: img for img in images}


# -- the contract ----------------------------------------------------------------------
def test_sync_commits_what_was_published(output: Output) -> None:
    images = make_images(5)
    run = Run(output)
    assert not run.recover().committed

    async def go() -> None:
        run.sink.start()
        for img in images:
            run.place(img)
        want = output.rule.before_close(len(images), SHARD_SIZE)
        await run.settle(want)
        assert set(run.journal) == {img.image_id for img in images[:want]}, output.rule.why
        assert_reads(output, run.journal, by_id(images))
        await run.close()

    asyncio.run(go())
    assert set(run.journal) == set(run.published)
    assert run.released == (len(images) if output.rule.staged else 0)  # the byte budget comes back whole


def test_close_commits_everything_and_the_reader_lists_exactly_that(output: Output) -> None:
    images = make_images(7, ("validation", "train"))
    run = Run(output)
    run.recover()

    async def go() -> None:
        run.sink.start()
        for img in images:
            run.place(img)
        await run.close()

    asyncio.run(go())
    assert set(run.journal) == {img.image_id for img in images}
    assert {o.subset for o in run.journal.values()} == {"validation", "train"}
    assert_reads(output, run.journal, by_id(images))
    assert output.listed() == {i: o.location for i, o in run.journal.items()}
    assert not list(output.config.state_dir.glob("staging/*/*")), "staged files outlived the run"


def _leftovers(run: Run, img: Img) -> list[Path]:
    """What a crash leaves of an image under way: a worker killed mid-write leaves its
    temporary file below OUT (the files layout); a staged image the main process never
    published stays in the staging folder."""
    if not run.out.rule.staged:
        folders, name = relative_path(img.subset, img.image_id, img.ext).rsplit("/", 1)
        path = Path(run.out.config.out) / folders / fsio.temp_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(img.data[: len(img.data) // 2])
        return [path]
    placed = run.sink.target.place(img.subset, img.image_id, [(img.ext, img.data)])
    assert placed.staged
    return [Path(p) for p in placed.staged]


def _crash_run(run: Run, first: list[Img], then: list[Img]) -> tuple[set[str], dict[str, str]]:
    """Places and syncs `first`, places `then` without a sync, and stops dead: no
    close, the open shard as it is. Returns what the last sync left committed, and the
    state it journaled."""
    synced: set[str] = set()

    async def go() -> None:
        run.sink.start()
        for img in first:
            run.place(img)
        await run.settle(run.out.rule.before_close(len(first), SHARD_SIZE))
        synced.update(run.journal)
        for img in then:
            run.place(img)
        # Dead once every image is out of the staging folder (each `release` says so: appended
        # to its shard, or uploaded), so no old thread still writes while the next run recovers.
        staged = len(run.published) if run.out.rule.staged else 0
        deadline = time.monotonic() + 20
        while run.released < staged:
            assert time.monotonic() < deadline, f"{run.released} of {staged} staged images released"
            await asyncio.sleep(0.02)

    asyncio.run(go())
    return synced, dict(run.state)


# With shards of 3: after the last sync one more image (a shard stays open with an
# unsynced sample at its end), two (the open shard fills and closes before the crash),
# or, when the last sync left no shard open, one that begins a new shard.
@pytest.mark.parametrize(("before", "unsynced"), [(4, 1), (4, 2), (3, 1)],
                         ids=["open-tail", "closed-since", "new-part"])
def test_a_crash_keeps_what_sync_committed_and_nothing_half_written(output: Output, before: int,
                                                                    unsynced: int) -> None:
    images = make_images(7)
    first, then, torn = images[:before], images[before : before + unsynced], images[6]
    crashed = Run(output)
    crashed.recover()
    synced, state = _crash_run(crashed, first, then)
    leftovers = _leftovers(crashed, torn)

    run = Run(output)
    found = run.recover(state, crashed=True)
    journal = {**crashed.journal, **{o.image_id: o for o in found.committed}}
    # A shard that closed after the last sync is adopted, and checked against the journal:
    # it must hold every sample the journal put in it.
    for lost in found.unproven:
        assert {i for i, o in crashed.journal.items() if o.location.startswith(f"{lost.shard}#")} <= lost.kept, lost.why
    assert synced <= set(journal) <= set(crashed.published), output.rule.why
    assert_reads(output, journal, by_id(images))
    # What is not committed is either gone or whole: never a torn image, never a temporary file.
    reader = output.reader()
    for image_id, outcome in crashed.published.items():
        if image_id not in journal and outcome.location:
            try:
                data = reader.read(outcome.location)
            except FileNotFoundError:
                continue
            assert output.rule.uncommitted_stay, f"{image_id} is readable but was never committed: {output.rule.why}"
            assert data == by_id(images)[image_id].data
    assert not [p for p in leftovers if p.exists()], "recovery left this task's leftovers"
    assert all(not part.startswith(".") and not key.endswith((".part", fsio.TMP_SUFFIX))
               for key, _ in output.blobs().walk("") for part in key.split("/")), "a temporary file is readable"
    assert set(output.listed()) <= set(crashed.published)

    # The next run goes on from there: every image ends committed once, and reads back.
    async def go() -> None:
        run.sink.start()
        for img in images:
            if img.image_id not in journal:
                run.place(img)
        await run.close()

    recovered = set(run.journal)
    asyncio.run(go())
    again = set(run.journal) - recovered
    assert set(journal) | again == set(by_id(images))
    assert not set(journal) & again, "an image committed by the crashed run or its recovery was committed again"
    everything = {**journal, **run.journal}
    assert_reads(output, everything, by_id(images))
    assert output.listed() == {i: o.location for i, o in everything.items()}


def _placement(outcomes: Iterable[Outcome]) -> set[tuple[str, str, str]]:
    return {(o.image_id, o.subset, o.location) for o in outcomes}


def test_rebuild_lists_exactly_the_committed_images(output: Output) -> None:
    images = make_images(7, ("validation", "train"))
    run = Run(output)
    run.recover()

    async def go() -> None:
        run.sink.start()
        for img in images:
            run.place(img)
        await run.close()

    asyncio.run(go())
    # The state dir is lost: a new one next to the used output, as engine/run.py does it.
    lost = Output(output.key, replace(output.config, state_dir=output.config.state_dir.parent / "new-state"))
    again = Run(lost)
    found = again.recover()
    assert _placement(found.committed) <= _placement(list(run.journal.values()))
    rebuilt = list(again.sink.rebuild(again.shard.owns))
    assert all(o.status is Status.OK for o in rebuilt)
    assert len(rebuilt) == len(images)
    assert _placement(rebuilt) == _placement(list(run.journal.values()))
    assert_reads(output, {o.image_id: o for o in rebuilt}, by_id(images))
    again.sink.release()


def test_another_tasks_images_are_neither_recovered_nor_rebuilt(output: Output) -> None:
    ours, theirs = Shard(0, 2), Shard(1, 2)
    mine = make_images(4, owns=ours.owns)
    other_done, other_open = make_images(4, owns=theirs.owns), make_images(3, owns=theirs.owns, start=1000)
    other_torn = make_images(1, owns=theirs.owns, start=2000)[0]
    other_ids = {img.image_id for img in other_done + other_open + [other_torn]}

    # The other task: a complete run, then one that crashes with work under way.
    done = Run(output, theirs)
    done.recover()

    async def finish() -> None:
        done.sink.start()
        for img in other_done:
            done.place(img)
        await done.close()

    asyncio.run(finish())
    crashed = Run(output, theirs)
    crashed.recover(done.state)
    _crash_run(crashed, other_open[:2], other_open[2:])
    leftovers = _leftovers(crashed, other_torn)
    files_before = output.local_files()
    keys_before = dict(output.blobs().walk(""))

    # Our task, after a crash of its own: it touches nothing of theirs.
    run = Run(output, ours)
    found = run.recover(crashed=True)
    assert not {o.image_id for o in found.committed} & other_ids
    after = output.local_files()
    assert {p: s for p, s in files_before.items() if after.get(p) != s} == {}, "recovery touched another task's files"
    assert all(p.exists() for p in leftovers), "recovery removed another task's leftovers"
    assert dict(output.blobs().walk("")) == keys_before
    assert not {o.image_id for o in run.sink.rebuild(ours.owns)}

    async def go() -> None:
        run.sink.start()
        for img in mine:
            run.place(img)
        await run.close()

    asyncio.run(go())
    lost = Output(output.key, replace(output.config, state_dir=output.config.state_dir.parent / "new-state"))
    again = Run(lost, ours)
    assert not {o.image_id for o in again.recover().committed} & other_ids
    assert {o.image_id for o in again.sink.rebuild(ours.owns)} == set(run.journal) == {i.image_id for i in mine}
    again.sink.release()
    # They are there to be found: the other task's own rebuild lists its complete run.
    theirs_again = Run(Output(output.key, replace(lost.config, state_dir=lost.config.state_dir.parent / "their-state")), theirs)
    assert {o.image_id for o in theirs_again.sink.rebuild(theirs.owns)} >= {i.image_id for i in other_done}
    theirs_again.sink.release()


# Where a sink breaks the contract today: a strict xfail, so that the fix flips it.
KNOWN_BUGS: dict[Key, str] = {}


def test_a_resplit_keeps_what_the_old_split_committed(output: Output, request: pytest.FixtureRequest) -> None:
    """A stopped run (close(complete=False): whatever is open stays open for the next
    run), then the same output split another way (--resplit: a fresh journal per new
    task, the old journals still count as done): the new tasks' recovery claims only
    their own images and removes nothing the old split committed."""
    if output.key in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[output.key]))
    images = make_images(4)
    old = Run(output, Shard(0, 1))
    old.recover()

    async def stopped() -> None:
        old.sink.start()
        for img in images:
            old.place(img)
        await old.settle(output.rule.before_close(len(images), SHARD_SIZE))
        old.commit(await old.sink.close(complete=False))
        old.sink.release()

    asyncio.run(stopped())
    _journal_file(old)
    claimed: dict[Shard, set[str]] = {}
    for task in (Shard(0, 2), Shard(1, 2)):
        new = Run(output, task)
        claimed[task] = {o.image_id for o in new.recover(crashed=False).committed}
        new.sink.release()
    assert_reads(output, old.journal, by_id(images))
    # As a loader sees the output too, not only through the Reader (which also reads a shard left open).
    assert set(old.journal) <= set(output.listed())
    for task, ids in claimed.items():
        assert all(task.owns(i) for i in ids), f"{task.describe()} claims another task's images"


def _journal_file(run: Run) -> None:
    """What the engine keeps of a run in the state dir: its journal, with its outcomes
    and the sink state journaled with them (a re-split's recovery reads the old split's)."""
    journal = Journal(run.out.config.state_dir, run.shard, run.out.config.out)
    try:
        journal.record(list(run.journal.values()), run.state)
    finally:
        journal.close()


async def _finish(run: Run, images: list[Img]) -> None:
    run.sink.start()
    for img in images:
        run.place(img)
    await run.close()


def test_a_resplit_after_a_crash_keeps_each_image_once(output: Output) -> None:
    """The old split crashes with a sample appended after its last sync, so not in its
    journal; then the output is split another way. What the old journal committed stays
    readable; the sample it did not commit is fetched again by its new owner, so the
    output must not keep the crashed run's copy too."""
    new_tasks = (Shard(0, 2), Shard(1, 2))
    committed = make_images(4)
    unsynced = make_images(1, owns=new_tasks[1].owns, start=1000)  # not the task that finds the open shard
    images = by_id(committed + unsynced)
    old = Run(output, Shard(0, 1))
    old.recover()
    _crash_run(old, committed, unsynced)
    _journal_file(old)

    journal = dict(old.journal)
    for task in new_tasks:
        new = Run(output, task)
        new.recover(crashed=False)
        done = set(journal) | set(new.journal)  # the old journal counts as done (merged into the done set)
        asyncio.run(_finish(new, [img for i, img in images.items() if task.owns(i) and i not in done]))
        journal.update(new.journal)
    assert set(journal) == set(images)
    assert_reads(output, journal, images)
    assert set(output.listed()) == set(images)  # each once: the shard lister refuses an image in two samples
