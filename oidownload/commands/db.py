"""`oidownload db load`: annotations into a database."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import opt
from oidownload.core.exits import ExitCode


@main.group("db")
def db_group() -> None:
    """The annotations in a database (SQLite built in, PostgreSQL with oidownload[postgres])."""


@db_group.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt("--db", scope="db_load", default="openimages.sqlite",
     help="A path, sqlite:///path or postgresql://user@host:port/dbname (the password from PGPASSWORD or ~/.pgpass).")
@opt("--strict", scope="db_load", is_flag=True, default=False,
     help="A malformed row stops the load (its file is not loaded).")
@opt("--narrative-traces", scope="db_load", is_flag=True, default=False,
     help="Localized narratives: also store each one's mouse trace (the full files only; large).")
@boundary
def db_load(paths: tuple[Path, ...], db: str, strict: bool, narrative_traces: bool) -> int:
    """Load image lists, labels, boxes, class descriptions and the class hierarchy.

    PATHS are files (.csv, .gz, the hierarchy JSON), folders of them, or the V3
    .tar.gz archives (read as they are, not extracted). A rerun skips the files
    already loaded and reloads the ones that changed; a killed load leaves no
    partial file behind. Then select with `--db` instead of `--annotations`.
    """
    from oidownload.dataset.db.load import load

    res = load(db, list(paths), strict=strict, log=lambda msg: click.echo(msg, err=True),
               narrative_traces=narrative_traces)
    loaded = [f for f in res.files if f.state in ("loaded", "reloaded")]
    rows = sum(f.rows for f in loaded)
    bad = sum(f.bad_rows for f in res.files)
    click.echo(f"{len(loaded)} file(s) loaded ({rows} rows, {bad} bad), "
               f"{sum(f.state == 'unchanged' for f in res.files)} unchanged, "
               f"{len(res.indexes)} index(es) built in {res.seconds:.1f} s -> {db}")
    return ExitCode.OK
