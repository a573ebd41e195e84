"""A sample's text (issue 23: localized narratives): an SQLite file of ImageID → its
captions, written before a run by the selection (dataset.narratives.write_sample_texts)
and read by the webdataset sink, which adds `<ImageID>.txt` (the first caption) and
`captions` (all of them) to each sample that has one. On disk, not in memory: a
selection of 500k narrated images would otherwise hold ~200 MB of text for the run.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from oidownload.core.errors import OutputError

# One row a caption, in file order (rowid); the index is built after the rows.
SCHEMA = ("CREATE TABLE texts (image_id TEXT NOT NULL, caption TEXT NOT NULL)",
          "CREATE INDEX texts_image_id ON texts (image_id)")


class SampleTexts:
    def __init__(self, path: Path) -> None:
        try:
            # Read from the event loop's thread only; opened read-only, so a crash leaves it as it was.
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.conn.execute("SELECT 1 FROM texts LIMIT 1")
        except sqlite3.Error as exc:
            raise OutputError(f"cannot read the captions for the shards ({path}): {exc}") from None

    def captions(self, image_id: str) -> list[str]:
        rows = self.conn.execute("SELECT caption FROM texts WHERE image_id = ? ORDER BY rowid", (image_id,))
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        self.conn.close()
