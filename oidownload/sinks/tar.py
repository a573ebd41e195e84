"""The `webdataset` output: tar shards of samples `<ImageID>.<ext>` + `<ImageID>.json`
(+ `<ImageID>.original.<ext>` with --keep-original), as WebDataset and plain tarfile
read them:

    OUT/<subset>/<subset>-<task>-<seq>.tar   a closed shard (task: the cluster task index)
    OUT/<subset>/<subset>-<task>-<seq>.tar.idx.json   its index: each sample's members, offsets, sizes
    OUT/<subset>/shards.json                 the subset's shard list (wids), rewritten at each end
    .<subset>-<task>-<seq>.tar.part          the open shard: never under a final name

Workers stage each image in the state dir; one thread here appends the staged files
to the subset's open shard. A shard is closed (end-of-archive, fsync, index) before
its final name appears. Commit, for a local output: at every sync the open shards are
fsynced and their durable length is journaled with their samples in one transaction;
after a crash the open shard is cut back to that length and appended to, and a shard
closed after the journal last heard of it is adopted whole from its index. An open
shard of this task's names that this run does not continue (another split's, after a
--resplit: names carry the task's index, not the split) is closed as its own run
would have closed it, cut to what a journal committed in it, or removed when no
journal committed anything in it. For object storage,
shards are built in the state dir and uploaded in order when closed; their samples
commit when the upload succeeds, so a crash costs at most the open shards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from oidownload.core import fsio
from oidownload.core.config import OutputConfig, OutputKind
from oidownload.core.errors import OutputError
from oidownload.core.ids import ID_RE
from oidownload.core.records import Outcome, Row, Status, clean_text
from oidownload.core.shard import Shard
from oidownload.sinks import Blobs, Original, Release, Sink, Synced, Unproven
from oidownload.sinks.staging import StagingTarget, clear_staging, member_suffix, staging_dir
from oidownload.sinks.texts import add_sample_fields
from oidownload.state.journal import other_sink_states, take_lock

BLOCK = 512
_END = bytes(2 * BLOCK)  # end-of-archive marker
# <subset>-<task>-<seq>.tar; a shard written before the split was in the name has none.
SHARD_RE = re.compile(r"(?:(.+)-)?(\d{5})-(\d{5})\.tar")
INDEX_SUFFIX = ".idx.json"
INDEX_KIND = "oidownload-tar-index-v1"
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# The EXIF-style turn codes that are plain rotations, as degrees counter-clockwise.
_DEGREES = {1: 0, 8: 90, 3: 180, 6: 270}


def shard_name(subset: str, task: int, seq: int) -> str:
    """The split is in the name: webdataset's and wids' caches key a shard by its file
    name, so `00000-00000.tar` of validation was read back from train's cache."""
    return f"{subset}-{task:05d}-{seq:05d}.tar"


def shard_of_name(name: str, subset: str) -> tuple[int, int] | None:
    """(task, seq) of a shard's file name in its subset's folder, new or old style."""
    m = SHARD_RE.fullmatch(name)
    if m is None or m.group(1) not in (None, subset):
        return None
    return int(m.group(2)), int(m.group(3))


def part_name(name: str) -> str:
    return f".{name}.part"


def index_part_name(name: str) -> str:
    return f".{name}{INDEX_SUFFIX}.part"


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def image_suffix(members: Mapping[str, object]) -> str | None:
    """The member that is the written image: not its JSON, caption, kept original or
    masks (issue 22)."""
    return next((k for k in members if k not in ("json", "txt") and not k.startswith("original.")
                 and ".mask." not in k), None)


def journaled_open(state: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """subset → (seq, durable length) of the open shard a journal's sink state points to."""
    where: dict[str, tuple[int, int]] = {}
    for key, value in state.items():
        if key.startswith("tar:"):
            d = json.loads(value)
            where[str(d["subset"])] = (int(d["seq"]), int(d.get("offset", 0)))
    return where


def _journaled_lengths(states: list[Mapping[str, str]]) -> dict[tuple[str, int], int]:
    """(subset, seq) → the longest durable length any of these journals holds for that
    open shard."""
    lengths: dict[tuple[str, int], int] = {}
    for state in states:
        for subset, (seq, offset) in journaled_open(state).items():
            lengths[subset, seq] = max(offset, lengths.get((subset, seq), 0))
    return lengths


def index_doc(name: str, subset: str, size: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": INDEX_KIND, "shard": name, "subset": subset, "size": size, "samples": entries}


def write_index(folder: Path, name: str, doc: dict[str, Any]) -> None:
    """A closed shard's index, durable under its part name before the shard is published."""
    with fsio.atomic_file(folder / index_part_name(name), "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())


def sample_json(outcome: Outcome, row: Row | None) -> dict[str, Any]:
    """The `<ImageID>.json` member: what was written, from where, and the credits."""
    meta: dict[str, Any] = {
        "ImageID": outcome.image_id, "subset": outcome.subset, "width": outcome.width, "height": outcome.height,
        "source": outcome.source.value if outcome.source else None, "url": outcome.url,
        "verified": outcome.verified, "orientation": outcome.orientation,
        "rotation": _DEGREES.get(outcome.orientation), "crop": list(outcome.crop) if outcome.crop else None,
    }
    if row is not None:
        if outcome.verified:
            meta["OriginalSize"], meta["OriginalMD5"] = row.original_size, row.original_md5
        f = row.fields
        meta.update({"OriginalURL": row.original_url, "OriginalLandingURL": f[3], "License": f[4],
                     "AuthorProfileURL": f[5], "Author": row.author, "Title": row.title})
    return meta


@dataclass(slots=True)
class _Sample:
    outcome: Outcome
    members: dict[str, tuple[int, int]]  # suffix → (data offset, size)

    def index_entry(self) -> dict[str, Any]:
        o = self.outcome
        return {"key": o.image_id, "members": self.members, "width": o.width, "height": o.height, "ext": o.ext,
                "source": o.source.value if o.source else None, "verified": o.verified, "out_bytes": o.out_bytes,
                "orientation": o.orientation, "crop": list(o.crop) if o.crop else None, "sha256": o.sha256}


@dataclass(slots=True)
class _Open:
    """One subset's open shard; touched only on the sink's I/O thread."""

    subset: str
    seq: int
    name: str
    folder: Path
    fd: int = -1
    size: int = 0  # bytes written
    synced: int = 0  # bytes fsynced (and, once the sync's batch commits, journaled)
    samples: list[_Sample] = field(default_factory=list)
    uncommitted: list[Outcome] = field(default_factory=list)

    @property
    def part(self) -> Path:
        return self.folder / part_name(self.name)


class ShardStore(Protocol):
    """Where closed shards go: renamed into the local OUT, or uploaded."""

    remote: bool
    blobs: Blobs

    def folder(self, subset: str) -> Path:
        """The local folder where a subset's open shard is built (created)."""
        ...

    def part_folders(self) -> list[Path]:
        """Every local folder that may hold open shards."""
        ...

    def publish(self, subset: str, name: str) -> None:
        """Makes the closed shard `name` (in `folder(subset)`, with its index beside it
        under `index_part_name`) visible under its final name; blocking."""
        ...

    async def publish_async(self, subset: str, name: str) -> None:
        """`publish` for the event loop: a cancel stops waiting for it."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def check(self) -> None:
        """Before any download: OutputError when the output cannot be written."""
        ...

    def lock(self, task: int) -> int | None:
        """Claims the task's shard names in the output itself, whatever the state dir:
        a descriptor to close at the end, None where the output cannot hold a lock.
        OutputError when another process holds it."""
        ...


class LocalShards:
    remote = False

    def __init__(self, out: Path) -> None:
        from oidownload.sinks.files import LocalBlobs

        self.out = out
        self.blobs: Blobs = LocalBlobs(out)

    def check(self) -> None:
        from oidownload.sinks.files import prepare_folder

        prepare_folder(self.out)

    def folder(self, subset: str) -> Path:
        root_fd = fsio.open_root(self.out)
        try:
            os.close(fsio.open_dir(root_fd, (subset,), create=True))
        finally:
            os.close(root_fd)
        return self.out / subset

    def part_folders(self) -> list[Path]:
        return [self.out / s for s in self.blobs.folders("")]

    def publish(self, subset: str, name: str) -> None:
        folder = self.out / subset
        # The index first: a final tar always has its index.
        os.replace(folder / index_part_name(name), folder / (name + INDEX_SUFFIX))
        os.replace(folder / part_name(name), folder / name)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def publish_async(self, subset: str, name: str) -> None:
        self.publish(subset, name)

    def put(self, key: str, data: bytes) -> None:
        folder, _, name = key.rpartition("/")
        with fsio.atomic_file(self.out / folder / name, "wb") as f:
            f.write(data)

    def lock(self, task: int) -> int | None:
        # The journal's lock lives in the state dir, which each copy of a task may have
        # of its own (node-local state, a requeued task still running elsewhere): two
        # copies would then truncate and append to the same open shard. A filesystem
        # that takes no locks leaves only the journal's.
        path = self.out / f".shards-{task:05d}.lock"
        fd = take_lock(path, "", lambda holder: (
            f"another oidownload process ({holder}) is writing task {task}'s webdataset shards into {self.out} "
            f"(it holds {path}); two copies of one task would overwrite each other's shards: wait for it, "
            "or stop it first"), required=False)
        return None if fd < 0 else fd


class TarSink(Sink):
    kind = OutputKind.WEBDATASET

    def __init__(self, output: OutputConfig, shard: Shard, store: ShardStore, where: str) -> None:
        self.shard = shard
        self.store = store
        self.where = where
        self.state_dir = output.state_dir
        self.staging = staging_dir(output.state_dir, shard.tag)
        self.target = StagingTarget(str(self.staging), output.fsync)
        self.shard_size = output.shard_size
        self.open: dict[str, _Open] = {}
        self.next_seq: dict[str, int] = {}
        self.io = ThreadPoolExecutor(1, thread_name_prefix="tar")
        self.appending: set[asyncio.Future[_Open | None]] = set()
        # Remote: closed shards waiting for (or in) their upload, in order.
        self.to_upload: list[_Open] = []
        self.uploader: asyncio.Task[None] | None = None
        self.committed: list[Outcome] = []
        self.state: dict[str, str | None] = {}
        self.error: BaseException | None = None
        self.touched: set[str] = set()
        self.unproven: list[Unproven] = []
        self._warnings: list[str] = []
        self._said: set[str] = set()
        self.lock_fd: int | None = None
        self.abandoned = False
        # Remote: this task's shard numbers in the bucket, listed once at recovery. The
        # I/O thread must not list the bucket while it appends: a store that stops
        # answering would hold that thread, and the process's exit with it.
        self.taken: dict[str, list[int]] | None = None
        self.listing: asyncio.Task[None] | None = None  # remote: shards.json being written
        # issue 23: each sample's captions, relationships and points, when the selection has them
        self.fields = output.sample_fields() if output.sample_fields is not None else None

    def describe(self) -> str:
        return f"webdataset shards in {self.where}"

    def release(self) -> None:
        if self.fields is not None:
            self.fields.close()
            self.fields = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def prepare(self) -> None:
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.staging}: {exc.strerror or exc}") from None
        self.store.check()

    # -- recovery -----------------------------------------------------------------------
    def recover(self, state: Mapping[str, str], owns: Callable[[str], bool], crashed: bool) -> Synced:
        if self.lock_fd is None:
            self.lock_fd = self.store.lock(self.shard.index)
        clear_staging(self.staging)
        if self.store.remote:
            self.taken = {subset: self._listed_seqs(subset) for subset in self.store.blobs.folders("")}
        where = journaled_open(state)
        for subset in sorted(set(where) | set(self.store.blobs.folders(""))):
            seq, offset = where.get(subset, (0, 0))
            self._recover_subset(subset, seq, offset if subset in where else 0, owns)
        if self.store.remote:
            self._upload_leftovers()
            self._remove_leftovers(lambda folder, name: False)
        else:
            self._remove_leftovers(self._sealer(state, owns))
        found = Synced(self.committed, self.state, unproven=self.unproven)
        self.committed, self.state, self.unproven = [], {}, []
        return found

    def warnings(self) -> list[str]:
        # A new journal has its output's shards adopted twice (recover, then rebuild): one warning each.
        fresh = [w for w in dict.fromkeys(self._warnings) if w not in self._said]
        self._said.update(fresh)
        self._warnings = []
        return fresh

    def _recover_subset(self, subset: str, seq: int, offset: int, owns: Callable[[str], bool]) -> None:
        """Shards close in order, so every closed shard of this task from the journal's
        open one onwards was closed after the journal last heard of it: each holds
        the samples its own headers show whole, and those its index names are adopted.
        Otherwise the journal's open shard is continued from what it provably holds."""
        closed = sorted((found[1], name, size) for name, size in self.store.blobs.files(subset)
                        if (found := shard_of_name(name, subset)) and found[0] == self.shard.index
                        and found[1] >= seq)
        for n, name, size in closed:
            held = held_samples(self.store.blobs, f"{subset}/{name}", size)
            # Only this task's images: after a re-split, a shard of the same index holds
            # another task's too (the sink contract suite found it).
            self.committed += [o for o in self._adopt(subset, name, held) if owns(o.image_id)]
            if n == seq and offset > 0:
                # The journal's open shard, closed since: its journaled samples must be in it.
                self.unproven.append(Unproven(f"{subset}/{name}", frozenset(held), (
                    f"{self.store.blobs.describe(f'{subset}/{name}')} does not hold every sample the journal put in it")))
            self._closed(subset, n)
        if closed:
            return  # the journal's open shard is among them; a later part is sealed (_seal)
        self.next_seq[subset] = seq
        if offset > 0 and not self.store.remote:
            self._continue(subset, seq, offset)

    def _continue(self, subset: str, seq: int, offset: int) -> None:
        """The journal's open shard, cut back to its journaled length and appended to.
        A part that is shorter, garbled or gone (changed between runs) is cut at the
        end of its last sample that is whole, so no reader ever stops early at a run of
        zeros or a bad header; the journaled samples beyond it are fetched again."""
        name = shard_name(subset, self.shard.index, seq)
        folder = self.store.folder(subset)
        old = f"{self.shard.index:05d}-{seq:05d}.tar"  # begun before the split was in the name
        if not (folder / part_name(name)).exists() and (folder / part_name(old)).exists():
            name = old
        part = folder / part_name(name)
        where = f"{subset}/{name}"
        try:
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            self.unproven.append(Unproven(where, frozenset(), f"the open shard {part} is gone ({exc.strerror or exc})"))
            self.state[f"tar:{subset}"] = json.dumps({"subset": subset, "seq": seq, "offset": 0})
            return
        size = os.fstat(fd).st_size
        samples, length = whole_samples(lambda pos, n: os.pread(fd, n, pos), min(offset, size))
        os.ftruncate(fd, length)  # what follows was never journaled, or cannot be trusted
        os.fsync(fd)
        shard = _Open(subset, seq, name, part.parent, fd, length, length)
        shard.samples = samples
        self.open[subset] = shard
        self.touched.add(subset)
        if length < offset:
            why = (f"the open shard {part} is shorter than the journal says ({size} of {offset} bytes)" if size < offset
                   else f"the open shard {part} is damaged at byte {length} of the {offset} journaled")
            self.unproven.append(Unproven(where, frozenset(s.outcome.image_id for s in samples), why))
            self.state[f"tar:{subset}"] = json.dumps({"subset": subset, "seq": seq, "offset": length})

    def _adopt(self, subset: str, name: str, held: Mapping[str, Mapping[str, tuple[int, int]]]) -> list[Outcome]:
        key = f"{subset}/{name}{INDEX_SUFFIX}"
        blobs = self.store.blobs
        try:
            data = blobs.read(key)
        except FileNotFoundError:
            self._warnings.append(f"{blobs.describe(f'{subset}/{name}')} has no index: its samples are not taken "
                                  "as done, and are fetched again")
            return []
        return adopt(data, blobs.describe(key), held, subset, name, self._warnings)

    def _upload_leftovers(self) -> None:
        """Remote: shards closed in the state dir whose upload never finished."""
        for folder in self.store.part_folders():
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                subset = folder.name
                numbers = shard_of_name(entry.name, subset)
                if numbers and numbers[0] == self.shard.index and (folder / index_part_name(entry.name)).exists():
                    index = folder / index_part_name(entry.name)
                    found = adopt(index.read_bytes(), str(index), _held_file(folder / entry.name), subset, entry.name,
                                  self._warnings)
                    self.store.publish(subset, entry.name)
                    self.committed += found
                    self._closed(subset, numbers[1])
                    (folder / entry.name).unlink(missing_ok=True)
                    (folder / index_part_name(entry.name)).unlink(missing_ok=True)

    def _closed(self, subset: str, seq: int) -> None:
        self.next_seq[subset] = max(self.next_seq.get(subset, 0), seq + 1)
        self.state[f"tar:{subset}"] = json.dumps({"subset": subset, "seq": self.next_seq[subset], "offset": 0})

    def _remove_leftovers(self, sealed: Callable[[Path, str], bool]) -> None:
        """This task's open shards that no open shard of this run continues, its
        half-written indexes and temporary files: removed, but for the open shards that
        `sealed(folder, name)` closes instead (after it, so that a half-written index of
        the same name is gone before a sealed shard's own is written)."""
        keep = {s.part for s in self.open.values()}
        parts: list[tuple[Path, str]] = []
        for folder in self.store.part_folders():
            mine = tuple(f"{dots}{prefix}{self.shard.index:05d}-" for dots in (".", "..")
                         for prefix in ("", f"{folder.name}-"))
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if (entry.name.startswith(mine) and entry.name.endswith((".part", fsio.TMP_SUFFIX))
                        and entry.is_file(follow_symlinks=False) and folder / entry.name not in keep):
                    if _shard_of_part(entry.name, folder.name) is None:
                        os.unlink(entry.path)
                    else:
                        parts.append((folder, entry.name))
        for folder, name in parts:
            if not sealed(folder, name):
                os.unlink(folder / name)

    def _sealer(self, state: Mapping[str, str], owns: Callable[[str], bool]) -> Callable[[Path, str], bool]:
        """Local: an open shard of this task's names that this run does not continue is
        closed (`_seal`) up to the longest length a journal of this task's index
        committed in it: this task's own, or another split's (after a --resplit the
        names are shared, and that split's journal holds the samples as done, so they
        are never fetched again). One that no journal points to (a run stopped before
        its first sync, a lost state dir) is removed: nothing counts its samples as
        done, so they are fetched again, and bytes no fsync covered are not trusted."""
        lengths: dict[tuple[str, int], int] | None = None

        def seal(folder: Path, part: str) -> bool:
            nonlocal lengths
            subset = folder.name
            found = _shard_of_part(part, subset)
            if found is None:
                return False
            if lengths is None:  # only now: most recoveries find no part to seal
                lengths = _journaled_lengths([state, *other_sink_states(self.state_dir, self.shard)])
            limit = lengths.get((subset, found[1]))
            return limit is not None and self._seal(folder, part[1 : -len(".part")], found[1], limit, owns)

        return seal

    def _seal(self, folder: Path, name: str, seq: int, limit: int, owns: Callable[[str], bool]) -> bool:
        """Closes the open shard `name` as a run that continued it would have: cut at
        its last whole sample within `limit` bytes, ended,
        indexed and published under its final name; this task's samples in it are
        adopted. False (to be removed) when it holds no sample to keep, or a closed
        shard already has its name."""
        subset = folder.name
        if limit == 0 or (folder / name).exists():
            return False
        fd = os.open(folder / part_name(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            end = min(limit, size)
            samples, length = whole_samples(lambda pos, n: os.pread(fd, n, pos), end)
            if not samples:
                return False
            if length < limit:
                self._warnings.append(
                    f"the open shard {folder / part_name(name)} holds {length} of the {limit} bytes a journal committed "
                    "in it: `oidownload verify` finds the samples that are not there, and the next run fetches them")
            os.ftruncate(fd, length)  # what follows was never journaled, or cannot be trusted
            os.pwrite(fd, _END, length)
            os.fsync(fd)
            entries = [_sealed_entry(lambda pos, n: os.pread(fd, n, pos), s) for s in samples]
        finally:
            os.close(fd)
        write_index(folder, name, index_doc(name, subset, length + len(_END), entries))
        self.store.publish(subset, name)
        self.touched.add(subset)
        held = {s.outcome.image_id: s.members for s in samples}
        self.committed += [o for o in self._adopt(subset, name, held) if owns(o.image_id)]
        self.next_seq[subset] = max(self.next_seq.get(subset, 0), seq + 1)
        if subset not in self.open:  # else the open shard's own state is the journal's to keep
            self._closed(subset, seq)
        return True

    def _listed_seqs(self, subset: str) -> list[int]:
        return [found[1] for name, _ in self.store.blobs.files(subset)
                if (found := shard_of_name(name, subset)) and found[0] == self.shard.index]

    def _seq_for(self, subset: str) -> int:
        # Never reuse the name of a closed shard, whatever the journal says: a state dir
        # may have been lost, or the run re-split.
        taken = self._listed_seqs(subset) if self.taken is None else self.taken.get(subset, [])
        return max([self.next_seq.get(subset, 0), *(t + 1 for t in taken)])

    def rebuild(self, owns: Callable[[str], bool]) -> Iterator[Outcome]:
        blobs = self.store.blobs
        for subset in blobs.folders(""):
            files = dict(blobs.files(subset))
            for name in sorted(files):
                if shard_of_name(name, subset) and name + INDEX_SUFFIX in files:
                    held = held_samples(blobs, f"{subset}/{name}", files[name])
                    yield from (o for o in self._adopt(subset, name, held) if owns(o.image_id))

    # -- appending ----------------------------------------------------------------------
    def start(self) -> None:
        if self.store.remote:
            self.uploader = asyncio.get_running_loop().create_task(self._upload_loop())

    def publish(self, outcome: Outcome, row: Row | None, release: Release) -> None:
        sample = sample_json(outcome, row)
        text = add_sample_fields(self.fields, outcome, sample)
        meta = json.dumps(sample, ensure_ascii=False).encode()
        fut = asyncio.get_running_loop().run_in_executor(self.io, self._append, outcome, meta, text)
        self.appending.add(fut)

        def appended(f: asyncio.Future[_Open | None]) -> None:
            self.appending.discard(f)
            release()
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.error = self.error or exc
            elif (closed := f.result()) is not None and self.store.remote:
                self.to_upload.append(closed)

        fut.add_done_callback(appended)

    def _append(self, outcome: Outcome, meta: bytes, text: bytes | None = None) -> _Open | None:
        """On the I/O thread: the staged members and the JSON, as one sample; returns
        the shard if this sample filled (and so closed) it."""
        subset = outcome.subset
        shard = self.open.get(subset)
        try:
            if shard is None:
                seq = self._seq_for(subset)
                name = shard_name(subset, self.shard.index, seq)
                shard = _Open(subset, seq, name, self.store.folder(subset))
                shard.fd = os.open(shard.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
                self.open[subset] = shard
                self.touched.add(subset)
            shard.samples.append(self._write_sample(shard, outcome, meta, text))
        finally:
            for staged in outcome.staged:
                try:
                    os.unlink(staged)
                except OSError:
                    pass
        outcome.location = f"{subset}/{shard.name}#{outcome.image_id}"
        outcome.staged = ()
        shard.uncommitted.append(outcome)
        if len(shard.samples) < self.shard_size:
            return None
        self._close(shard)
        return shard

    def _write_sample(self, shard: _Open, outcome: Outcome, meta: bytes, text: bytes | None = None) -> _Sample:
        mtime = int(time.time())
        members: dict[str, tuple[int, int]] = {}
        pos = shard.size
        try:
            for staged in outcome.staged:
                size = os.path.getsize(staged)
                os.pwrite(shard.fd, _header(f"{outcome.image_id}.{member_suffix(staged)}", size, mtime), pos)
                with open(staged, "rb") as src:
                    _copy(src.fileno(), shard.fd, pos + BLOCK, size)
                os.pwrite(shard.fd, bytes(-size % BLOCK), pos + BLOCK + size)
                members[member_suffix(staged)] = (pos + BLOCK, size)
                pos += BLOCK + _padded(size)
            if text is not None:  # before the JSON, which ends a sample when shards are scanned
                os.pwrite(shard.fd, _header(f"{outcome.image_id}.txt", len(text), mtime) + text
                          + bytes(-len(text) % BLOCK), pos)
                members["txt"] = (pos + BLOCK, len(text))
                pos += BLOCK + _padded(len(text))
            os.pwrite(shard.fd, _header(f"{outcome.image_id}.json", len(meta), mtime) + meta + bytes(-len(meta) % BLOCK), pos)
            members["json"] = (pos + BLOCK, len(meta))
            pos += BLOCK + _padded(len(meta))
        except OSError:
            os.ftruncate(shard.fd, shard.size)  # drop the torn sample: the shard stays whole
            raise
        shard.size = pos
        return _Sample(outcome, members)

    def _close(self, shard: _Open) -> None:
        """On the I/O thread: end-of-archive, fsync, the index beside it, then (local)
        the final names. Its samples are journaled at the next sync, with the state
        that says it is closed; a crash in between adopts it from its index."""
        os.pwrite(shard.fd, _END, shard.size)
        shard.size += len(_END)
        os.fsync(shard.fd)
        os.close(shard.fd)
        shard.fd = -1
        write_index(shard.folder, shard.name, index_doc(shard.name, shard.subset, shard.size,
                                                        [s.index_entry() for s in shard.samples]))
        del self.open[shard.subset]
        self.next_seq[shard.subset] = shard.seq + 1
        if self.store.remote:
            os.replace(shard.part, shard.folder / shard.name)  # closed, still only in the state dir
        else:
            self.store.publish(shard.subset, shard.name)
            self.committed += shard.uncommitted
            shard.uncommitted = []
            self._closed(shard.subset, shard.seq)
        shard.samples = []

    async def _upload_loop(self) -> None:
        """Remote: uploads closed shards one at a time, in order, so the journal's
        state only ever moves forward past shards that are in the bucket."""
        while True:
            while not self.to_upload:
                await asyncio.sleep(0.05)
            shard = self.to_upload[0]
            try:
                await self.store.publish_async(shard.subset, shard.name)
            except Exception as exc:
                self.error = self.error or exc
                return
            self.to_upload.pop(0)
            (shard.folder / shard.name).unlink(missing_ok=True)
            (shard.folder / index_part_name(shard.name)).unlink(missing_ok=True)
            self.committed += shard.uncommitted
            shard.uncommitted = []
            self._closed(shard.subset, shard.seq)

    # -- commit -------------------------------------------------------------------------
    def _sync_open(self) -> tuple[list[Outcome], dict[str, str | None]]:
        """On the I/O thread: the open shards' appended samples made durable (local)."""
        committed, self.committed = self.committed, []
        state, self.state = self.state, {}
        if not self.store.remote:
            for shard in self.open.values():
                if shard.size != shard.synced:
                    os.fsync(shard.fd)
                    shard.synced = shard.size
                    committed += shard.uncommitted
                    shard.uncommitted = []
                    state[f"tar:{shard.subset}"] = json.dumps({"subset": shard.subset, "seq": shard.seq, "offset": shard.synced})
        return committed, state

    async def sync(self) -> Synced:
        if self.appending:
            await asyncio.gather(*list(self.appending), return_exceptions=True)
        committed, state = await asyncio.get_running_loop().run_in_executor(self.io, self._sync_open)
        synced = Synced(committed, state)
        if self.error is not None:
            exc, self.error = self.error, None
            synced.error = exc if isinstance(exc, OutputError) else OutputError(
                f"cannot write the shards in {self.where}: {exc}")
        return synced

    async def close(self, *, complete: bool) -> Synced:
        loop = asyncio.get_running_loop()
        if self.appending:
            await asyncio.gather(*list(self.appending), return_exceptions=True)
        if complete:
            for shard in list(self.open.values()):
                await loop.run_in_executor(self.io, self._close, shard)
                if self.store.remote:
                    self.to_upload.append(shard)
            while self.to_upload and self.uploader is not None and not self.uploader.done():
                await asyncio.sleep(0.05)
        if self.uploader is not None:
            self.uploader.cancel()
            # A stopped run says so in its exit code; a finished one must not end 0.
            if self.to_upload and self.error is None and complete and not self.abandoned:
                self.error = OutputError(f"{len(self.to_upload)} closed shard(s) are not uploaded yet; "
                                         "they are uploaded when the same command runs again")
        try:
            synced = await self.sync()
        finally:
            for shard in self.open.values():
                if shard.fd >= 0:
                    os.close(shard.fd)
        try:
            if complete and not self.to_upload and not self.abandoned:
                if self.store.remote:
                    self.listing = loop.create_task(_in_daemon_thread(self._write_shard_lists))
                    await asyncio.wait([self.listing])
                    failed = None if self.listing.cancelled() else self.listing.exception()
                    if failed is not None and synced.error is None:
                        synced.error = failed if isinstance(failed, OutputError) else OutputError(
                            f"cannot write the shard lists in {self.where}: {failed}")
                else:
                    await loop.run_in_executor(self.io, self._write_shard_lists)
        finally:
            self.io.shutdown(wait=True)
            clear_staging(self.staging)
        return synced

    def abandon(self) -> int:
        # Closed shards not uploaded stay in the state dir: the next run uploads them
        # (recover) and journals their samples then.
        self.abandoned = True
        if self.uploader is not None:
            self.uploader.cancel()
        listing = self.listing is not None and not self.listing.done()
        if self.listing is not None:
            self.listing.cancel()
        return len(self.to_upload) + listing

    def _write_shard_lists(self) -> None:
        """shards.json of each subset this run wrote to (the wids convention), from the
        indexes of every closed shard there, whichever task wrote it."""
        blobs = self.store.blobs
        for subset in sorted(self.touched):
            shards = []
            for name, _ in blobs.files(subset):
                shard = name[: -len(INDEX_SUFFIX)]
                if name.endswith(INDEX_SUFFIX) and shard_of_name(shard, subset):
                    try:
                        index = read_index(blobs, subset, shard)
                    except BadIndex:
                        continue  # not one of ours (recovery said so): a loader could not use it either
                    shards.append({"url": shard, "nsamples": len(index["samples"])})
            doc = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": subset,
                   "shardlist": sorted(shards, key=lambda s: str(s["url"]))}
            self.store.put(f"{subset}/shards.json", json.dumps(doc, indent=1).encode())


async def _in_daemon_thread(fn: Callable[[], None]) -> None:
    """fn in a daemon thread, awaited. A cancel ends the wait; the thread, blocked in a
    request to a store that stopped answering, cannot hold the process's exit as an
    executor's thread would (those are joined at exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def run() -> None:
        try:
            fn()
            outcome: BaseException | None = None
        except BaseException as exc:  # handed to the awaiting task
            outcome = exc
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:
            pass  # the loop is gone: nobody waits any more

    threading.Thread(target=run, daemon=True, name="shard-lists").start()
    await fut


def _copy(src: int, dst: int, offset: int, size: int) -> None:
    """size bytes of src into dst at offset, in the kernel where it can."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset_dst=offset + done)
        except OSError:
            n = 0
        if n == 0:
            data = os.pread(src, min(1 << 20, size - done), done)
            if not data:
                raise OSError(f"the staged file ended after {done} of {size} bytes")
            n = os.pwrite(dst, data, offset + done)
        done += n


def whole_samples(read_at: Callable[[int, int], bytes], end: int | None = None) -> tuple[list[_Sample], int]:
    """The samples of a tar that its own headers show whole within its first `end`
    bytes (or up to its end-of-archive), and the length they end at: an open shard
    has no index, and a closed one's index is only a claim. A sample is whole once
    its JSON, the member written last, is; a header that does not parse (garbage,
    zeros), a member that is not a file or that runs past `end`, or a sample cut
    short by another ends the scan: nothing after it can be trusted."""
    samples: list[_Sample] = []
    pos = length = 0
    current: _Sample | None = None
    while end is None or pos + BLOCK <= end:
        head = read_at(pos, BLOCK)
        if len(head) < BLOCK:
            break
        try:
            info = tarfile.TarInfo.frombuf(head, "utf-8", "strict")
        except (tarfile.HeaderError, ValueError):
            break
        after = pos + BLOCK + _padded(info.size)
        key, _, suffix = info.name.partition(".")
        if not info.isreg() or not suffix or (end is not None and after > end):
            break
        if current is None:
            current = _Sample(Outcome(key, Status.OK), {})
        elif current.outcome.image_id != key:
            break
        current.members[suffix] = (pos + BLOCK, info.size)
        pos = after
        if suffix == "json":
            samples.append(current)
            current, length = None, pos
    return samples, length


def _shard_of_part(part: str, subset: str) -> tuple[int, int] | None:
    """(task, seq) of an open shard's part name (`.<shard>.part`); None for anything else."""
    if not (part.startswith(".") and part.endswith(".part")):
        return None
    return shard_of_name(part[1 : -len(".part")], subset)


def _sealed_entry(read_at: Callable[[int, int], bytes], sample: _Sample) -> dict[str, Any]:
    """The index entry of a sample of a shard sealed at recovery, from the sample
    itself: the run that wrote it is gone, so its JSON member says what was written and
    its image member gives the size and hash the worker's outcome had. A JSON that does
    not parse leaves those fields empty; adoption then decides whether it counts."""
    members = sample.members
    meta: Any
    try:
        meta = json.loads(read_at(*members["json"]))
    except ValueError:  # not JSON, or not UTF-8
        meta = None
    if not isinstance(meta, dict):
        meta = {}
    suffix = image_suffix(members)
    data = read_at(*members[suffix]) if suffix is not None else b""
    return {"key": sample.outcome.image_id, "members": members, "width": meta.get("width"),
            "height": meta.get("height"), "ext": suffix or "", "source": meta.get("source"),
            "verified": bool(meta.get("verified")), "out_bytes": len(data),
            "orientation": meta.get("orientation") or 1, "crop": meta.get("crop"),
            "sha256": hashlib.sha256(data).hexdigest() if suffix is not None else None}


def _bucket_reader(blobs: Blobs, key: str) -> Callable[[int, int], bytes]:
    """Reads of a remote blob for a header scan, through a window of a few MB, so a
    shard's headers cost a few requests, not one each."""
    start, data = 0, b""

    def read_at(pos: int, n: int) -> bytes:
        nonlocal start, data
        if not (start <= pos and pos + n <= start + len(data)):
            start, data = pos, blobs.read_range(key, pos, max(n, 8 << 20))
        return data[pos - start : pos - start + n]

    return read_at


def _held_fd(fd: int) -> dict[str, dict[str, tuple[int, int]]]:
    samples, _ = whole_samples(lambda pos, n: os.pread(fd, n, pos), os.fstat(fd).st_size)
    return {s.outcome.image_id: s.members for s in samples}


def _held_file(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _held_fd(fd)
    finally:
        os.close(fd)


def held_samples(blobs: Blobs, key: str, size: int | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    """ImageID → members of the whole samples a shard's headers show."""
    from oidownload.sinks.files import LocalBlobs

    if isinstance(blobs, LocalBlobs):
        fd = blobs.open_read(key)  # once: a rebuild scans millions of headers
        try:
            return _held_fd(fd)
        finally:
            os.close(fd)
    samples, _ = whole_samples(_bucket_reader(blobs, key), size)
    return {s.outcome.image_id: s.members for s in samples}


class BadIndex(ValueError):
    """A shard index that is not one (not JSON, another kind of document)."""


def parse_index(data: bytes, name: str) -> dict[str, Any]:
    """A shard index's document; BadIndex naming it when it is not one."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # a JSONDecodeError, or bytes that are not UTF-8
        raise BadIndex(f"{name} is not a shard index: it is not JSON ({clean_text(str(exc), 100)})") from None
    if not isinstance(doc, dict) or doc.get("kind") != INDEX_KIND or not isinstance(doc.get("samples"), list):
        raise BadIndex(f"{name} is not an oidownload shard index")
    return doc


def read_index(blobs: Blobs, subset: str, shard: str) -> dict[str, Any]:
    key = f"{subset}/{shard}{INDEX_SUFFIX}"
    return parse_index(blobs.read(key), blobs.describe(key))


def _adopted(s: Any, subset: str, shard: str) -> tuple[Outcome, dict[str, tuple[int, int]]]:
    """An index entry as an ok outcome and its members; ValueError (or TypeError,
    KeyError...) when it is not a well-formed sample of ours."""
    image_id = s["key"]
    if not isinstance(image_id, str) or not ID_RE.fullmatch(image_id):
        raise ValueError(f"not an ImageID: {image_id!r}")
    members = {str(k): (int(v[0]), int(v[1])) for k, v in s["members"].items()}
    width, height, crop = s.get("width"), s.get("height"), s.get("crop")
    if not all(v is None or type(v) is int for v in (width, height)):
        raise ValueError("width and height are not integers")
    return Outcome(
        image_id, Status.OK, "found in a closed shard", subset=subset, ext=str(s.get("ext") or ""),
        width=width, height=height, out_bytes=int(s.get("out_bytes") or 0),
        verified=bool(s.get("verified")), orientation=int(s.get("orientation") or 1),
        crop=_crop(crop) if crop else None, location=f"{subset}/{shard}#{image_id}",
        sha256=sha if isinstance(sha := s.get("sha256"), str) and SHA256_RE.fullmatch(sha) else None,
    ), members


def _crop(crop: Any) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in crop)
    return x0, y0, x1, y1


def adopt(data: bytes, name: str, held: Mapping[str, Mapping[str, tuple[int, int]]], subset: str, shard: str,
          warnings: list[str]) -> list[Outcome]:
    """Ok outcomes for the samples of a closed shard that its index (`data`, read from
    `name`) names and that the shard's own headers (`held`) show whole at the same
    offsets: an index alone proves nothing. What is not adopted is said in `warnings`,
    and fetched again."""
    try:
        entries = parse_index(data, name)["samples"]
    except BadIndex as exc:
        warnings.append(f"{exc}: the samples of its shard are not taken as done, and are fetched again")
        return []
    found = []
    for s in entries:
        try:
            outcome, members = _adopted(s, subset, shard)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError):
            continue
        if held.get(outcome.image_id) == members:
            found.append(outcome)
    if len(found) < len(entries):
        warnings.append(f"{len(entries) - len(found)} of the {len(entries)} sample(s) that {name} names are not "
                        "taken as done (a key that is not an ImageID, or not whole at that place in the shard "
                        "itself): they are fetched again")
    return found


class TarReader:
    """Images by `<subset>/<shard>.tar#<ImageID>`: the index gives the member's offset,
    so one ranged read fetches it. A shard still open (its download stopped before
    closing it) has no index yet: its headers are read instead."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        # shard path → (the blob to read: the shard or its open part, its samples)
        self._indexes: dict[str, tuple[str, dict[str, dict[str, tuple[int, int]]]]] = {}

    def _sample(self, location: str) -> tuple[str, dict[str, tuple[int, int]]]:
        """(the blob that holds it, its members: suffix → (offset, size))."""
        shard_path, _, image_id = location.partition("#")
        known = self._indexes.get(shard_path)
        if known is None:
            if len(self._indexes) > 64:
                self._indexes.clear()
            subset, _, shard = shard_path.rpartition("/")
            known = self._indexes[shard_path] = self._load(subset, shard)
        path, samples = known
        members = samples.get(image_id)
        if members is None:
            raise FileNotFoundError(f"{image_id} is not in {self.blobs.describe(path)}")
        return path, members

    def _load(self, subset: str, shard: str) -> tuple[str, dict[str, dict[str, tuple[int, int]]]]:
        try:
            index = read_index(self.blobs, subset, shard)
        except (FileNotFoundError, BadIndex):
            # Still open, or a closed shard that lost its index: its own headers say it all.
            blob = next((b for b in (f"{subset}/{part_name(shard)}", f"{subset}/{shard}") if self.blobs.exists(b)), None)
            if blob is None:
                raise
            return blob, held_samples(self.blobs, blob)
        return f"{subset}/{shard}", {str(s["key"]): {k: (int(v[0]), int(v[1])) for k, v in s["members"].items()}
                                     for s in index["samples"]}

    def _member(self, path: str, members: dict[str, tuple[int, int]], suffix: str) -> bytes:
        offset, size = members[suffix]
        data = self.blobs.read_range(path, offset, size)
        if len(data) != size:
            raise OSError(f"{self.blobs.describe(path)} is shorter than its index says")
        return data

    def read(self, location: str) -> bytes:
        path, members = self._sample(location)
        suffix = image_suffix(members)
        if suffix is None:
            raise FileNotFoundError(f"{self.describe(location)} has no image member")
        return self._member(path, members, suffix)

    def original(self, location: str) -> Original | None:
        path, members = self._sample(location)
        suffix = next((k for k in members if k.startswith("original.")), None)
        if suffix is None:
            return None
        md5: str | None = None
        if "json" in members:
            try:
                meta = json.loads(self._member(path, members, "json"))
                md5 = str(meta["OriginalMD5"]) if isinstance(meta, dict) and meta.get("OriginalMD5") else None
            except ValueError:
                pass  # the sample's JSON is damaged: only the input list can tell
        return Original(self._member(path, members, suffix), md5)

    def member(self, location: str, suffix: str) -> bytes:
        path, members = self._sample(location)
        if suffix not in members:
            raise FileNotFoundError(f"{self.describe(location)} has no member {suffix}")
        return self._member(path, members, suffix)

    def local_path(self, location: str) -> Path | None:
        return None

    def describe(self, location: str) -> str:
        path, _, image_id = location.partition("#")
        return f"{self.blobs.describe(path)}#{image_id}"


# -- rewriting a closed shard (`annotations --format webdataset`) ----------------------------------

END_OF_ARCHIVE = _END


def member_block(name: str, data: bytes, mtime: int) -> bytes:
    """One whole member, as the sink writes it: its header, its bytes, the padding."""
    return _header(name, len(data), mtime) + data + bytes(-len(data) % BLOCK)


def member_end(offset: int, size: int) -> int:
    """Where the member whose data starts at `offset` (`size` bytes) ends, padding included."""
    return offset + _padded(size)


def member_mtime(read_at: Callable[[int, int], bytes], offset: int) -> int:
    """The mtime in the header of the member whose data starts at `offset`."""
    return int(tarfile.TarInfo.frombuf(read_at(offset - BLOCK, BLOCK), "utf-8", "strict").mtime)


def copy_range(src: int, dst: int, src_offset: int, dst_offset: int, size: int) -> None:
    """size bytes of src from src_offset into dst at dst_offset, in the kernel where it can."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset_src=src_offset + done, offset_dst=dst_offset + done)
        except OSError:
            n = 0
        if n == 0:
            data = os.pread(src, min(1 << 20, size - done), src_offset + done)
            if not data:
                raise OSError(f"the shard ended after {done} of the {size} bytes to copy")
            n = os.pwrite(dst, data, dst_offset + done)
        done += n
