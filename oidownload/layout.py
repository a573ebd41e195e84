"""Where files live under OUT, and how they get there atomically.

    OUT/<subset>/<first 3 hex of ImageID>/<ImageID>.<ext>     the images
    OUT/original/<subset>/<abc>/<ImageID>.<ext>               --keep-original
    OUT/.oidownload/                                          journals and locks

A file is written under a temporary name in its final folder, then `os.replace`d, so
a final path only ever holds a whole file. Temporary names end in TMP_SUFFIX and
start with a dot and the ImageID, so a later run can find and remove its own.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

STATE_DIR = ".oidownload"
ORIGINAL_DIR = "original"
TMP_SUFFIX = ".oidtmp"

_ID_RE = re.compile(r"[0-9a-f]{16}")
_TMP_RE = re.compile(r"\.([0-9a-f]{16})\..*" + re.escape(TMP_SUFFIX))


def check_id(image_id: str) -> str:
    """The id itself if it is 16 lower-case hex digits; anything else could name a
    path outside OUT, so it raises ValueError rather than being used."""
    if not _ID_RE.fullmatch(image_id):
        raise ValueError(f"not a 16-hex-digit ImageID: {image_id[:40]!r}")
    return image_id


def relative_path(subset: str, image_id: str, ext: str) -> str:
    check_id(image_id)
    return f"{subset}/{image_id[:3]}/{image_id}.{ext}"


def image_path(out: Path, subset: str, image_id: str, ext: str) -> Path:
    return out / relative_path(subset, image_id, ext)


def original_path(out: Path, subset: str, image_id: str, ext: str) -> Path:
    return out / ORIGINAL_DIR / relative_path(subset, image_id, ext)


def state_dir(out: Path) -> Path:
    return out / STATE_DIR


def atomic_write(path: Path, data: bytes | memoryview | mmap.mmap, *, fsync: bool = False) -> None:
    """Writes data to path so that path is either absent or whole, even under SIGKILL.
    The temporary file sits in the same folder, so the rename never crosses a device."""
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:  # a new folder: made only then, not tried before every file
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def iter_temp_files(out: Path) -> Iterator[tuple[Path, str]]:
    """(path, image id) of every leftover temporary file under OUT's image folders."""
    roots = [out, out / ORIGINAL_DIR]
    for root in roots:
        try:
            subsets = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            continue
        for subset in subsets:
            if root == out and subset.name == ORIGINAL_DIR:
                continue
            for prefix in os.scandir(subset.path):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    m = _TMP_RE.fullmatch(entry.name)
                    if m:
                        yield Path(entry.path), m.group(1)


def remove_temp_files(out: Path, mine: Callable[[str], bool]) -> int:
    """Removes leftover temporary files whose image id `mine` claims; other cluster
    tasks' files, which may be in flight, are left alone. Returns how many went."""
    removed = 0
    for path, image_id in iter_temp_files(out):
        if mine(image_id):
            _unlink_quietly(path)
            removed += 1
    return removed
