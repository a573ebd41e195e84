"""Runs in worker processes, per image: a small JPEG thumbnail, the full-size copy the
image page shows, and the image page itself, all inside the gallery folder. Written
images are read through `reads`, so any output kind works; a local file is hard-linked
rather than copied.

An image that still carries an EXIF orientation (`--format keep`) gets a re-encoded copy
without it: browsers would turn it, and the boxes are drawn in the stored pixels' frame.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..layout import TMP_SUFFIX, atomic_write
from .reads import local_file, read_image
from .render import render

THUMB_SIDE = 320  # pixels, longest side: sharp in a tile about 200 CSS px wide on a 1.5x screen
THUMB_QUALITY = 82
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class Job:
    image_id: str
    location: str
    thumb: str  # paths relative to the gallery folder
    full: str
    page: str
    context: dict[str, Any]  # the image page's


@dataclass(frozen=True, slots=True)
class Done:
    image_id: str
    error: str  # "" when both files are in place
    nbytes: int  # bytes of the written image read (0 when nothing had to be made)


def make(out: Path, dest: Path, jobs: list[Job]) -> list[Done]:
    return [_one(out, dest, job) for job in jobs]


def _one(out: Path, dest: Path, job: Job) -> Done:
    _write_if_changed(dest / job.page, render("image.html", job.context).encode())
    thumb, full = dest / job.thumb, dest / job.full
    if thumb.exists() and full.exists():
        return Done(job.image_id, "", 0)  # made by an earlier build: images never change once ok
    try:
        data = read_image(out, job.location)
    except OSError as exc:
        return Done(job.image_id, f"cannot read the image: {exc.strerror or exc}", 0)
    try:
        with Image.open(io.BytesIO(data)) as im:
            turned = im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
            w, h = im.size
            scale = min(1.0, THUMB_SIDE / max(w, h, 1))
            # JPEG: decode at reduced scale, often straight to the thumbnail's size.
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            small = im if im.mode == "RGB" else im.convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=THUMB_QUALITY)
            atomic_write(thumb, buf.getbuffer())
        if turned:
            with Image.open(io.BytesIO(data)) as im:  # again: the first decode was at reduced scale
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=95)
                atomic_write(full, buf.getbuffer())
        else:
            _place_full(out, job.location, full, data)
    except Exception as exc:  # the pool's boundary: Pillow raises many kinds of errors
        return Done(job.image_id, f"cannot make a thumbnail: {exc}", len(data))
    return Done(job.image_id, "", len(data))


def _write_if_changed(path: Path, data: bytes) -> None:
    """A rebuild leaves a page alone when it would not change: reading a small file costs
    far less than creating one."""
    try:
        with open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    atomic_write(path, data)


def _place_full(out: Path, location: str, full: Path, data: bytes) -> None:
    """A hard link to the written file when there is one on this filesystem, else a copy."""
    src = local_file(out, location)
    if src is None:
        atomic_write(full, data)
        return
    tmp = full.with_name(f".{full.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        _link_or_copy(src, tmp)
    except FileNotFoundError:  # a new folder: made only then, not tried before every file
        full.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, tmp)
    os.replace(tmp, full)


def _link_or_copy(src: Path, tmp: Path) -> None:
    try:
        os.link(src, tmp)
    except FileNotFoundError:
        raise
    except FileExistsError:  # left by a killed build
        tmp.unlink()
        os.link(src, tmp)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, tmp)
