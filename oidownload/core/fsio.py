"""Writes that stay where they are aimed and are whole or absent.

Folders below a root are entered with O_NOFOLLOW, one component at a time, so a
symlink planted inside OUT is refused rather than followed; temporary files get an
unpredictable name and are opened O_CREAT|O_EXCL|O_NOFOLLOW; a final name only ever
holds a whole file (os.replace). `Tree` does the same for everything the commands
write, move or delete below a folder (gallery, exports, report, metadata): every path
is taken relative to a folder held by descriptor, so no symlink below it is followed
at any depth, and a symlink at a final name is replaced, never written through.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# A body to write: bytes, or the memfd a fetch wrote it into, mapped.
Buffer = bytes | mmap.mmap


TMP_SUFFIX = ".oidtmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkRefused(OSError):
    """A folder on the way is a symlink (or not a folder): writing through it could land
    outside OUT, so it is refused."""


def open_root(root: str | Path) -> int:
    """A descriptor of the root itself. The root may be a symlink the user made: it is
    what they asked for. Only what lies below it is held to O_NOFOLLOW."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root_fd: int, parts: Sequence[str], *, create: bool, sync: bool = False,
             where: Path | None = None) -> int:
    """A descriptor of root/parts..., creating missing folders when asked (with sync,
    each folder that gains one is synced, so the new folder survives a power cut).
    Never follows a symlink: a component that is one raises SymlinkRefused (its message
    names the component's full path when `where`, the root's path, is given)."""
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
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
                    what = (f"{where.joinpath(*parts[: i + 1])} is" if where is not None
                            else f"{'/'.join(parts)}: '{part}' is")
                    raise SymlinkRefused(exc.errno, f"{what} a symlink or not a folder; refusing to write through it") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def temp_name(final: str) -> str:
    # The final name leads, so recovery can tell whose file it is; the random part
    # makes the name unguessable in advance.
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


class NotRegular(OSError):
    """A name holds a FIFO, a device or a socket where a file was expected."""


def open_regular(name: str, dir_fd: int) -> int:
    """A read descriptor of dir/name, a regular file: a symlink is refused (ELOOP) and so
    is anything else that is not a plain file (NotRegular). O_NONBLOCK makes the open
    itself return at once: a FIFO's blocking open would wait for a writer forever."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not _is_regular(os.fstat(fd).st_mode):
            raise NotRegular(errno.EINVAL, f"{name}: not a regular file (a FIFO, device or socket)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def link_below(root: str | Path, parts: Sequence[str], name: str, dest_dir_fd: int, dest: str) -> bool:
    """Hard-links root/parts/name as dest in the folder dest_dir_fd when it is a regular
    file reached without symlinks; False when it is not, or cannot be linked (another
    filesystem). What got linked is checked to be the very file that was opened, so a
    file swapped for a symlink in between is never linked."""
    dfd = _folder_below(root, parts)
    try:
        try:
            fd = open_regular(name, dfd)
        except NotRegular:
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            os.link(name, dest, src_dir_fd=dfd, dst_dir_fd=dest_dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return False
            raise
        got = os.stat(dest, dir_fd=dest_dir_fd, follow_symlinks=False)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino) or not _is_regular(got.st_mode):
            os.unlink(dest, dir_fd=dest_dir_fd)
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
    old file (if any) is left as it was. The folder is opened once: the temporary file
    and the rename happen in that very folder, and a symlink at the final name is
    replaced, not written through. A device the user named (`-o /dev/stdout`, a
    process substitution's /dev/fd/N) is written through: renaming over it would
    replace the device entry itself. A FIFO elsewhere (planted in OUT) is replaced."""
    if str(path).startswith("/dev/") or os.path.realpath(path).startswith("/proc/"):
        if "b" not in mode:
            kwargs.setdefault("encoding", "utf-8")
            kwargs.setdefault("newline", "")
        with open(path, mode, **kwargs) as stream:
            yield stream
        return
    with Tree.at(path.parent, create=False) as tree, tree.atomic_file(path.name, mode, **kwargs) as fh:
        yield fh


def _relative(rel: str | Sequence[str]) -> list[str]:
    parts = rel.split("/") if isinstance(rel, str) else list(rel)
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a path below a folder: {rel!r}")
    return parts


class Tree:
    """A folder held by descriptor; every path given to it is relative ('a/b/name') and
    reached one folder at a time with O_NOFOLLOW, so a symlink below the folder, at any
    depth, raises SymlinkRefused instead of being followed. Files are made in the folder
    descriptor (temporary name, O_EXCL|O_NOFOLLOW) and renamed, unlinked and removed
    through it, so a symlink at a final name is replaced or removed itself."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def at(cls, root: str | Path, parts: Sequence[str] = (), *, create: bool = True) -> Tree:
        """root/parts. The root may be a symlink (a path the user gave: what they asked
        for) and is made with its parents when missing and create is set; the parts
        below it are never followed."""
        root = Path(root)
        if create:
            root.mkdir(parents=True, exist_ok=True)
        root_fd = open_root(root)
        try:
            fd = open_dir(root_fd, parts, create=create, where=root)
        finally:
            os.close(root_fd)
        return cls(fd, root.joinpath(*parts))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _folder(self, parts: Sequence[str], create: bool) -> Iterator[int]:
        fd = open_dir(self.fd, parts, create=create, where=self.path) if parts else os.dup(self.fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def sub(self, rel: str | Sequence[str], *, create: bool = True) -> Tree:
        parts = _relative(rel)
        return Tree(open_dir(self.fd, parts, create=create, where=self.path), self.path.joinpath(*parts))

    def lstat(self, rel: str | Sequence[str]) -> os.stat_result | None:
        """The entry itself (a symlink is not followed); None when it or a folder on the
        way is missing, or a folder on the way is a symlink."""
        *parts, name = _relative(rel)
        try:
            with self._folder(parts, False) as fd:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None

    def is_file(self, rel: str | Sequence[str]) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISREG(st.st_mode)

    def open(self, rel: str | Sequence[str], flags: int, mode: int = 0o666, *, create_dirs: bool = False) -> int:
        """os.open of rel, with O_NOFOLLOW: a symlink at the name raises OSError (ELOOP)."""
        *parts, name = _relative(rel)
        with self._folder(parts, create_dirs) as fd:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)

    def read_bytes(self, rel: str | Sequence[str], limit: int = -1) -> bytes:
        """A regular file's bytes; OSError for anything else (a FIFO planted at the name
        would block a plain open and read for ever)."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{self.path / '/'.join(_relative(rel))} is not a regular file")
            return f.read(limit)

    def write_bytes(self, rel: str | Sequence[str], data: Buffer | memoryview) -> int:
        """rel, whole or absent; missing folders are made (never through a symlink)."""
        *parts, name = _relative(rel)
        with self._folder(parts, True) as fd:
            return write_in(fd, name, data)

    @contextmanager
    def atomic_file(self, rel: str | Sequence[str], mode: str = "w", *, create_dirs: bool = True,
                    **kwargs: Any) -> Iterator[IO[Any]]:
        """An open file for rel, under a temporary name in rel's folder, renamed into
        place when the block ends without an error (removed on an error)."""
        *parts, name = _relative(rel)
        with self._folder(parts, create_dirs) as dfd:
            tmp = temp_name(name)
            fd = os.open(tmp, _NEW_FILE, 0o666, dir_fd=dfd)  # the umask applies, as to any new file
            try:
                if "b" not in mode:
                    kwargs.setdefault("encoding", "utf-8")
                    kwargs.setdefault("newline", "")
                with os.fdopen(fd, mode, **kwargs) as fh:
                    yield fh
                # rename() replaces a symlink at the final name; it never writes through it.
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                _unlink_quietly(tmp, dfd)
                raise

    def mkdirs(self, rel: str | Sequence[str]) -> None:
        with self._folder(_relative(rel), True):
            pass

    def mkdtemp(self, prefix: str) -> str:
        """The name of a new, empty folder directly in this one."""
        while True:
            name = f"{prefix}{secrets.token_hex(6)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                return name
            except FileExistsError:
                continue

    def symlink(self, target: str, rel: str | Sequence[str]) -> None:
        *parts, name = _relative(rel)
        with self._folder(parts, True) as fd:
            os.symlink(target, name, dir_fd=fd)

    def replace(self, src: str | Sequence[str], dst: str | Sequence[str]) -> None:
        """Renames src over dst (a symlink at dst is replaced, not followed)."""
        *sparts, sname = _relative(src)
        *dparts, dname = _relative(dst)
        with self._folder(sparts, False) as sfd, self._folder(dparts, False) as dfd:
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def unlink(self, rel: str | Sequence[str], *, missing_ok: bool = False) -> None:
        """Removes the entry itself (a symlink, not what it points at)."""
        *parts, name = _relative(rel)
        try:
            with self._folder(parts, False) as fd:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self, rel: str | Sequence[str]) -> None:
        """Removes a folder and all it holds without following any link in it (shutil's
        descriptor-based walk); a symlink or file at rel is unlinked itself."""
        *parts, name = _relative(rel)
        with self._folder(parts, False) as fd:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)

    def names(self) -> list[str]:
        with os.scandir(self.fd) as it:
            return [e.name for e in it]


@dataclass(frozen=True, slots=True)
class Place:
    """A folder as a root and the parts below it that must be real folders: picklable,
    so pool workers open the same place (OUT and ('gallery',), or a folder the user named
    and ())."""

    root: Path
    parts: tuple[str, ...] = ()

    @classmethod
    def of(cls, out: str | Path, default: str, dest: Path | None) -> Place:
        """Where a command writes: the folder the user named (followed, if a link: they
        chose it), else OUT/default (a link there is refused)."""
        return cls(dest) if dest is not None else cls(Path(out), (default,))

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    def open(self, *, create: bool = True) -> Tree:
        return Tree.at(self.root, self.parts, create=create)
