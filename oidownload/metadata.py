"""`oidownload metadata`: the official Open Images metadata files for a version, with a
progress bar, resume (HTTP Range on a .part file) and size checks.

The file table is the one place the URLs live. They are relative to BASE_URL, which
--base-url replaces (the tests serve them from the local origin).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tqdm import tqdm

from .errors import ConfigError, OutputError

BASE_URL = "https://storage.googleapis.com/openimages/"

# version → files, relative to BASE_URL. V7 reuses the V6 boxes and image lists.
_V6_COMMON = (
    "v6/oidv6-train-images-with-labels-with-rotation.csv",
    "v5/validation-images-with-rotation.csv",
    "v5/test-images-with-rotation.csv",
    "v6/oidv6-train-annotations-bbox.csv",
    "v5/validation-annotations-bbox.csv",
    "v5/test-annotations-bbox.csv",
    "v5/class-descriptions-boxable.csv",
)
FILES: dict[str, tuple[str, ...]] = {
    "v3": (
        "2017_11/images_2017_11.tar.gz",
        "2017_11/annotations_human_bbox_2017_11.tar.gz",
        "2017_11/annotations_human_2017_11.tar.gz",
        "2017_11/annotations_machine_2017_11.tar.gz",
        "2017_11/classes_2017_11.tar.gz",
    ),
    "v6": (
        *_V6_COMMON,
        "v6/oidv6-class-descriptions.csv",
        "v6/oidv6-train-annotations-human-imagelabels.csv",
        "v5/validation-annotations-human-imagelabels.csv",
        "v5/test-annotations-human-imagelabels.csv",
    ),
    "v7": (
        *_V6_COMMON,
        "v7/oidv7-class-descriptions.csv",
        "v7/oidv7-classes-trainable.txt",
        "v7/oidv7-train-annotations-human-imagelabels.csv",
        "v7/oidv7-val-annotations-human-imagelabels.csv",
        "v7/oidv7-test-annotations-human-imagelabels.csv",
    ),
}
_CHUNK = 1 << 20


@dataclass
class FileResult:
    name: str
    path: Path
    size: int
    state: str  # downloaded / resumed / already there


def select_files(version: str, only: tuple[str, ...]) -> list[str]:
    if version not in FILES:
        raise ConfigError(f"unknown version {version!r}; known: {', '.join(FILES)}")
    files = list(FILES[version])
    if only:
        files = [f for f in files if any(fnmatch.fnmatch(Path(f).name, pat) for pat in only)]
        if not files:
            raise ConfigError(f"no {version} file matches {', '.join(only)}; files: {', '.join(Path(f).name for f in FILES[version])}")
    return files


def _total_from(resp: aiohttp.ClientResponse, start: int) -> int | None:
    """The whole file's size: from Content-Range on a 206, Content-Length on a 200."""
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("Content-Range", ""))
        return int(m.group(3)) if m else None
    return resp.content_length


async def _fetch(session: aiohttp.ClientSession, url: str, dest: Path, bars: bool) -> FileResult:
    part = dest.with_name(dest.name + ".part")
    name = dest.name
    if dest.exists():
        async with session.head(url) as resp:
            if resp.status == 200 and resp.content_length == dest.stat().st_size:
                return FileResult(name, dest, dest.stat().st_size, "already there")
    start = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    async with session.get(url, headers=headers) as resp:
        if resp.status == 416 and start:  # the .part is already whole (or longer)
            part.unlink()
            return await _fetch(session, url, dest, bars)
        if resp.status not in (200, 206):
            raise OutputError(f"{url}: HTTP {resp.status} {resp.reason or ''}".strip())
        if resp.status == 200:
            start = 0  # the server ignored the Range: start over
        total = _total_from(resp, start)
        mode = "ab" if start else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name,
                                         disable=not bars, leave=True) as bar:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise OutputError(f"{name}: got {size} bytes of {total}; run again to resume")
    os.replace(part, dest)
    return FileResult(name, dest, size, "resumed" if start else "downloaded")


async def fetch_all(version: str, dest: Path, base_url: str, only: tuple[str, ...], bars: bool) -> list[FileResult]:
    files = select_files(version, only)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dest}: {exc.strerror or exc}") from None
    base = base_url if base_url.endswith("/") else base_url + "/"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    results = []
    async with aiohttp.ClientSession(timeout=timeout, headers={"Accept-Encoding": "identity"}) as session:
        for rel in files:
            try:
                results.append(await _fetch(session, base + rel, dest / Path(rel).name, bars))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OutputError(f"{base + rel}: {type(exc).__name__}: {exc}; run again to resume") from None
    return results


def download_metadata(version: str, dest: Path, *, base_url: str = BASE_URL, only: tuple[str, ...] = (),
                      bars: bool = True) -> list[FileResult]:
    return asyncio.run(fetch_all(version, dest, base_url, only, bars))
