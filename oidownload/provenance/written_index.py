"""The written images keyed by ImageID in a temporary on-disk SQLite table, and the rows
of annotation tables joined to them a chunk at a time: the card's boxes and labels in
bounded memory, however many images the output holds.

    WrittenIndex.build(state)        one pass over the journals into the table
    index.chunks(tables, kind)       (a chunk of one table, its images) in file order

A chunk is an `AnnotationTable` over a few thousand rows, and its images a dict of just
those rows' images, so `box_rows` and the label lines take them as they take a whole
file and every written image.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.kinds import AnnotationKind
from oidownload.state.reader import StateDir, Written

# Rows joined at once: a chunk's field lists (about 1 KB each) and its images are all
# that is held.
CHUNK = 5000
# Up to this many written images, their ids are handed to the table's reader as a set
# (a few MB at most): a CSV then skips other images' rows unparsed, and the database
# reads them through its index. Above it, every row is read and joined here.
FEW = 50_000
_COLUMNS = ("id", "subset", "location", "ext", "width", "height", "orientation", "crop", "source", "verified",
            "out_bytes")


@dataclass(frozen=True)
class Chunk:
    """Some consecutive rows of one table, read as the table itself."""

    table: AnnotationTable
    fields: list[list[str]]

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def where(self) -> str:
        return self.table.where

    @property
    def kind(self) -> AnnotationKind[Any]:
        return self.table.kind

    @property
    def columns(self) -> tuple[str, ...]:
        return self.table.columns

    def index(self, name: str) -> int:
        return self.table.index(name)

    def has(self, name: str) -> bool:
        return self.table.has(name)

    def rows(self, ids: Container[str] | None = None) -> Iterator[list[str]]:
        i_id = self.table.index("ImageID")
        return (f for f in self.fields if ids is None or f[i_id] in ids)


class WrittenIndex:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def build(cls, state: StateDir) -> WrittenIndex:
        # "": a private temporary database that SQLite keeps on disk (in TMPDIR) once it
        # outgrows its cache, and deletes when closed.
        conn = sqlite3.connect("", isolation_level=None)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"CREATE TABLE img ({_COLUMNS[0]} TEXT PRIMARY KEY, {', '.join(_COLUMNS[1:])}) WITHOUT ROWID")
        conn.execute("BEGIN")
        rows = ((w.image_id, w.subset, w.location, w.ext, w.width, w.height, w.orientation,
                 ",".join(map(repr, w.crop)) if w.crop else None, w.source, int(w.verified), w.out_bytes)
                for w in state.written())
        # OR REPLACE: an ImageID in two journals (a re-split output) keeps its last row,
        # as the exports' dict of the written images does.
        conn.executemany(f"INSERT OR REPLACE INTO img VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
        conn.execute("COMMIT")
        return cls(conn)

    def __enter__(self) -> WrittenIndex:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.conn.close()

    def wanted(self) -> frozenset[str] | None:
        """The ids for a table's reader to filter by, when they are few (see FEW)."""
        n = self.conn.execute("SELECT count(*) FROM img").fetchone()[0]
        if n > FEW:
            return None
        return frozenset(str(r[0]) for r in self.conn.execute("SELECT id FROM img"))

    def lookup(self, ids: Sequence[str]) -> dict[str, Written]:
        found = {}
        for row in self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM img WHERE id IN "
                                     "(SELECT value FROM json_each(?))", (json.dumps(ids),)):
            rid, subset, location, ext, w, h, orientation, crop, source, verified, out_bytes = row
            box = tuple(float(v) for v in str(crop).split(",")) if crop else None
            found[rid] = Written(rid, subset, location, ext, w, h, orientation, box, source,  # type: ignore[arg-type]
                                 bool(verified), out_bytes)
        return found

    def chunks(self, tables: Sequence[AnnotationTable], kind: AnnotationKind[Any],
               wanted: Container[str] | None) -> Iterator[tuple[Chunk, dict[str, Written]]]:
        """Each table of the kind in CHUNK rows at a time (those of written images, or
        all when `wanted` is None), with the written images those rows name."""
        for table in tables:
            if table.kind is not kind:
                continue
            i_id = table.index("ImageID")
            rows = table.rows(wanted)
            while fields := list(itertools.islice(rows, CHUNK)):
                images = self.lookup(sorted({f[i_id] for f in fields}))
                if images:
                    yield Chunk(table, [f for f in fields if f[i_id] in images]), images
