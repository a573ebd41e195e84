"""The gallery's only reads of a download, all through the read API (`state.StateDir`
for the journal, the output's `sinks.Reader` for image bytes): the images that are ok,
one image's bytes (or a hard link to it), the count per status, and the input lists.
"""

from __future__ import annotations

import collections
from pathlib import Path

from oidownload.sinks import FileReader, Reader
from oidownload.sinks.files import LocalBlobs
from oidownload.state.reader import StateDir, Written


def written_images(state: StateDir) -> list[Written]:
    """Every image whose outcome is ok, in ImageID order."""
    return sorted(state.written(), key=lambda w: w.image_id)


def read_image(reader: Reader, location: str) -> bytes:
    """The written bytes of one image. Raises OSError when they are gone."""
    return reader.read(location)


def link_image(reader: Reader, location: str, dest_dir_fd: int, dest: str) -> bool:
    """Hard-links the image at `location` as `dest` in the folder dest_dir_fd when the
    output keeps it as a plain file on this filesystem (no copy, no extra space); False
    when it cannot."""
    return (isinstance(reader, FileReader) and isinstance(reader.blobs, LocalBlobs)
            and reader.blobs.link(location, dest_dir_fd, dest))


def status_counts(state: StateDir) -> dict[str, int]:
    """Outcomes per status across every journal."""
    totals: collections.Counter[str] = collections.Counter()
    for journal in state.counts():
        for c in journal.counts:
            totals[c.status] += c.n
    return dict(totals)


def input_lists(state: StateDir) -> list[Path]:
    """The image lists (CSV files) the downloads read."""
    return [i.path for i in state.inputs()]
