"""Where the hierarchy page's tree comes from: a `--hierarchy` file, else the class_hierarchy
table of a database (`--db`, or the one the download selected from), with class names
from the class descriptions or the database's classes table."""

from __future__ import annotations

from pathlib import Path

from oidownload.core.errors import ConfigError, OidownloadError
from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.hierarchy import Hierarchy
from oidownload.gallery.build import ClassTree


def class_tree(hierarchy: Path | None, db: str | None, remembered_db: str | None,
               class_descriptions: Path | None, notes: list[str]) -> ClassTree | None:
    """The tree, or None (no page). A database given with --db must hold a hierarchy; the
    download's own database is only looked at, and a failure to read it becomes a note."""
    names = ClassDescriptions.load(class_descriptions) if class_descriptions else None
    if hierarchy is not None:
        return ClassTree(Hierarchy.load(hierarchy), hierarchy.name, names)  # no local path in the page
    url = db or remembered_db
    if url is None:
        return None
    from oidownload.dataset.db.source import DbAnnotations

    try:
        with DbAnnotations.open(url) as source:
            tree = source.hierarchy()
            if tree is not None and names is None:
                names = source.class_descriptions()
    except OidownloadError as exc:
        if db is not None:
            raise
        notes.append(f"no hierarchy page from the download's database: {exc}")
        return None
    if tree is None:
        if db is not None:
            raise ConfigError(f"database {url} holds no class hierarchy: load bbox_labels_600_hierarchy.json "
                              f"into it with `oidownload db load`, or give the file with --hierarchy")
        return None
    return ClassTree(tree, "the database", names)
