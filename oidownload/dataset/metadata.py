"""`oidownload metadata`: the official Open Images metadata files for a version, with a
progress bar, resume (HTTP Range on a .part file) and size checks. The V3 release comes
as .tar.gz archives: they are unpacked (safely: regular files only, nothing outside
the folder), with their release folder (`2017_11/`) dropped, so the files land where
`download` is pointed at them: DEST/validation/images.csv, DEST/class-descriptions.csv.
Every other file lands in DEST under its own name.

Which files a version has, where they are served from and what --only picks is
releases.py's table; --base-url (and --narratives-base-url) replace its hosts (the tests
serve them from the local origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from tqdm import tqdm

from oidownload.core.errors import OutputError
from oidownload.core.fsio import SymlinkRefused, Tree
from oidownload.dataset.releases import BASE_URL, FILES, base_urls, matches, select, select_files

# FILES and select_files stay importable from here, where they were.
__all__ = ["BASE_URL", "FILES", "FileResult", "download_metadata", "fetch_all", "select_files", "unpack"]

_CHUNK = 1 << 20
ARCHIVES = ".archives"  # under DEST: the V3 archives, kept for resume and "already there"
# The most a file may have when the server publishes no size (a chunked body): the
# largest official file is under 4 GB; a body that never ends stops here.
MAX_SIZE_MB = 8192
MAX_BYTES = MAX_SIZE_MB << 20


@dataclass
class FileResult:
    name: str
    path: Path
    size: int
    state: str  # downloaded / resumed / already there / unpacked / refused
    note: str = ""  # why, when refused


def _range_start(resp: aiohttp.ClientResponse) -> int | None:
    """Where a 206's Content-Range starts; None when it has none a byte range can be read from."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _total_from(resp: aiohttp.ClientResponse, start: int) -> int | None:
    """The whole file's size: from Content-Range on a 206, Content-Length on a 200."""
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("Content-Range", "").strip())
        return int(m.group(3)) if m else None
    return resp.content_length


def _open_part(tree: Tree, part: str) -> int:
    """The .part, opened (made when missing) without following a symlink at its name, and
    locked: two `metadata` runs fetching one file would interleave their bytes in it."""
    try:
        fd = tree.open(part, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{tree.path / part} is a symlink; refusing to write through it "
                              "(remove it and run again)") from None
        raise OutputError(f"cannot write {tree.path / part}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{tree.path / part} is not a regular file; refusing to write to it (remove it and run again)")
    os.set_blocking(fd, True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"another `oidownload metadata` is fetching {tree.path / part[: -len('.part')]} now "
                          "(its .part is locked); let it finish, or stop it first") from None
    return fd


async def _fetch(session: aiohttp.ClientSession, url: str, tree: Tree, name: str, bars: bool,
                 max_bytes: int) -> FileResult:
    part = name + ".part"
    dest = tree.path / name
    there = tree.lstat(name)
    if there is not None and stat.S_ISREG(there.st_mode):
        async with session.head(url) as resp:
            if resp.status == 200 and resp.content_length == there.st_size:
                return FileResult(name, dest, there.st_size, "already there")
    fd = _open_part(tree, part)
    with os.fdopen(fd, "r+b") as f:  # closing it releases the lock
        start = os.fstat(fd).st_size
        restart = False
        try:
            async with session.get(url, headers={"Range": f"bytes={start}-"} if start else {}) as resp:
                if resp.status == 416 and start:  # the .part is already whole (or longer): start over
                    tree.unlink(part)
                    restart = True
                else:
                    start, total = _check_answer(resp, url, name, start, dest)
                    f.seek(start)
                    f.truncate()
                    await _receive(resp, f, name, start, total, max_bytes, bars)
            f.flush()
        except BaseException:
            with contextlib.suppress(OSError):
                f.flush()
                if os.fstat(fd).st_size == 0:
                    tree.unlink(part, missing_ok=True)  # made by this run, and nothing in it
            raise
        if not restart:
            size = os.fstat(fd).st_size
            if total is not None and size != total:
                raise OutputError(f"{name}: got {size} bytes of {total}; run again to resume")
            # rename() replaces a symlink at the final name; it never writes through it.
            tree.replace(part, name)
    if restart:
        return await _fetch(session, url, tree, name, bars, max_bytes)
    return FileResult(name, dest, size, "resumed" if start else "downloaded")


def _check_answer(resp: aiohttp.ClientResponse, url: str, name: str, start: int, dest: Path) -> tuple[int, int | None]:
    """(where the body goes in the .part, the whole file's size if published) of an
    answer to a request from `start`; an error for any other answer."""
    if resp.status not in (200, 206):
        raise OutputError(f"{url}: HTTP {resp.status} {resp.reason or ''}".strip())
    if resp.status == 200:
        return 0, _total_from(resp, 0)  # the server ignored the Range: start over
    if _range_start(resp) != start:
        # Appending bytes from elsewhere in the file would corrupt the .part, and every
        # rerun would add them again.
        raise OutputError(
            f"{name}: asked for bytes from {start}, the server answered "
            f"{resp.headers.get('Content-Range', 'without a Content-Range')!r}; the .part is left as "
            f"it was (delete {dest}.part to start over)")
    return start, _total_from(resp, start)


async def _receive(resp: aiohttp.ClientResponse, f: IO[bytes], name: str, start: int, total: int | None,
                   max_bytes: int, bars: bool) -> None:
    """The body into f from `start`, stopped at the published size (a body that goes on
    past it is refused, and what it added cut off) or, with none published (a chunked
    body), at max_bytes for the whole file."""
    limit = (total if total is not None else max_bytes) - start
    got = 0
    with tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=not bars, leave=True) as bar:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if got + len(chunk) > limit:
                if total is not None:
                    f.truncate(start)
                    raise OutputError(f"{name}: the server sent more than the {total} bytes it announced; "
                                      "nothing of this answer kept")
                f.write(chunk[: limit - got])
                raise OutputError(f"{name}: the server announced no size and sent more than {max_bytes} bytes, the "
                                  "most a metadata file may have (--max-size-mb); stopped")
            f.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))


async def fetch_all(version: str, dest: Path, base_url: str, only: tuple[str, ...], bars: bool,
                    max_bytes: int = MAX_BYTES, narratives_base_url: str | None = None) -> list[FileResult]:
    picks = select(version, only)
    try:
        tree = Tree.at(dest)
    except OSError as exc:
        raise OutputError(f"cannot create {dest}: {exc.strerror or exc}") from None
    bases = base_urls(base_url, narratives_base_url)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    results = []
    with tree:
        async with aiohttp.ClientSession(timeout=timeout, headers={"Accept-Encoding": "identity"}) as session:
            for pick in picks:
                url = bases[pick.group.host] + pick.rel
                archive = pick.rel.endswith((".tar.gz", ".tgz"))
                # An archive is kept in DEST/.archives/, not beside what it unpacks to: `db load
                # DEST` would find both and load every row twice (it passes over hidden folders).
                try:
                    where = _archives(tree, pick.name) if archive else tree
                except OSError as exc:
                    raise OutputError(f"cannot use {dest / ARCHIVES}: {exc.strerror or exc}") from None
                try:
                    got = await _fetch(session, url, where, pick.name, bars, max_bytes)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise OutputError(f"{url}: {type(exc).__name__}: {exc}; run again to resume") from None
                except OSError as exc:
                    raise OutputError(f"cannot write {dest / pick.name}: {exc.strerror or exc}") from None
                finally:
                    if where is not tree:
                        where.close()
                results.append(got)
                if archive:
                    results += await asyncio.get_running_loop().run_in_executor(None, unpack, got.path, dest,
                                                                                pick.members)
    return results


def _archives(tree: Tree, name: str) -> Tree:
    """DEST/.archives/, with an archive (or its .part) an older version left in DEST moved
    into it, so it is neither fetched again nor loaded twice."""
    archives = tree.sub(ARCHIVES)
    for entry in (name, name + ".part"):
        there = tree.lstat(entry)
        if there is not None and stat.S_ISREG(there.st_mode) and archives.lstat(entry) is None:
            tree.replace(entry, (ARCHIVES, entry))
    return archives


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's regular files, one at a time: TarFile keeps every header it has
    read (an archive of a million empty members would cost hundreds of MB), so the list
    is emptied as it goes; regular files need no earlier header to be extracted."""
    while (m := tar.next()) is not None:
        tar.members = []  # type: ignore[attr-defined]  # undocumented, and the only way to stop the list growing
        if m.isfile():
            yield m


def unpack(archive: Path, dest: Path, only: tuple[str, ...] = ()) -> list[FileResult]:
    """The archive's regular files under dest, without its release folder (the first
    file's top folder, when it has one); members that are links, devices or would land
    outside dest are skipped, and so are those whose folder in dest is a symlink
    (refused: noted in the result). A member already there with its size is left
    alone. Members are read one at a time, never listed first."""
    results = []
    try:
        with Tree.at(dest) as tree, tarfile.open(archive, "r:*") as tar:
            release: str | None = None
            for m in _members(tar):
                rel = m.name.lstrip("./")
                if release is None:
                    release = rel.split("/", 1)[0] + "/" if "/" in rel else ""
                if release and rel.startswith(release):
                    rel = rel[len(release):]
                parts = rel.split("/")
                if not rel or any(p in ("", ".", "..") for p in parts) or not matches(rel, only):
                    continue
                target = dest.joinpath(*parts)
                there = tree.lstat(parts)
                if there is not None and stat.S_ISREG(there.st_mode) and there.st_size == m.size:
                    results.append(FileResult(rel, target, m.size, "already there"))
                    continue
                source = tar.extractfile(m)
                if source is None:
                    continue
                try:
                    with source, tree.atomic_file(parts, "wb") as out:
                        while chunk := source.read(_CHUNK):
                            out.write(chunk)
                except SymlinkRefused as exc:  # a symlinked folder in dest: never written through
                    results.append(FileResult(rel, target, 0, "refused", note=exc.strerror or str(exc)))
                    continue
                results.append(FileResult(rel, target, m.size, "unpacked"))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise OutputError(f"cannot unpack {archive}: {exc}; delete it and run again to fetch it anew") from None
    return results


def download_metadata(version: str, dest: Path, *, base_url: str = BASE_URL, only: tuple[str, ...] = (),
                      bars: bool = True, max_bytes: int = MAX_BYTES,
                      narratives_base_url: str | None = None) -> list[FileResult]:
    return asyncio.run(fetch_all(version, dest, base_url, only, bars, max_bytes, narratives_base_url))
