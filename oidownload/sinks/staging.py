"""The worker side of every output that publishes from the main process (tar shards,
object storage): a finished image is written whole into the state dir's staging
folder, and its sink publishes it from there. Staged files are the sink's to remove.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oidownload.core import fsio
from oidownload.sinks import Member, Placed

STAGING_DIR = "staging"


def staging_dir(state_dir: Path, tag: str) -> Path:
    """One folder per cluster task: tasks may share a state dir."""
    return state_dir / STAGING_DIR / tag


@dataclass(frozen=True, slots=True)
class StagingTarget:
    root: str  # the staging folder, created by the sink before the workers start
    fsync: bool = False

    def place(self, subset: str, image_id: str, members: Sequence[Member]) -> Placed:
        staged = []
        fd = fsio.open_root(self.root)
        try:
            for suffix, data in members:
                # Unique per attempt: a retry of the same image must not meet a file a
                # sink is still reading.
                name = f"{image_id}.{secrets.token_hex(4)}.{suffix}"
                fsio.write_in(fd, name, data, fsync=self.fsync)
                staged.append(os.path.join(self.root, name))
        finally:
            os.close(fd)
        return Placed("", tuple(staged))


def member_suffix(staged: str) -> str:
    """The member suffix of a staged file ("jpg", "original.jpg")."""
    return os.path.basename(staged).split(".", 2)[2]


def clear_staging(root: Path) -> None:
    """Removes staged files a run left (after a crash, or after a stop that abandoned
    work): nothing staged outlives its run. Regular files only."""
    try:
        fd = fsio.open_root(root)
    except OSError:
        return
    try:
        for _, entry, dir_fd in fsio.walk_files(fd, 0):
            try:
                os.unlink(entry.name, dir_fd=dir_fd)
            except OSError:
                pass
    finally:
        os.close(fd)
