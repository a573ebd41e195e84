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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..body import Buffer
from ..config import OutputConfig, OutputKind
from ..errors import ConfigError
from ..records import Outcome, Row
from ..shard import Shard

# (member suffix, bytes): "jpg" is the image; "original.jpg" the kept original.
Member = tuple[str, Buffer | memoryview]


@dataclass(frozen=True, slots=True)
class Placed:
    location: str
    staged: tuple[str, ...] = ()


class Target(Protocol):
    """Runs in the pool workers: must be picklable and cheap to call per image."""

    def place(self, subset: str, image_id: str, members: Sequence[Member]) -> Placed: ...


@dataclass(slots=True)
class Synced:
    """What a sync made safe: the outcomes to journal now, and the sink's own state
    (for example a shard's durable length) to store in the same transaction. A state
    value of None deletes the key."""

    committed: list[Outcome] = field(default_factory=list)
    state: dict[str, str | None] = field(default_factory=dict)


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

    def recover(self, state: Mapping[str, str], owns: Callable[[str], bool], crashed: bool) -> None:
        """At start, with the state the journal kept for this sink; `crashed` when the
        last run of this task did not end cleanly. Only this task's leftovers are
        touched (`owns` tests an ImageID)."""

    def rebuild(self, owns: Callable[[str], bool]) -> Iterator[Outcome]:
        """Outcomes for the images the output already holds, for a journal that was
        lost (a fresh state dir next to a used output)."""
        return iter(())

    def publish(self, outcome: Outcome, row: Row | None) -> None:
        """Takes an ok outcome whose files are staged; it is committed by a later sync."""
        raise NotImplementedError(f"the {self.kind} output stages nothing")

    async def sync(self) -> Synced:
        return Synced()

    async def close(self, *, complete: bool) -> Synced:
        """End of the run. `complete` is False when it stopped early (a signal, a fatal
        error): whatever is open may stay open for the next run to continue."""
        return await self.sync()


class Reader(Protocol):
    def read(self, location: str) -> bytes:
        """The bytes at a location; OSError (FileNotFoundError when absent) otherwise."""
        ...

    def describe(self, location: str) -> str:
        """A location as a user can find it: a full path or URI."""
        ...


def is_remote(out: str) -> bool:
    return "://" in out


def open_sink(output: OutputConfig, shard: Shard) -> Sink:
    if is_remote(output.out):
        raise ConfigError(f"-o {output.out}: only local folders are supported as output")
    from .files import FilesSink

    return FilesSink(output, shard)


def open_reader(out: str, kind: OutputKind = OutputKind.FILES) -> Reader:
    from .files import FilesReader

    return FilesReader(out)
