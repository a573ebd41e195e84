"""The `files` output, one file per image (the default):

    OUT/<subset>/<first 3 hex of ImageID>/<ImageID>.<ext>     4,096 folders per subset
    OUT/original/<subset>/<abc>/<ImageID>.<ext>               --keep-original

The pool worker publishes each file itself (a temporary name, then os.replace), so
an outcome is committed as soon as it is recorded. Folders below OUT are entered
without following symlinks. After a crash, this task's leftover temporary files are
removed; a lost journal is rebuilt by listing the files.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from oidownload.core import fsio
from oidownload.core.config import OutputConfig
from oidownload.core.errors import OutputError
from oidownload.core.ids import SUBSET_RE, WRITTEN_ID, WRITTEN_ID_RE
from oidownload.core.records import Outcome, Status
from oidownload.core.shard import Shard
from oidownload.sinks import Member, Placed, Sink, Synced

ORIGINAL_DIR = "original"
MASKS_DIR = "masks"
_BOX_ID_RE = re.compile(r"[0-9a-f]{1,32}")
_FILE_RE = re.compile(rf"({WRITTEN_ID})\.([a-z0-9]{{1,5}})")
# Temporary files of this sink: `.<ImageID>.<ext>.<random or pid>.oidtmp`.
_TMP_RE = re.compile(rf"\.({WRITTEN_ID})\.[^/]*" + re.escape(fsio.TMP_SUFFIX))


def check_id(image_id: str) -> str:
    """The id itself if it is 16 lower-case hex digits; anything else could name a
    path outside OUT, so it raises ValueError rather than being used."""
    if not WRITTEN_ID_RE.fullmatch(image_id):
        raise ValueError(f"not a 16-hex-digit ImageID: {image_id[:40]!r}")
    return image_id


def member_path(subset: str, image_id: str, suffix: str) -> tuple[tuple[str, ...], str]:
    """(folders, file name) of a member, relative to OUT: the image (`jpg`), its kept
    original (`original.jpg`), or one of its masks (`<BoxID>.mask.png`, in OUT/masks/,
    named `<ImageID>_<BoxID>.png` as Open Images names them)."""
    check_id(image_id)
    kind, _, ext = suffix.rpartition(".")
    folders: tuple[str, ...] = (subset, image_id[:3])
    if kind == "original":
        folders = (ORIGINAL_DIR, *folders)
    elif kind.endswith(".mask"):
        return (MASKS_DIR, *folders), f"{image_id}_{check_box_id(kind.removesuffix('.mask'))}.{ext}"
    elif kind.endswith(".mask.original"):  # masks (issue 22): --keep-original's mask as fetched
        box_id = check_box_id(kind.removesuffix(".mask.original"))
        return (ORIGINAL_DIR, MASKS_DIR, *folders), f"{image_id}_{box_id}.{ext}"
    return folders, f"{image_id}.{ext}"


def mask_location(image_location: str, subset: str, image_id: str, box_id: str) -> str:
    """Where the output holds a mask written with its image (masks, issue 22): in a shard,
    `<subset>/<shard>.tar#<ImageID>.<BoxID>.mask.png` (the image's location + the member's
    suffix: the tar member's name after the `#`); elsewhere its path under OUT."""
    if "#" in image_location:
        return f"{image_location}.{mask_suffix(box_id)}"
    folders, name = member_path(subset, image_id, mask_suffix(box_id))
    return "/".join((*folders, name))


def mask_suffix(box_id: str) -> str:
    """The member suffix of a mask: `<ImageID>.<BoxID>.mask.png` in a shard, and
    OUT/masks/<subset>/<abc>/<ImageID>_<BoxID>.png as a file (member_path)."""
    return f"{check_box_id(box_id)}.mask.png"


def check_box_id(box_id: str) -> str:
    """A BoxID as Open Images writes them (hex digits); anything else could name a path
    or a member outside its sample, so it raises ValueError."""
    if not _BOX_ID_RE.fullmatch(box_id):
        raise ValueError(f"not a BoxID: {box_id[:40]!r}")
    return box_id


def member_key(location: str, suffix: str) -> str:
    """The path below OUT of another member of the image at `location` (a mask)."""
    subset, _, rest = location.partition("/")
    folders, name = member_path(subset, rest.rpartition("/")[2].partition(".")[0], suffix)
    return "/".join((*folders, name))


def relative_path(subset: str, image_id: str, ext: str) -> str:
    folders, name = member_path(subset, image_id, ext)
    return "/".join((*folders, name))


def split_location(location: str) -> tuple[str, str]:
    """(the subset's folder, the path below it) of an image's location: for a file that
    must sit beside a subset's images (Hugging Face's metadata.jsonl)."""
    folder, _, rest = location.partition("/")
    return folder, rest


def original_place(location: str) -> tuple[str, str]:
    """(folder, ImageID) of the kept original of the image at `location`; its extension
    is the original's own, which may not be the image's."""
    folder, _, name = location.rpartition("/")
    return f"{ORIGINAL_DIR}/{folder}", name.partition(".")[0]


@dataclass(frozen=True, slots=True)
class FilesTarget:
    root: str
    fsync: bool = False

    def place(self, subset: str, image_id: str, members: Sequence[Member]) -> Placed:
        root_fd = fsio.open_root(self.root)
        try:
            # The kept original first: once the image is there, so is its original.
            for suffix, data in reversed(members):
                folders, name = member_path(subset, image_id, suffix)
                dfd = fsio.open_dir(root_fd, folders, create=True, sync=self.fsync)
                try:
                    fsio.write_in(dfd, name, data, fsync=self.fsync)
                finally:
                    os.close(dfd)
        finally:
            os.close(root_fd)
        folders, name = member_path(subset, image_id, members[0][0])
        return Placed("/".join((*folders, name)))


class FilesSink(Sink):
    def __init__(self, output: OutputConfig, shard: Shard) -> None:
        self.out = Path(output.out)
        self.shard = shard
        self.target = FilesTarget(os.path.abspath(self.out), output.fsync)

    def describe(self) -> str:
        return f"files in {self.out}"

    def prepare(self) -> None:
        prepare_folder(self.out)

    def recover(self, state: Mapping[str, str], owns: Callable[[str], bool], crashed: bool) -> Synced:
        if crashed:
            remove_temp_files(self.out, owns)
        return Synced()

    def rebuild(self, owns: Callable[[str], bool]) -> Iterator[Outcome]:
        try:
            root_fd = fsio.open_root(self.out)
        except OSError:
            return
        try:
            for (subset, prefix), entry, dir_fd in fsio.walk_files(root_fd, 2):
                m = _FILE_RE.fullmatch(entry.name)
                if (m is None or prefix != m.group(1)[:3] or subset == ORIGINAL_DIR
                        or not SUBSET_RE.fullmatch(subset) or not owns(m.group(1))):
                    continue
                image_id, ext = m.groups()
                try:
                    fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    with os.fdopen(fd, "rb") as f, Image.open(f) as im:
                        width, height = im.size
                except Exception:  # not an image after all: leave it to be fetched again
                    continue
                yield Outcome(
                    image_id, Status.OK, "found in the output when the journal was rebuilt",
                    out_bytes=entry.stat(follow_symlinks=False).st_size, width=width, height=height,
                    subset=subset, ext=ext, location=relative_path(subset, image_id, ext),
                )
        finally:
            os.close(root_fd)


def prepare_folder(out: Path) -> None:
    """Creates OUT if needed; OutputError when it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{out} is a file, not a folder; pick another -o") from None
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}; pick a writable -o folder") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out} is not writable; pick a writable -o folder or fix its permissions")


def remove_temp_files(out: Path, mine: Callable[[str], bool]) -> int:
    """Removes leftover temporary files whose ImageID `mine` claims (other cluster
    tasks' files may be in flight). Regular files only, never through a symlink.
    Returns how many went."""
    try:
        root_fd = fsio.open_root(out)
    except OSError:
        return 0
    removed = 0
    try:
        for depth, base in ((2, ()), (3, (ORIGINAL_DIR,))):
            try:
                start = fsio.open_dir(root_fd, base, create=False)
            except OSError:
                continue
            try:
                found = [(parts, e.name) for parts, e, _ in fsio.walk_files(start, depth - len(base))
                         if (m := _TMP_RE.fullmatch(e.name)) and mine(m.group(1))]
            finally:
                os.close(start)
            for parts, name in found:
                if fsio.remove_below(root_fd, (*base, *parts), name):
                    removed += 1
    finally:
        os.close(root_fd)
    return removed


class LocalBlobs:
    """A local output read back (see `Blobs`): below its root, symlinks are never
    followed, so a location cannot lead a reader outside OUT."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def _split(key: str) -> tuple[list[str], str]:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise FileNotFoundError(errno.ENOENT, f"not a location inside the output: {key[:200]!r}")
        return parts[:-1], parts[-1]

    def _open(self, key: str) -> int:
        folders, name = self._split(key)
        root_fd = fsio.open_root(self.root)
        try:
            dfd = fsio.open_dir(root_fd, folders, create=False)
        finally:
            os.close(root_fd)
        try:
            return fsio.open_regular(name, dfd)  # a FIFO planted here is refused, not waited on
        finally:
            os.close(dfd)

    def open_read(self, key: str) -> int:
        """A descriptor to read the file at key from, reached as `read` reaches it."""
        return self._open(key)

    def read(self, key: str) -> bytes:
        with os.fdopen(self._open(key), "rb") as f:
            return f.read()

    def link(self, key: str, dest_dir_fd: int, dest: str) -> bool:
        """Hard-links the file at key as dest in the folder dest_dir_fd (a copy that costs
        no space); False when it cannot be (another filesystem). Symlinks below the root
        are refused, as by read."""
        folders, name = self._split(key)
        return fsio.link_below(self.root, folders, name, dest_dir_fd, dest)

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        fd = self._open(key)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        try:
            os.close(self._open(key))
            return True
        except OSError:
            return False

    def _entries(self, folder: str) -> list[os.DirEntry[str]]:
        parts = [p for p in folder.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return []
        try:
            root_fd = fsio.open_root(self.root)
        except OSError:
            return []
        try:
            fd = fsio.open_dir(root_fd, parts, create=False)
        except OSError:
            return []
        finally:
            os.close(root_fd)
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            # Sizes now, while the folder is open: a DirEntry of a descriptor has no path.
            for e in entries:
                if e.is_file(follow_symlinks=False):
                    e.stat(follow_symlinks=False)
            return entries
        finally:
            os.close(fd)

    def files(self, folder: str) -> Iterator[tuple[str, int]]:
        for e in self._entries(folder):
            if e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                yield e.name, e.stat(follow_symlinks=False).st_size

    def folders(self, folder: str) -> list[str]:
        return sorted(e.name for e in self._entries(folder) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))

    def walk(self, folder: str) -> Iterator[tuple[str, int]]:
        base = folder.strip("/")
        prefix = f"{base}/" if base else ""
        for name, size in self.files(base):
            yield prefix + name, size
        for sub in self.folders(base):
            yield from self.walk(prefix + sub)

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def local_path(self, key: str) -> Path | None:
        folders, name = self._split(key)
        return Path(os.path.abspath(self.root)).joinpath(*folders, name)
