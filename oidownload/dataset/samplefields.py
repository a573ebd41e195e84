"""What each webdataset sample carries beside its image (issue 23): `<ImageID>.txt` (the
first caption of its localized narratives) and, in its `<ImageID>.json`, `captions`,
`relationships` and `points`, the last two exactly as the HF export's metadata.jsonl
has them (dataset/fields.py), in the frame the image was written in.

The selection's rows are put, before the run, in one SQLite file in the state dir
(replaced whole): normalised, of the selected images, kept as the exports keep them
(classes, --relationship). The sink asks for a sample's fields once the image is written
(its size, turn and crop are known only then), through `SampleFields` (core/config.py):
sinks may not import this layer. The rows stay on disk, read one image at a time, so a
500k-image selection costs the run an index lookup a sample, not hundreds of MB.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from oidownload.core.errors import OutputError
from oidownload.core.fsio import temp_name
from oidownload.core.records import Outcome
from oidownload.dataset.annotations import AnnotationSource, AnnotationTable
from oidownload.dataset.fields import record_fields
from oidownload.dataset.geometry import (
    KeptRecords,
    image_id_of,
    relationship_test,
    written_point,
    written_relationship,
)
from oidownload.dataset.kinds import (
    KINDS,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    AnnotationKind,
    Point,
    Relationship,
)
from oidownload.dataset.selection import Plan, class_names
from oidownload.state.reader import Written

R = TypeVar("R")
FILE_NAME = "sample-fields.sqlite"


@dataclass(frozen=True)
class _Records(Generic[R]):
    """How one kind's records go into their table and come back out, moved."""

    kind: AnnotationKind[R]
    columns: tuple[str, ...]  # after image_id
    row: Callable[[R], tuple[Any, ...]]  # the record's values, in `columns` order
    record: Callable[[str, Sequence[Any]], R]  # (image_id, the row's values) → the record
    move: Callable[[R, Written], R | None]

    def create(self) -> str:
        return f"CREATE TABLE {self.kind.name} (image_id TEXT NOT NULL, {', '.join(self.columns)})"

    def insert(self) -> str:
        return f"INSERT INTO {self.kind.name} VALUES (?, {', '.join('?' * len(self.columns))})"

    def select(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.kind.name} WHERE image_id = ? ORDER BY rowid"


_RELATIONSHIPS = _Records[Relationship](
    RELATIONSHIPS,
    ("label1", "label2", "xmin1", "xmax1", "ymin1", "ymax1", "xmin2", "xmax2", "ymin2", "ymax2", "predicate"),
    lambda r: (r.label1, r.label2, *r.box1, *r.box2, r.relationship),
    lambda image_id, v: Relationship(image_id, v[0], v[1], (v[2], v[3], v[4], v[5]), (v[6], v[7], v[8], v[9]), v[10]),
    written_relationship,
)
_POINTS = _Records[Point](
    POINTS,
    ("label", "x", "y", "estimated", "source", "yes_votes", "no_votes", "unsure_votes", "text_label"),
    lambda p: (p.label, p.x, p.y, p.estimated, p.source, p.yes_votes, p.no_votes, p.unsure_votes, p.text_label),
    lambda image_id, v: Point(image_id, *v),
    written_point,
)
# One row a caption, in file order (rowid); `kinds` lists those the annotations hold, so
# a sample without any of a held kind still gets its empty list; `names`: the display
# names of the MIDs the rows use. Indexes are built after the rows.
_SCHEMA = ("CREATE TABLE kinds (kind TEXT PRIMARY KEY)",
           "CREATE TABLE names (mid TEXT PRIMARY KEY, name TEXT NOT NULL)",
           "CREATE TABLE texts (image_id TEXT NOT NULL, caption TEXT NOT NULL)",
           _RELATIONSHIPS.create(), _POINTS.create())
_INDEXES = tuple(f"CREATE INDEX {t}_image_id ON {t} (image_id)" for t in ("texts", "relationships", "points"))
_USED_MIDS = "SELECT label1 FROM relationships UNION SELECT label2 FROM relationships UNION SELECT label FROM points"


@dataclass
class Counts:
    """What the file holds, and the rows left out as not numbers, by kind name."""

    captions: int = 0
    relationships: int = 0
    points: int = 0
    unreadable: dict[str, int] = field(default_factory=dict)


# -- before the run: the selection's rows into the file ------------------------------------------------


def write_sample_fields(source: AnnotationSource, plan: Plan, path: Path) -> Counts | None:
    """The captions, relationships and points of the plan's images (every image's when
    it has no ids) into `path`, replaced whole; None, and no file, when the annotations
    hold none of them. A temporary name of its own: the tasks of one job may share the
    state dir and write the same file at once."""
    tables = list(source.tables())
    held = [k for k in (NARRATIVES, RELATIONSHIPS, POINTS) if any(t.kind is k for t in tables)]
    if not held:
        path.unlink(missing_ok=True)  # a former run's: nothing of this selection is in it
        return None
    tmp = path.with_name(temp_name(path.name))
    try:
        with closing(sqlite3.connect(tmp)) as conn:
            counts = _fill(conn, tables, held, plan)
            names = class_names(source, plan.class_descriptions)
            if names is not None:
                used = [str(m) for (m,) in conn.execute(_USED_MIDS)]
                conn.executemany("INSERT INTO names VALUES (?, ?)", ((m, names.name(m)) for m in used))
            conn.commit()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _fill(conn: sqlite3.Connection, tables: Sequence[AnnotationTable], held: Sequence[AnnotationKind[Any]],
          plan: Plan) -> Counts:
    # A crash leaves only the temporary file, never a torn `path`: no journal needed.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    for stmt in _SCHEMA:
        conn.execute(stmt)
    conn.executemany("INSERT INTO kinds VALUES (?)", ((k.name,) for k in held))
    counts = Counts(captions=_insert(conn, "INSERT INTO texts VALUES (?, ?)", _captions(tables, plan.ids)))
    mids = plan.classes or None  # none selected: every class, as the exports take them
    if RELATIONSHIPS in held:
        counts.relationships = _insert_records(conn, _RELATIONSHIPS, KeptRecords(
            RELATIONSHIPS, mids, relationship_test(plan.relationships)), tables, plan.ids, counts)
    if POINTS in held:
        counts.points = _insert_records(conn, _POINTS, KeptRecords(POINTS, mids), tables, plan.ids, counts)
    for stmt in _INDEXES:
        conn.execute(stmt)
    return counts


def _captions(tables: Iterable[AnnotationTable], ids: Container[str] | None) -> Iterator[tuple[str, str]]:
    for t in tables:
        if t.kind is NARRATIVES:
            i_id, i_caption = t.index("ImageID"), t.index("Caption")
            yield from ((f[i_id].lower(), f[i_caption]) for f in t.rows(ids))


def _insert_records(conn: sqlite3.Connection, spec: _Records[R], kept: KeptRecords[R],
                    tables: Sequence[AnnotationTable], ids: Container[str] | None, counts: Counts) -> int:
    rows = ((image_id_of(r).lower(), *spec.row(r)) for r in kept.read(tables, ids))
    n = _insert(conn, spec.insert(), rows)
    if kept.unreadable:
        counts.unreadable[spec.kind.name] = kept.unreadable
    return n


def _insert(conn: sqlite3.Connection, stmt: str, rows: Iterable[Sequence[Any]]) -> int:
    before = conn.total_changes
    conn.executemany(stmt, rows)
    return conn.total_changes - before


# -- during the run: one sample's fields, in its written frame ----------------------------------------


class SampleFieldsFile:
    """`SampleFields` over the file write_sample_fields wrote: opened read-only by the
    sink in the main process, asked from the event loop's thread only."""

    def __init__(self, path: Path) -> None:
        try:
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self.kinds = frozenset(KINDS[str(k)] for (k,) in self.conn.execute("SELECT kind FROM kinds"))
            # bounded by the classes the rows name (Open Images has ~20k), not by the images
            self.names = {str(m): str(n) for m, n in self.conn.execute("SELECT mid, name FROM names")}
        except (sqlite3.Error, KeyError) as exc:
            raise OutputError(f"cannot read what the shards' samples carry ({path}): {exc}") from None
        # The sink asks for a sample's fields and then its text: its captions are read once.
        self._told: tuple[str, list[str]] = ("", [])

    def fields(self, outcome: Outcome) -> dict[str, Any]:
        image = written_frame(outcome)
        captions = self._captions(outcome.image_id)
        rels = self._moved(_RELATIONSHIPS, image) if RELATIONSHIPS in self.kinds else []
        points = self._moved(_POINTS, image) if POINTS in self.kinds else []
        return {**({"captions": captions} if captions else {}),
                **record_fields(self.kinds, image, rels, points, self._name)}

    def text(self, outcome: Outcome) -> bytes | None:
        captions = self._captions(outcome.image_id)
        return captions[0].encode() if captions else None

    def close(self) -> None:
        self.conn.close()

    def _name(self, mid: str) -> str:
        return self.names.get(mid, mid)

    def _captions(self, image_id: str) -> list[str]:
        if NARRATIVES not in self.kinds:
            return []
        if self._told[0] != image_id:
            rows = self.conn.execute("SELECT caption FROM texts WHERE image_id = ? ORDER BY rowid", (image_id,))
            self._told = (image_id, [str(r[0]) for r in rows])
        return self._told[1]

    def _moved(self, spec: _Records[R], image: Written) -> list[R]:
        """The image's records in its written frame; those the crop cut away are left out."""
        found = (spec.move(spec.record(image.image_id, v), image)
                 for v in self.conn.execute(spec.select(), (image.image_id,)))
        return [r for r in found if r is not None]


def written_frame(outcome: Outcome) -> Written:
    """The frame an outcome was written in, as the geometry takes it (and the journal
    gives the exports, from the same outcome)."""
    return Written(outcome.image_id, outcome.subset, outcome.location, outcome.ext, outcome.width or 0,
                   outcome.height or 0, outcome.orientation, outcome.crop,
                   outcome.source.value if outcome.source else "", outcome.verified, outcome.out_bytes)
