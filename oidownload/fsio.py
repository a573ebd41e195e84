"""Writes that stay where they are aimed and are whole or absent.

Folders below a root are entered with O_NOFOLLOW, one component at a time, so a
symlink planted inside OUT is refused rather than followed; temporary files get an
unpredictable name and are opened O_CREAT|O_EXCL|O_NOFOLLOW; a final name only ever
holds a whole file (os.replace). `atomic_file` does the same for the text files that
commands write (selections, reports, exports).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .body import Buffer

TMP_SUFFIX = ".oidtmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# `.<final name>.<12 random hex>.oidtmp`: the final name leads, so recovery can tell
# whose file it is; the random part makes the name unguessable in advance.
TMP_RE = re.compile(r"\.(?P<final>[^/]+)\.[0-9a-f]{12}" + re.escape(TMP_SUFFIX))


class SymlinkRefused(OSError):
    """A folder on the way is a symlink (or not a folder): writing through it could land
    outside OUT, so it is refused."""


def open_root(root: str | Path) -> int:
    """A descriptor of the root itself. The root may be a symlink the user made: it is
    what they asked for. Only what lies below it is held to O_NOFOLLOW."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root_fd: int, parts: Sequence[str], *, create: bool, sync: bool = False) -> int:
    """A descriptor of root/parts..., creating missing folders when asked (with sync,
    each folder that gains one is synced, so the new folder survives a power cut).
    Never follows a symlink: a component that is one raises SymlinkRefused."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                    if sync:
                        os.fsync(fd)
                except FileExistsError:
                    pass  # another task made it first: cluster tasks share folders
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise SymlinkRefused(exc.errno, f"{'/'.join(parts)}: '{part}' is a symlink or not a folder; refusing to write through it") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def temp_name(final: str) -> str:
    return f".{final}.{secrets.token_hex(6)}{TMP_SUFFIX}"


def write_in(dir_fd: int, name: str, data: Buffer | memoryview, *, fsync: bool = False) -> int:
    """Writes data as dir/name atomically; returns the bytes written. With fsync the
    file and then its folder are synced before this returns, so the file survives a
    power cut once it is journaled."""
    tmp = temp_name(name)
    fd = os.open(tmp, _NEW_FILE, 0o666, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        total = len(view)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp, dir_fd)
        raise
    os.close(fd)
    try:
        # rename() replaces a symlink at the final name; it never writes through it.
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(tmp, dir_fd)
        raise
    if fsync:
        os.fsync(dir_fd)
    return total


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _folder_below(root: str | Path, parts: Sequence[str]) -> int:
    """A descriptor of root/parts, an existing folder reached without symlinks."""
    root_fd = open_root(root)
    try:
        return open_dir(root_fd, parts, create=False)
    finally:
        os.close(root_fd)


def read_below(root: str | Path, parts: Sequence[str], name: str) -> bytes:
    """The bytes of root/parts/name, refusing symlinks below the root."""
    dfd = _folder_below(root, parts)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def link_below(root: str | Path, parts: Sequence[str], name: str, dest: Path) -> bool:
    """Hard-links root/parts/name as dest when it is a regular file reached without
    symlinks; False when it is not, or cannot be linked (another filesystem). What got
    linked is checked to be the very file that was opened, so a file swapped for a
    symlink in between is never linked."""
    dfd = _folder_below(root, parts)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not _is_regular(st.st_mode):
            return False
        try:
            os.link(name, dest, src_dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return False
            raise
        got = os.stat(dest, follow_symlinks=False)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino) or not _is_regular(got.st_mode):
            os.unlink(dest)
            return False
        return True
    finally:
        os.close(dfd)


Found = tuple[tuple[str, ...], os.DirEntry[str], int]


def walk_files(root_fd: int, depth: int) -> Iterator[Found]:
    """(folder parts, entry, folder descriptor) of every regular file exactly `depth`
    folders below the root, without following symlinks (a linked folder or file is not
    ours: skipped). The descriptor is valid until the next item; open the entry with
    `os.open(entry.name, ..., dir_fd=fd)` (its `path` is only its name)."""

    def walk(fd: int, parts: tuple[str, ...]) -> Iterator[Found]:
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:
            if len(parts) == depth:
                if entry.is_file(follow_symlinks=False):
                    yield parts, entry, fd
            elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a link since the listing, or gone
                try:
                    yield from walk(sub, (*parts, entry.name))
                finally:
                    os.close(sub)

    yield from walk(root_fd, ())


def remove_below(root_fd: int, parts: Sequence[str], name: str) -> bool:
    """Unlinks root/parts/name if it is a regular file reached without symlinks."""
    try:
        dfd = open_dir(root_fd, parts, create=False)
    except OSError:
        return False
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not _is_regular(st.st_mode):
            return False
        os.unlink(name, dir_fd=dfd)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def is_stream_target(path: Path) -> bool:
    """A path that is a stream, not a file to replace: /dev/stdout, /dev/fd/N, a
    terminal, a FIFO. Renaming a file over it would replace the device entry itself."""
    if str(path).startswith("/dev/") or os.path.realpath(path).startswith("/proc/"):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


@contextmanager
def atomic_file(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """A file written under a temporary name in its folder and renamed into place when
    the block ends without an error; on an error the temporary file is removed and the
    old file (if any) is left as it was. A stream (`-o /dev/stdout`) is written through."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    if is_stream_target(path):
        with open(path, mode, **kwargs) as stream:
            yield stream
        return
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    # os.umask() can only be read by setting it, which races with threads creating
    # files; Linux shows it in /proc.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
