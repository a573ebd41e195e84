"""The output seam: the only place that knows what "written" means.

A sink gives the pool workers a picklable `Target`. A worker hands it a finished
image (and, with --keep-original, the verified original) and gets back the image's
`location` plus any staged files the sink must still publish. Image bytes never
cross the process pipe. In the main process the sink publishes what was staged and
says, at each `sync`, which outcomes are committed: only those reach the journal.
Recovery after a crash, and rebuilding a lost journal from the output, are the
sink's too. Readers (`status`, `report`, `annotations`, `verify`, `gallery`) open an
image by its location through `open_reader`, never by rebuilding a path.

    sinks/files.py      OUT/<subset>/<abc>/<ImageID>.<ext>; published in the worker
    sinks/staging.py    the worker side of the sinks below: whole files in the state dir
    sinks/tar.py        WebDataset tar shards; a sample commits when its bytes are safe
    sinks/s3.py         s3://bucket/prefix, for either layout; commit when the upload succeeded
    sinks/stores.py     the stores s3.py reaches: s3://, az://, gs://, one entry each
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from oidownload.core.config import OutputConfig, OutputKind
from oidownload.core.errors import OidownloadError
from oidownload.core.fsio import Buffer
from oidownload.core.records import Outcome, Row
from oidownload.core.shard import Shard

# (member suffix, bytes): "jpg" is the image; "original.jpg" the kept original.
Member = tuple[str, Buffer | memoryview]
# Called once a staged outcome no longer needs its share of the byte budget.
Release = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Placed:
    location: str
    staged: tuple[str, ...] = ()


class Target(Protocol):
    """Runs in the pool workers: must be picklable and cheap to call per image."""

    def place(self, subset: str, image_id: str, members: Sequence[Member]) -> Placed: ...


@dataclass(frozen=True, slots=True)
class Unproven:
    """A shard the journal says holds samples, found by recovery to hold only `kept`
    of them (cut short, deleted, garbled): every ok row located in it (`shard` is the
    location's "subset/name.tar" part) whose ImageID is not kept becomes retryable.
    `why` names the file and what was wrong with it, for the warning and the rows."""

    shard: str
    kept: frozenset[str]
    why: str


@dataclass(slots=True)
class Synced:
    """What a sync made safe: the outcomes to journal now, and the sink's own state
    (for example a shard's durable length) to store in the same transaction. A state
    value of None deletes the key."""

    committed: list[Outcome] = field(default_factory=list)
    state: dict[str, str | None] = field(default_factory=dict)
    # A failure that must stop the run (the bucket went away, the disk failed); what
    # was committed before it is still journaled.
    error: OidownloadError | None = None
    # Recovery only: shards found holding less than the journal says.
    unproven: list[Unproven] = field(default_factory=list)


class Sink:
    """The main-process side of an output. The base is the sink that needs nothing
    after the worker: every outcome is committed when it is recorded."""

    kind: OutputKind = OutputKind.FILES
    target: Target

    def describe(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Before any download: create or check the output, raising OutputError (with
        the reason and what to do) when it cannot be written."""

    def recover(self, state: Mapping[str, str], owns: Callable[[str], bool], crashed: bool) -> Synced:
        """At start, with the state the journal kept for this sink; `crashed` when the
        last run of this task did not end cleanly. Only this task's leftovers are
        touched (`owns` tests an ImageID). Returns what recovery found committed (a
        shard closed after the journal last heard of it), journaled before the run
        decides what is left to do."""
        return Synced()

    def rebuild(self, owns: Callable[[str], bool]) -> Iterator[Outcome]:
        """Outcomes for the images the output already holds, for a journal that was
        lost (a fresh state dir next to a used output)."""
        return iter(())

    def release(self) -> None:
        """End of the process's use of the output, however the run ended: what
        `recover` claimed (a lock) is given back."""

    def warnings(self) -> list[str]:
        """What `recover` or `rebuild` found wrong in the output and did not trust (an
        unreadable index, say), each said once: the caller logs them."""
        return []

    def publish(self, outcome: Outcome, row: Row | None, release: Release) -> None:
        """Takes an ok outcome whose files are staged; it is committed by a later sync.
        `release` gives back the outcome's bytes in the budget once they are out of
        the way (appended, uploaded)."""
        raise NotImplementedError(f"the {self.kind} output stages nothing")

    def start(self) -> None:
        """Called in the running event loop, before the first publish."""

    async def sync(self) -> Synced:
        return Synced()

    async def close(self, *, complete: bool) -> Synced:
        """End of the run. `complete` is False when it stopped early (a signal, a fatal
        error): whatever is open may stay open for the next run to continue."""
        return await self.sync()

    def abandon(self) -> int:
        """The run's time is up (its grace, --max-runtime, a second signal) while
        `close` waits: stop waiting for what is still under way (uploads), and say how
        much that was. What it did not confirm is not committed, so the next run does
        it again."""
        return 0


class Blobs(Protocol):
    """Named bytes below an output's root, local or remote, for reading back. Keys
    use '/' and are relative to the root; nothing outside it is reachable."""

    def read(self, key: str) -> bytes:
        """OSError (FileNotFoundError when absent) when it cannot be read."""
        ...

    def read_range(self, key: str, offset: int, size: int) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def files(self, folder: str) -> Iterator[tuple[str, int]]:
        """(name, size) of the files directly in a folder ('' is the root)."""
        ...

    def folders(self, folder: str) -> list[str]: ...

    def walk(self, folder: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every file below a folder, at any depth."""
        ...

    def describe(self, key: str) -> str:
        """A key as a user can find it: a full path or URI."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The key as a file on this machine, or None when it is not one (a bucket)."""
        ...


@dataclass(frozen=True, slots=True)
class Original:
    """A verified original kept beside its image (--keep-original), with the
    OriginalMD5 the output stored with it (None: only the input list has it)."""

    data: bytes
    md5: str | None


class Reader(Protocol):
    def read(self, location: str) -> bytes:
        """The image bytes at a location; OSError (FileNotFoundError when absent)."""
        ...

    def original(self, location: str) -> Original | None:
        """The kept original of the image at a location; None when none is there."""
        ...

    def local_path(self, location: str) -> Path | None:
        """The image as a file that other programs can open or link to; None when the
        output holds it otherwise (inside a shard, in a bucket)."""
        ...

    def describe(self, location: str) -> str: ...

    # Masks (issue 22): another member of the image's sample, by its suffix.
    def member(self, location: str, suffix: str) -> bytes:
        """The bytes of the image's member `suffix` (a mask: files.mask_suffix(box_id)),
        wherever the layout keeps it; FileNotFoundError when the output has none."""
        ...


def is_remote(out: str) -> bool:
    return "://" in out


# Where an output lives: this machine's filesystem, or an object store (which one, by
# the URI's scheme, is stores.py's registry). With the layout, the two keys of a sink.
LOCAL = "local"
STORE = "store"


def where(out: str) -> str:
    return STORE if is_remote(out) else LOCAL


# (output, shard, the run's --grace or None: it sizes an object store's timeouts)
SinkFactory = Callable[[OutputConfig, Shard, float | None], Sink]


def _local_files(output: OutputConfig, shard: Shard, grace: float | None) -> Sink:
    from oidownload.sinks.files import FilesSink

    return FilesSink(output, shard)


def _local_shards(output: OutputConfig, shard: Shard, grace: float | None) -> Sink:
    from oidownload.sinks.tar import LocalShards, TarSink

    return TarSink(output, shard, LocalShards(Path(output.out)), output.out)


def _store_files(output: OutputConfig, shard: Shard, grace: float | None) -> Sink:
    from oidownload.sinks.s3 import S3Blobs, S3FilesSink, parse_uri

    return S3FilesSink(output, shard, S3Blobs(parse_uri(output.out), grace=grace))


def _store_shards(output: OutputConfig, shard: Shard, grace: float | None) -> Sink:
    from oidownload.sinks.s3 import S3Blobs, S3Shards, parse_uri
    from oidownload.sinks.tar import TarSink

    uri = parse_uri(output.out)
    blobs = S3Blobs(uri, grace=grace)
    return TarSink(output, shard, S3Shards(blobs, output.state_dir / "shards" / shard.tag), str(uri))


SINKS: dict[tuple[str, OutputKind], SinkFactory] = {
    (LOCAL, OutputKind.FILES): _local_files,
    (LOCAL, OutputKind.WEBDATASET): _local_shards,
    (STORE, OutputKind.FILES): _store_files,
    (STORE, OutputKind.WEBDATASET): _store_shards,
}


def _local_blobs(out: str, grace: float | None = None) -> Blobs:
    from oidownload.sinks.files import LocalBlobs

    return LocalBlobs(out)


def _store_blobs(out: str, grace: float | None = None) -> Blobs:
    from oidownload.sinks.s3 import S3Blobs, parse_uri

    return S3Blobs(parse_uri(out), grace=grace)


def _tar_reader(blobs: Blobs) -> Reader:
    from oidownload.sinks.tar import TarReader

    return TarReader(blobs)


# Reading back, the two axes stay apart: where the bytes are (blobs), and how the
# layout finds an image in them (a reader over any blobs).
BLOBS: dict[str, Callable[[str, float | None], Blobs]] = {LOCAL: _local_blobs, STORE: _store_blobs}
READERS: dict[OutputKind, Callable[[Blobs], Reader]] = {
    OutputKind.FILES: lambda blobs: FileReader(blobs),
    OutputKind.WEBDATASET: _tar_reader,
}


def open_blobs(out: str, grace: float | None = None) -> Blobs:
    """What OUT holds, to read back; `grace` bounds each request of a store (a download's
    own --grace), so a store that stops answering cannot hold a command's end."""
    return BLOBS[where(out)](out, grace)


def open_sink(output: OutputConfig, shard: Shard, grace: float | None = None) -> Sink:
    """The sink for `-o` and `--output-format`: a new kind of output is a new module and
    an entry in SINKS, not a branch in the engine."""
    return SINKS[where(output.out), output.kind](output, shard, grace)


def open_reader(out: str, kind: OutputKind = OutputKind.FILES) -> Reader:
    return READERS[kind](open_blobs(out))


class FileReader:
    """One object per image: the location is its key."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs

    def read(self, location: str) -> bytes:
        return self.blobs.read(location)

    def original(self, location: str) -> Original | None:
        from oidownload.sinks.files import original_place

        folder, image_id = original_place(location)
        try:  # nearly every original is a JPEG: one read, no listing
            return Original(self.blobs.read(f"{folder}/{image_id}.jpg"), None)
        except FileNotFoundError:
            pass
        for name, _ in self.blobs.files(folder):
            if name.startswith(f"{image_id}."):
                return Original(self.blobs.read(f"{folder}/{name}"), None)
        return None

    def local_path(self, location: str) -> Path | None:
        return self.blobs.local_path(location)

    def describe(self, location: str) -> str:
        return self.blobs.describe(location)

    def member(self, location: str, suffix: str) -> bytes:
        from oidownload.sinks.files import member_key

        return self.blobs.read(member_key(location, suffix))
