"""The gallery's only reads of a download: the images that are ok (size, turn, crop,
source, where they are), one image's bytes, the count per status, and the input lists.

Everything else in the gallery works on these records, so a new journal read API or
another kind of output (tar shards, object storage) changes this file only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..journal import Downloaded, connect, downloaded, int_to_id, journal_files
from ..report import input_paths, out_status


@dataclass(frozen=True, slots=True)
class Written:
    """One image that is in the output: its frame (size, turn, crop) and its origin."""

    image: Downloaded
    source: str  # original / thumbnail / ...; "" when the journal does not say
    location: str  # where the output keeps it: a path relative to OUT, for the files output


def written_images(out: Path) -> list[Written]:
    """Every image whose outcome is ok, in ImageID order."""
    images = downloaded(out)
    sources: dict[str, str] = {}
    try:
        for path in journal_files(out):
            conn = connect(path, readonly=True)
            try:
                for rid, source in conn.execute("SELECT id, source FROM outcomes WHERE status='ok'"):
                    sources[int_to_id(rid)] = source or ""
            finally:
                conn.close()
    except sqlite3.Error as exc:
        raise InputError(f"cannot read the journal in {out}: {exc}") from None
    return [Written(images[i], sources.get(i, ""), images[i].path) for i in sorted(images)]


def read_image(out: Path, location: str) -> bytes:
    """The written bytes of one image. Raises OSError when they are gone."""
    return (out / location).read_bytes()


def local_file(out: Path, location: str) -> Path | None:
    """The image as a file on this machine, when the output keeps it as one (so it can
    be hard-linked rather than copied); None otherwise."""
    path = out / location
    return path if path.is_file() else None


def status_counts(out: Path) -> dict[str, int]:
    """Outcomes per status across every journal in OUT, in the order of summaries."""
    return {name: c.n for name, c in out_status(out).counts.items()}


def input_lists(out: Path) -> list[Path]:
    """The image lists (CSV files) the downloads read, as the journals name them."""
    return [Path(p) for p in input_paths(journal_files(out))]
