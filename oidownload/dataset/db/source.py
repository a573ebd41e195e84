"""The database as an `AnnotationSource`: the rows a ClassFilter accepts, as SQL with the
same meaning as the CSV scan (annotations.ClassFilter.predicate), and each loaded file's
rows for the export, as field lists in that file's columns.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from oidownload.core.errors import ConfigError, DatabaseError
from oidownload.core.ids import id_to_int, int_to_id
from oidownload.dataset.annotations import ATTRIBUTES, ClassFilter, LabelSource
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.db import Database, connect, schema
from oidownload.dataset.db.formats import table_columns
from oidownload.dataset.hierarchy import Hierarchy
from oidownload.dataset.kinds import BOXES, DB_LOAD, KINDS, POINTS, SEGMENTATION, AnnotationKind
from oidownload.dataset.points import PointAnswer

_ATTR_COLUMN = {c.csv: c.name for c in schema.BOX_ATTRIBUTES}


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


@dataclass
class DbTable:
    """One loaded box or label file, read back from its table."""

    db: Database
    file_id: int
    name: str
    kind: AnnotationKind[Any]
    columns: tuple[str, ...]
    _db_columns: tuple[str, ...]
    where: str = ""

    def index(self, name: str) -> int:
        return self.columns.index(name)

    def has(self, name: str) -> bool:
        return name in self.columns

    def rows(self, ids: Container[str] | None = None) -> Iterator[list[str]]:
        table = self.kind.table
        cols = ", ".join(self._db_columns)
        order = "rowid" if not self.db.postgres else "(image_id < 0), image_id"
        if ids is None:
            sql = f"SELECT {cols} FROM {table} WHERE file_id = ? ORDER BY {order}"
        else:
            _fill_ids(self.db, ids)
            sql = (f"SELECT {cols} FROM {table} WHERE file_id = ? AND image_id IN (SELECT id FROM oi_wanted) "
                   f"ORDER BY {order}")
        for row in self.db.stream(sql, (self.file_id,)):
            yield [int_to_id(row[0]), *(_text(v) for v in row[1:])]


def _fill_ids(db: Database, ids: Container[str]) -> None:
    """The wanted ImageIDs in a temporary table, for a join instead of a huge IN list."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS oi_wanted (id BIGINT PRIMARY KEY)")
    db.execute("DELETE FROM oi_wanted")
    db.executemany("INSERT INTO oi_wanted (id) VALUES (?) ON CONFLICT DO NOTHING",
                   [(id_to_int(i),) for i in ids])  # type: ignore[attr-defined]


class DbAnnotations:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    @contextmanager
    def open(cls, url: str) -> Iterator[DbAnnotations]:
        db = connect(url, create=False)
        try:
            if not schema.has_schema(db):
                raise DatabaseError(f"database {url}: no annotations in it; load them with "
                                    f"`oidownload db load FILES... --db {url}`")
            yield cls(db)
        finally:
            db.close()

    def class_descriptions(self) -> ClassDescriptions | None:
        pairs = [(str(m), str(n)) for m, n in self.db.execute("SELECT mid, name FROM classes")]
        return ClassDescriptions.from_pairs(pairs) if pairs else None

    # relationships and points (issue 23)
    def attribute_descriptions(self) -> ClassDescriptions | None:
        """The attributes description loaded into the database (the right side of `is`)."""
        if not schema.has_table(self.db, "attributes"):
            return None
        pairs = [(str(m), str(n)) for m, n in self.db.execute("SELECT mid, name FROM attributes")]
        return ClassDescriptions.from_pairs(pairs) if pairs else None

    def hierarchy(self) -> Hierarchy | None:
        """The class hierarchy loaded into the database, or None when none was."""
        edges = [(str(p), str(c), str(r)) for p, c, r in
                 self.db.execute("SELECT parent, child, relation FROM class_hierarchy")]
        roots = sorted({p for p, _, _ in edges} - {c for _, c, _ in edges})
        return Hierarchy.from_edges(roots[0], edges) if roots else None

    def _files(self) -> list[tuple[int, str, AnnotationKind[Any], tuple[str, ...]]]:
        loaded = [k.name for k in KINDS.values() if DB_LOAD in k.supported]
        rows = self.db.execute(f"SELECT id, path, kind, columns FROM loaded_files WHERE kind IN "
                               f"({', '.join('?' * len(loaded))}) ORDER BY id", tuple(loaded))
        return [(int(i), str(p), KINDS[str(k)], tuple(str(c).split(","))) for i, p, k, c in rows]

    def tables(self) -> list[DbTable]:
        out = []
        for file_id, path, kind, header in self._files():
            cols = table_columns(kind, header)
            name = path.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
            name = name[:-3] if name.endswith(".gz") else name
            out.append(DbTable(self.db, file_id, name, kind, tuple(c.csv for c in cols), tuple(c.name for c in cols), path))
        return out

    def matches(self, flt: ClassFilter, within: Container[str] | None = None) -> Iterator[tuple[str, str]]:
        files = self._files()
        boxes = [(p, h) for _, p, k, h in files if k is BOXES]
        if flt.boxes_only and not boxes:
            raise ConfigError(f"--boxes-only: the database {self.db.url} holds no box file")
        for path, header in boxes:
            missing = sorted(a for a in flt.exclude if a not in header)
            if missing:
                raise ConfigError(f"{path} has no {', '.join(missing)} column (V3 train boxes carry no attributes); "
                                  "drop the --exclude option for it")
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS oi_mids (mid TEXT PRIMARY KEY)")
        self.db.execute("DELETE FROM oi_mids")
        self.db.executemany("INSERT INTO oi_mids (mid) VALUES (?)", [(m,) for m in sorted(flt.mids)])
        where = "mid IN (SELECT mid FROM oi_mids) AND confidence >= ?"
        if flt.label_source is LabelSource.HUMAN:
            where += " AND source <> 'machine'"
        elif flt.label_source is LabelSource.MACHINE:
            where += " AND source = 'machine'"
        tables = [("boxes", where + "".join(f" AND ({_ATTR_COLUMN[a]} IS NULL OR {_ATTR_COLUMN[a]} <> 1)"
                                            for a in sorted(flt.exclude) if a in ATTRIBUTES))]
        params: dict[str, tuple[Any, ...]] = {}
        if not flt.boxes_only:
            tables.append(("labels", where))
            # relationships and points (issue 23): the same test as points.point_test
            if any(k is POINTS for _, _, k, _ in files):
                cond = "mid IN (SELECT mid FROM oi_mids) AND yes_votes >= ?"
                params["points"] = (flt.min_yes_votes,)
                if flt.point_answer is not PointAnswer.ANY:
                    cond += " AND answer = ?"
                    params["points"] += (flt.point_answer.value,)
                tables.append(("points", cond))
            if any(k is SEGMENTATION for _, _, k, _ in files):  # masks (issue 22): by class alone
                tables.append(("masks", "mid IN (SELECT mid FROM oi_mids)"))
                params["masks"] = ()
        for table, cond in tables:
            for image_id, mid in self.db.stream(f"SELECT image_id, mid FROM {table} WHERE {cond}",
                                                params.get(table, (flt.min_confidence,))):
                hex_id = int_to_id(image_id)
                if within is None or hex_id in within:
                    yield hex_id, mid
