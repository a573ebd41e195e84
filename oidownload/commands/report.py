"""`oidownload report`: success.csv, failure.csv and conflicts.csv of a download."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main, say_to_stderr
from oidownload.commands.options import FOLDER, opt, state_dir_option
from oidownload.core.exits import ExitCode
from oidownload.runs import check_folder
from oidownload.state.reader import local_dest


@main.command()
@click.argument("out")
@opt("-d", "--dest", scope="report", type=FOLDER,
     help="Folder for the CSVs [default: OUT/report].")
@state_dir_option
@boundary
def report(out: str, dest: Path | None, state_dir: Path | None) -> int:
    """Write success.csv and failure.csv: the input columns plus status, detail,
    http_status, attempts, source and location, for every journaled row in OUT; and
    conflicts.csv: rows skipped because an earlier row of their ImageID, with another
    OriginalURL or OriginalMD5, came first (the first row wins)."""
    from oidownload.state.report import write_report

    dest = local_dest(out, dest, "-d/--dest")
    check_folder(dest, "-d/--dest")
    res = write_report(out, dest, state_dir)
    say = say_to_stderr()
    for warning in res.warnings:
        say("report", warning, level="warning")
    click.echo(f"{res.ok} rows in {res.success}")
    click.echo(f"{res.failed} rows in {res.failure}")
    click.echo(f"{res.conflicted} rows in {res.conflicts}")
    from oidownload.provenance.lock import lock_path
    from oidownload.provenance.rebuild import META_KEY, write_csv
    from oidownload.state.reader import StateDir

    state = StateDir.open(out, state_dir)
    for old_lock in state.meta(META_KEY)[:1]:
        found = write_csv(res.success.parent / "from-lock.csv", Path(old_lock), lock_path(out, state.path))
        click.echo(f"{sum(found.values())} rows in {res.success.parent / 'from-lock.csv'} "
                   f"({', '.join(f'{n} {v}' for v, n in found.items())})")
    return ExitCode.OK
