"""Runs in the process pool (masks, issue 22): a mask PNG as fetched → the same mask in
its image's written frame, as a 1-bit PNG.

The image's render says how its frame relates to the stored pixels (the normalised
`crop` kept, the EXIF-style `orientation` code of the turn, the written size); the mask
follows it: cropped by the same fractions of its own size (a mask PNG need not be the
image's size), resized with NEAREST to the pre-turn size, turned. Pure: bytes in, bytes
out.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from oidownload.core.records import MaskOutcome, MaskRef, Status
from oidownload.sinks.files import mask_suffix

# The EXIF-style code the render records → the same transpose (engine/process.py's table).
_TURN: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS = frozenset({5, 6, 7, 8})  # turns that swap width and height
# A mask is a binary PNG of at most the image's size: more pixels than this is no mask.
MAX_MASK_PIXELS = 100_000_000


@dataclass(frozen=True, slots=True)
class MaskIn:
    """One fetched mask handed to the worker with its image's body."""

    ref: MaskRef
    data: bytes


def member_name(ref: MaskRef) -> str:
    """The kept original mask's member suffix (--keep-original): `<BoxID>.mask.original.png`."""
    return f"{ref.box_id}.mask.original.png"


def framed(data: bytes, size: tuple[int, int], orientation: int,
           crop: tuple[float, float, float, float] | None) -> bytes:
    """The mask `data` (a PNG) in the frame of a written image of `size` (after its turn).
    Raises what Pillow raises for bytes that are no image."""
    with Image.open(io.BytesIO(data)) as src:
        w, h = src.size
        if w * h > MAX_MASK_PIXELS:
            raise ValueError(f"{w}x{h} is too many pixels for a mask")
        # A mask stored 1-bit is used as it is; any other mode is cut at half grey
        # (without dithering, a value over 127 is in the mask).
        m = src.copy() if src.mode == "1" else src.convert("L").convert("1", dither=Image.Dither.NONE)
    before = (size[1], size[0]) if orientation in _SWAPS else size
    box = None if crop is None else (crop[0] * w, crop[1] * h, crop[2] * w, crop[3] * h)
    if box is not None or m.size != before:
        m = m.resize(before, Image.Resampling.NEAREST, box=box)
    turn = _TURN.get(orientation)
    if turn is not None:
        m = m.transpose(turn)
    out = io.BytesIO()
    m.save(out, "PNG")  # optimize=True tripled the cost of a mask for a few bytes (benchmarks/masks.py)
    return out.getvalue()


def frame_masks(masks: Sequence[MaskIn], size: tuple[int, int], orientation: int,
                crop: tuple[float, float, float, float] | None,
                keep_original: bool = False) -> tuple[list[tuple[str, bytes]], list[MaskOutcome]]:
    """(members to place with the image, one outcome per mask): a mask that does not
    decode (or whose BoxID could name no member) is `corrupt`, its image unaffected."""
    members: list[tuple[str, bytes]] = []
    outcomes: list[MaskOutcome] = []
    for m in masks:
        try:
            suffix = mask_suffix(m.ref.box_id)
            png = framed(m.data, size, orientation, crop)
        except Exception as exc:  # Pillow raises many kinds for a bad PNG
            outcomes.append(MaskOutcome(m.ref.box_id, m.ref.label, Status.CORRUPT,
                                        f"the mask does not decode: {type(exc).__name__}: {exc}"[:300],
                                        nbytes=len(m.data)))
            continue
        members.append((suffix, png))
        if keep_original:
            members.append((member_name(m.ref), m.data))
        outcomes.append(MaskOutcome(m.ref.box_id, m.ref.label, Status.OK, width=size[0], height=size[1],
                                    nbytes=len(m.data)))
    return members, outcomes
