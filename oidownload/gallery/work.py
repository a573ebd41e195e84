"""Runs in worker processes, per image: its page, a small JPEG thumbnail and the full-size
copy the page shows, side by side in images/<abc>/ of the gallery folder. Written images
are read through the output's Reader, so any output kind works; a plain file is
hard-linked rather than copied.

An image that still carries an EXIF orientation (`--format keep`) gets a re-encoded copy
without it: browsers would turn it, and the boxes are drawn in the stored pixels' frame.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from oidownload.core.fsio import Place, Tree, temp_name
from oidownload.gallery.reads import link_image, read_image
from oidownload.gallery.render import render
from oidownload.sinks import Reader
from oidownload.state.reader import StateDir

THUMB_SIDE = 320  # pixels, longest side: sharp in a tile about 200 CSS px wide on a 1.5x screen
THUMB_QUALITY = 82
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class Job:
    image_id: str
    location: str
    page: str  # paths relative to the gallery folder, all in one folder
    thumb: str
    full: str
    context: dict[str, Any]  # the image page's
    masks: tuple[Overlay, ...] = ()  # masks (issue 22)


@dataclass(frozen=True, slots=True)
class Overlay:
    """A mask to tint: where its overlay goes, the class colour, the written 1-bit PNG."""

    rel: str
    rgb: tuple[int, int, int]
    png: bytes


@dataclass(frozen=True, slots=True)
class Done:
    image_id: str
    error: str  # "" when the thumbnail and the full-size image are in place
    nbytes: int  # bytes of the written image read (0 when nothing had to be made)


# Each worker opens the output's reader once (a tar shard's index is read once, a bucket
# client made once), not once per batch of jobs.
_reader: Reader | None = None


def init(state: StateDir) -> None:
    """The pool's initializer (also called in-process when there is no pool)."""
    global _reader
    _reader = state.reader()


def make(place: Place, jobs: list[Job]) -> list[Done]:
    assert _reader is not None, "work.init() first"
    try:
        tree = place.open(create=False)
    except OSError as exc:  # the gallery folder swapped for a link since the build began
        return [Done(job.image_id, f"cannot write the gallery: {exc.strerror or exc}", 0) for job in jobs]
    with tree:
        return [_one(_reader, tree, job) for job in jobs]


def write_file(tree: Tree, rel: str, data: bytes) -> None:
    """Whole or absent (a temporary name, then a rename), missing folders made on the
    way; nothing below the gallery folder is followed if it is a symlink."""
    tree.write_bytes(rel, data)


def _write_if_changed(tree: Tree, rel: str, data: bytes) -> None:
    """A rebuild leaves a file alone when it would not change: reading a small file costs
    far less than creating one."""
    try:
        if tree.read_bytes(rel, len(data) + 1) == data:
            return
    except OSError:
        pass
    write_file(tree, rel, data)


def _one(reader: Reader, tree: Tree, job: Job) -> Done:
    try:
        _write_if_changed(tree, job.page, render("image.html", job.context).encode())  # makes the folder
    except OSError as exc:  # images/<abc> a symlink: refused
        return Done(job.image_id, f"cannot write its page: {exc.strerror or exc}", 0)
    for overlay in job.masks:
        try:
            _write_if_changed(tree, overlay.rel, tinted(overlay))
        except Exception as exc:  # the pool's boundary: Pillow raises many kinds of errors
            return Done(job.image_id, f"cannot draw its mask {overlay.rel}: {exc}", 0)
    if tree.is_file(job.thumb) and tree.is_file(job.full):
        return Done(job.image_id, "", 0)  # made by an earlier build: images never change once ok
    try:
        data = read_image(reader, job.location)
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
            write_file(tree, job.thumb, buf.getvalue())
        if turned:
            with Image.open(io.BytesIO(data)) as im:  # again: the first decode was at reduced scale
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=95)
                write_file(tree, job.full, buf.getvalue())
        else:
            _place_full(reader, job.location, tree, job.full, data)
    except Exception as exc:  # the pool's boundary: Pillow raises many kinds of errors
        return Done(job.image_id, f"cannot make a thumbnail: {exc}", len(data))
    return Done(job.image_id, "", len(data))


MASK_ALPHA = 110  # of 255: the image shows through the tint


def tinted(overlay: Overlay) -> bytes:
    """The mask as a 2-colour palette PNG: outside transparent, inside the class colour
    at MASK_ALPHA. As small as the 1-bit mask, and drawn by the page as a plain image
    (no script, so the image pages keep their script-free CSP)."""
    with Image.open(io.BytesIO(overlay.png)) as im:
        bits = im.convert("L").point(lambda v: 1 if v else 0)
    bits.putpalette([0, 0, 0, *overlay.rgb])
    buf = io.BytesIO()
    bits.convert("P").save(buf, "PNG", transparency=bytes([0, MASK_ALPHA]), optimize=True)
    return buf.getvalue()


def _place_full(reader: Reader, location: str, tree: Tree, full: str, data: bytes) -> None:
    """A hard link to the written file when it is one on this filesystem, else a copy."""
    *parts, name = full.split("/")
    with tree.sub(parts) as folder:
        tmp = temp_name(name)
        if link_image(reader, location, folder.fd, tmp):
            try:
                folder.replace(tmp, name)
            finally:
                # rename() between two links to one file does nothing and leaves both: an
                # earlier (or a concurrent) build's link is already at `full`.
                folder.unlink(tmp, missing_ok=True)
            return
    write_file(tree, full, data)
