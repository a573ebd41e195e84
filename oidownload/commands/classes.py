"""`oidownload classes`: the class hierarchy as a tree with names."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import opt
from oidownload.core.errors import ConfigError
from oidownload.core.exits import ExitCode

# The hierarchy's root has no name in the class descriptions; the Open Images site calls it so.
ROOT_NAME = "Entity"


@main.command("classes")
@opt("--hierarchy", scope="classes", type=click.Path(path_type=Path, dir_okay=False),
     help="bbox_labels_600_hierarchy.json [default: the one loaded into --db].")
@opt("--class", "class_name", scope="classes", help="Show only the subtree of this class (a name or a MID).")
@opt("--class-descriptions", scope="classes", type=click.Path(path_type=Path, dir_okay=False),
     help="For the names of the MIDs.")
@opt("--db", scope="classes",
     help="A database with the classes and the hierarchy loaded (`oidownload db load`), instead of the files.")
@opt("--with-parts", scope="classes", is_flag=True, default=False,
     help="Also the parts (Part relations), as download's --with-parts selects them; marked [part].")
@opt("--no-parts", scope="classes", is_flag=True, default=False, hidden=True)  # the old default; parts need --with-parts now
@boundary
def classes_cmd(hierarchy: Path | None, class_name: str | None, class_descriptions: Path | None, db: str | None,
                with_parts: bool, no_parts: bool) -> int:
    """Print the class hierarchy as a tree with names, or the subtree of --class: exactly
    the classes `--class NAME --hierarchy FILE` selects (with --with-parts, its parts
    too, each marked [part])."""
    from oidownload.dataset.classes import MID_RE
    from oidownload.dataset.hierarchy import Hierarchy
    from oidownload.dataset.selection import class_names as names_of
    from oidownload.dataset.selection import open_annotations

    if no_parts and with_parts:
        raise ConfigError("--no-parts and --with-parts contradict each other")
    if hierarchy is None and db is None:
        raise ConfigError("give --hierarchy FILE, or a --db with the hierarchy loaded")
    with open_annotations((), db) as source:
        names = names_of(source, class_descriptions)
        loaded = getattr(source, "hierarchy", None)
        tree = Hierarchy.load(hierarchy) if hierarchy is not None else loaded() if loaded is not None else None
    if tree is None:
        raise ConfigError(f"the database {db} holds no class hierarchy: load bbox_labels_600_hierarchy.json into it "
                          "with `oidownload db load`, or give --hierarchy FILE")
    where = str(hierarchy) if hierarchy is not None else f"the hierarchy in {db}"
    starts = [tree.root]
    if class_name:
        if MID_RE.fullmatch(class_name.strip()):
            starts = [class_name.strip()]
        elif names is None:
            raise ConfigError("a class name needs --class-descriptions or --db; a MID like /m/07yv9 does not")
        else:
            starts = sorted(names.resolve([class_name]))
        missing = [m for m in starts if m not in tree]
        if missing:
            raise ConfigError(f"{class_name} ({', '.join(missing)}) is not in {where}")

    def name(mid: str) -> str:
        shown = names.name(mid) if names else mid
        return ROOT_NAME if mid == tree.root and shown == mid else shown

    for start in starts:
        for line in tree.render(name, start, with_parts=with_parts):
            click.echo(line)
    return ExitCode.OK
