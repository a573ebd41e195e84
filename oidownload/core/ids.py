"""The ImageID and subset rules, written once.

An ImageID is 16 hex digits (Open Images writes them lower-case; input may not, so a
raw id is compared case-insensitively and stored lower-case). A subset becomes a
folder name, so it is a short safe name and never one of the layout's own folders.
"""

from __future__ import annotations

import re

# ASCII only: re's [0-9] would also take other scripts' digits, which str.isdigit accepts.
ID = r"[0-9a-fA-F]{16}"
ID_RE = re.compile(ID)
# As written in the output (file names, keys, members): lower-case only.
WRITTEN_ID = r"[0-9a-f]{16}"
WRITTEN_ID_RE = re.compile(WRITTEN_ID)
SUBSET = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
SUBSET_RE = re.compile(SUBSET)
# Subset names become folder names next to these, so they may not be used.
RESERVED_SUBSETS = frozenset({"original", "masks"})

_U64 = 1 << 64
_I64 = 1 << 63


def is_image_id(text: str) -> bool:
    """Whether text is an ImageID in any case."""
    return ID_RE.fullmatch(text) is not None


def is_subset(text: str) -> bool:
    """Whether text may name a subset's folder."""
    return SUBSET_RE.fullmatch(text) is not None and text not in RESERVED_SUBSETS


def id_to_int(image_id: str) -> int:
    """A 16-hex-digit ImageID as SQLite's signed 64-bit integer."""
    v = int(image_id, 16)
    return v - _U64 if v >= _I64 else v


def int_to_id(v: int) -> str:
    """The ImageID that id_to_int turned into v, lower-case."""
    return format(v % _U64, "016x")
