"""The database schema, in both dialects: the tables named for people and other tools to
query (images, classes, class_hierarchy, class_closure, labels, boxes, loaded_files),
two views with class names and hex ImageIDs, and the indexes built after the data.

ImageIDs are stored as signed 64-bit integers (journal.id_to_int); every row of a
loaded file carries its file_id, so a changed file's rows can be replaced.
"""

from __future__ import annotations

from oidownload.dataset.db import Database, hex_id_sql
from oidownload.dataset.kinds import BOX_ATTRIBUTE_COLUMNS, DB_LOAD, KINDS, Column
from oidownload.dataset.kinds import BOXES as BOX_KIND
from oidownload.dataset.kinds import LABELS as LABEL_KIND

_TYPES = {
    # name: (SQLite, PostgreSQL)
    "id": ("INTEGER", "BIGINT"),
    "text": ("TEXT", "TEXT"),
    "real": ("REAL", "DOUBLE PRECISION"),
    "int": ("INTEGER", "BIGINT"),
    "flag": ("INTEGER", "SMALLINT"),
}

IMAGES = (
    Column("image_id", "ImageID", "id"),
    Column("subset", "Subset", "text"),
    Column("original_url", "OriginalURL", "text"),
    Column("original_landing_url", "OriginalLandingURL", "text"),
    Column("license", "License", "text"),
    Column("author_profile_url", "AuthorProfileURL", "text"),
    Column("author", "Author", "text"),
    Column("title", "Title", "text"),
    Column("original_size", "OriginalSize", "int"),
    Column("original_md5", "OriginalMD5", "text"),
    Column("thumbnail_300k_url", "Thumbnail300KURL", "text"),
    Column("rotation", "Rotation", "real", nullable=True),
)
# The annotation tables are the kinds' own (kinds.py): a kind `db load` loads has its columns there.
LABELS = LABEL_KIND.columns
BOX_ATTRIBUTES = BOX_ATTRIBUTE_COLUMNS
BOXES = BOX_KIND.columns
TABLES = {"images": IMAGES, **{k.table: k.columns for k in KINDS.values() if DB_LOAD in k.supported}}


def _table(db: Database, name: str, columns: tuple[Column, ...]) -> str:
    i = 1 if db.postgres else 0
    cols = [f"{c.name} {_TYPES[c.type][i]}{'' if c.nullable else ' NOT NULL'}" for c in columns]
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(cols)}, file_id INTEGER NOT NULL)"


def create(db: Database) -> None:
    """Tables and views, if missing. No index on the big tables: see build_indexes."""
    serial = "BIGSERIAL PRIMARY KEY" if db.postgres else "INTEGER PRIMARY KEY"
    boolean = "BOOLEAN" if db.postgres else "INTEGER"
    statements = [
        f"""CREATE TABLE IF NOT EXISTS loaded_files (
            id {serial},
            path TEXT NOT NULL UNIQUE,      -- the file, or archive.tar.gz!member
            kind TEXT NOT NULL,             -- images, labels, boxes, classes, hierarchy
            columns TEXT NOT NULL,          -- its header, comma-separated
            size BIGINT NOT NULL,
            mtime_ns BIGINT NOT NULL,
            rows BIGINT NOT NULL DEFAULT 0,
            bad_rows BIGINT NOT NULL DEFAULT 0,
            loaded_at TEXT NOT NULL,
            content_sha256 TEXT)            -- of the text read: the same content twice loads once""",
        *(_table(db, name, cols) for name, cols in TABLES.items()),
        "CREATE TABLE IF NOT EXISTS classes (mid TEXT PRIMARY KEY, name TEXT NOT NULL, file_id INTEGER NOT NULL)",
        # relationships and points (issue 23): the right side of `is`
        "CREATE TABLE IF NOT EXISTS attributes (mid TEXT PRIMARY KEY, name TEXT NOT NULL, file_id INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS class_hierarchy (
            parent TEXT NOT NULL, child TEXT NOT NULL,
            relation TEXT NOT NULL,         -- subcategory or part
            file_id INTEGER NOT NULL,
            PRIMARY KEY (parent, child, relation))""",
        f"""CREATE TABLE IF NOT EXISTS class_closure (
            ancestor TEXT NOT NULL, descendant TEXT NOT NULL,
            depth INTEGER NOT NULL,         -- fewest edges; 0: the class itself
            via_part {boolean} NOT NULL,    -- every way down crosses a part relation
            PRIMARY KEY (ancestor, descendant))""",
    ]
    if db.postgres:
        statements += [
            """CREATE OR REPLACE FUNCTION oi_hex(id BIGINT) RETURNS TEXT
               LANGUAGE SQL IMMUTABLE STRICT AS $$ SELECT lpad(to_hex(id), 16, '0') $$""",
            """CREATE OR REPLACE FUNCTION oi_id(hex TEXT) RETURNS BIGINT
               LANGUAGE SQL IMMUTABLE STRICT AS $$ SELECT ('x' || lpad(hex, 16, '0'))::bit(64)::bigint $$""",
        ]
    with db.transaction():
        for stmt in statements:
            db.execute(stmt)
        _add_columns(db)
        _views(db)


def _add_columns(db: Database) -> None:
    """Columns added after a database was first made: an older one gains them."""
    if db.postgres:
        db.execute("ALTER TABLE loaded_files ADD COLUMN IF NOT EXISTS content_sha256 TEXT")
        return
    have = {str(r[1]) for r in db.execute("PRAGMA table_info(loaded_files)")}
    if "content_sha256" not in have:
        db.execute("ALTER TABLE loaded_files ADD COLUMN content_sha256 TEXT")


def _views(db: Database) -> None:
    hex_b, hex_l = hex_id_sql(db, "b.image_id"), hex_id_sql(db, "l.image_id")
    box_cols = ", ".join(f"b.{c.name}" for c in BOXES[4:])
    views = {
        "boxes_named": f"""SELECT {hex_b} AS image_id, b.image_id AS id, b.source, b.mid, c.name AS class_name, b.confidence,
            {box_cols} FROM boxes b LEFT JOIN classes c ON c.mid = b.mid""",
        "labels_named": f"""SELECT {hex_l} AS image_id, l.image_id AS id, l.source, l.mid, c.name AS class_name, l.confidence,
            (l.source = 'machine') AS machine FROM labels l LEFT JOIN classes c ON c.mid = l.mid""",
    }
    for name, body in views.items():
        if db.postgres:
            db.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
        else:
            db.execute(f"CREATE VIEW IF NOT EXISTS {name} AS {body}")


INDEXES = (
    ("images_image_id", "images", "image_id"),
    ("labels_mid", "labels", "mid, image_id"),
    ("labels_image_id", "labels", "image_id"),
    ("boxes_mid", "boxes", "mid, image_id"),
    ("boxes_image_id", "boxes", "image_id"),
    # relationships and points (issue 23)
    ("relationships_image_id", "relationships", "image_id"),
    ("points_mid", "points", "mid, image_id"),
    ("masks_mid", "masks", "mid, image_id"),  # masks (issue 22)
    ("masks_image_id", "masks", "image_id"),
    ("class_closure_descendant", "class_closure", "descendant"),
    ("narratives_image_id", "narratives", "image_id"),  # narratives (issue 23)
)


def build_indexes(db: Database) -> list[str]:
    """The indexes, after the data (an index kept up row by row during a bulk load costs
    several times the load itself). Returns the ones it built."""
    built = []
    existing = set(_index_names(db))
    for name, table, cols in INDEXES:
        if name not in existing:
            db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})")
            built.append(name)
    if not db.postgres:
        db.execute("PRAGMA analysis_limit=10000")  # sample, as PostgreSQL does, not read every index whole
    db.execute("ANALYZE")
    return built


def _index_names(db: Database) -> list[str]:
    if db.postgres:
        return [r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")]
    return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]


def has_schema(db: Database) -> bool:
    if db.postgres:
        rows = db.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                          "AND table_name = 'loaded_files'")
    else:
        rows = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'loaded_files'")
    return bool(rows)


def has_table(db: Database, name: str) -> bool:
    """Whether a table exists: a database loaded before a table was added lacks it."""
    if db.postgres:
        rows = db.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                          "AND table_name = ?", (name,))
    else:
        rows = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return bool(rows)
