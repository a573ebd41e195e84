"""What every exporter shares: the `Exporter` protocol, the context it is started with,
the per-image item it is given, its result, and the helpers two or more formats use.

An export is start(context) → add(item) for every written image, in ImageID order,
with its boxes as records in the written frame → finish(). Formats that number the
classes (COCO, YOLO, HF) need every class before the first line, so their add()
collects and finish() writes, as they did before the seam; VOC writes in add().
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from oidownload.core.errors import InputError
from oidownload.core.fsio import Tree
from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.attribution import Credit, credits
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.kinds import AnnotationKind, Box, Narrative, Point, Relationship
from oidownload.dataset.masks import FoundMask
from oidownload.dataset.relationships import RelationshipQuery
from oidownload.sinks import Reader
from oidownload.state.reader import StateDir, Written

# Ultralytics' and VOC's names for the splits; other subsets keep their own name.
SPLITS = {"train": "train", "validation": "val", "test": "test"}


@dataclass
class ExportResult:
    dest: Path
    images: int = 0
    boxes: int = 0
    labels: int = 0
    captions: int = 0  # narratives (issue 23)
    dropped: int = 0  # boxes a crop cut away entirely
    relationships: int = 0  # relationships and points (issue 23) written
    points: int = 0
    masks: int = 0  # mask instances written (issue 22)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth telling the user


@dataclass(frozen=True, slots=True)
class Annotated:
    """One written image and its records, in the written frame."""

    image: Written
    boxes: tuple[Box, ...] = ()
    narratives: tuple[Narrative, ...] = ()  # narratives (issue 23): for exporters whose kinds hold NARRATIVES
    # relationships and points (issue 23): given to exporters whose `kinds` name them
    relationships: tuple[Relationship, ...] = ()
    points: tuple[Point, ...] = ()
    masks: tuple[FoundMask, ...] = ()  # with their pixels, for a format whose kinds hold SEGMENTATION


@dataclass
class ExportContext:
    """What an exporter is started with: the output, the tree it writes in (the dest,
    or OUT itself for a format written beside the images), and the choices."""

    fmt: str
    state: StateDir
    images: dict[str, Written]
    tables: list[AnnotationTable]
    tree: Tree
    result: ExportResult
    names: ClassDescriptions | None = None
    classes: frozenset[str] | None = None
    image_lists: list[Path] | None = None
    # relationships and points (issue 23): the relationships to keep (None: all)
    relationships: Sequence[RelationshipQuery] | None = None

    def credits(self) -> dict[str, Credit]:
        """Each image's credit, from its input row."""
        return dict(credits(self.state, self.image_lists, self.images))

    def name(self, mid: str) -> str:
        return self.names.name(mid) if self.names else mid

    def local_files(self) -> Reader:
        """The output's reader, when its images are local files that an export can point at."""
        reader = self.state.reader()
        if reader.local_path(next(iter(self.images.values())).location) is None:
            where, kind = self.state.where()
            raise InputError(
                f"--format {self.fmt} points at image files, but {where} holds {kind.value} output "
                f"{'in a bucket' if '://' in where else 'shards'}: download with --output-format files into a "
                "local folder for this format (webdataset shards load as they are with webdataset or wids)")
        return reader


class Exporter(Protocol):
    """One export format. `kinds`: the records add() is given (boxes, for now); none
    for a format that copies rows (csv) or needs no annotations (attribution), whose
    add() does nothing and whose work is in finish()."""

    name: ClassVar[str]  # its --format
    kinds: ClassVar[frozenset[AnnotationKind[Any]]]
    needs_annotations: ClassVar[bool]  # refused without --annotations or --db
    beside_images: ClassVar[bool]  # writes into OUT next to the images, not into -d/--dest

    def start(self, ctx: ExportContext) -> None: ...
    def add(self, item: Annotated) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None:
        """Instead of finish, after a failure: leave nothing half-built behind."""


class WholeExport:
    """The part of an exporter that takes no records and does its work in finish()
    (csv copies rows, attribution needs none): start keeps the context, add and abort
    have nothing to do."""

    ctx: ExportContext

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx

    def add(self, item: Annotated) -> None:
        pass

    def abort(self) -> None:
        pass


def categories(boxes: Iterable[Box], mids: frozenset[str] | None, also: Iterable[str] = ()) -> list[str]:
    """The classes, in index order: the chosen ones, or every one the boxes (and the
    labels `also`: of masks) have."""
    return sorted(mids) if mids is not None else sorted({b.label for b in boxes} | set(also))


def swap_in(tree: Tree, new: str, final: str) -> None:
    """Replaces the folder `final` in tree (if any) by `new`, a sibling; the old one is
    removed without following its links, and a symlink at `final` is removed itself."""
    old = None
    st = tree.lstat(final)
    if st is not None and stat.S_ISDIR(st.st_mode):
        old = tree.mkdtemp(f".{final}.old.")
        tree.replace(final, f"{old}/{final}")
    elif st is not None:
        tree.unlink(final)
    tree.replace(new, final)
    if old is not None:
        with contextlib.suppress(OSError):
            tree.rmtree(old)


@dataclass
class LinkedTree:
    """A folder tree built beside its final name and swapped in whole (swap_in), whose
    images are relative symlinks to the downloaded files: no copies, and a file a later
    download replaces is followed. All through the folder's descriptor, so nothing is
    written or deleted through a symlink; nothing of an earlier export is left over."""

    tree: Tree
    final: str  # its name in tree: yolo, VOCdevkit
    reader: Reader
    new: Tree | None = None
    _tmp: str = ""
    _made: set[str] = field(default_factory=set)

    def open(self) -> Tree:
        self._tmp = self.tree.mkdtemp(f".{self.final}.")
        self.new = self.tree.sub(self._tmp, create=False)
        return self.new

    def folder(self, rel: str) -> None:
        if rel not in self._made:
            assert self.new is not None
            self.new.mkdirs(rel)
            self._made.add(rel)

    def link(self, image: Written, rel: str) -> None:
        """A link at rel (inside the new tree) to the downloaded file of image."""
        assert self.new is not None
        target = self.reader.local_path(image.location)
        assert target is not None  # ExportContext.local_files checked the output
        self.folder(os.path.dirname(rel))
        self.new.symlink(os.path.relpath(target, self.path / os.path.dirname(rel)), rel)

    @property
    def path(self) -> Path:
        return self.tree.path / self.final

    def commit(self) -> None:
        assert self.new is not None
        self.new.close()
        swap_in(self.tree, self._tmp, self.final)

    def abort(self) -> None:
        if self.new is not None:
            self.new.close()
        with contextlib.suppress(OSError):
            self.tree.rmtree(self._tmp)
