"""Which rows this run asks for: this task's shard, an optional id list, and not the
ones the journal says are done. Decided from the raw ImageID, before a row is parsed.
"""

from __future__ import annotations

from collections.abc import Container

from .rows import RowFilter
from .shard import Shard


class SelectionFilter(RowFilter):
    """Counts what it skips as done, so --limit counts rows of the selection whether or
    not an earlier run already finished them (a rerun of the same command is a no-op)."""

    def __init__(self, shard: Shard, done: Container[str] | None = None, ids: Container[str] | None = None) -> None:
        self.shard = shard
        self.done = done
        self.ids = ids
        self.done_skipped = 0

    def skip(self, raw_id: str) -> bool:
        if self.ids is not None and raw_id.lower() not in self.ids:
            return True
        if self.shard.count > 1 and not self.shard.owns(raw_id):
            return True
        if self.done is not None and raw_id in self.done:
            self.done_skipped += 1
            return True
        return False
