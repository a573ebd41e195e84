"""`oidownload select`: the rows a selection picks, as a new images CSV (runs.run_select)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from oidownload.commands.group import boundary, main, say_to_stderr
from oidownload.commands.options import select_output, selection_options
from oidownload.core.exits import SELECT_MEANING, ExitCode, help_table
from oidownload.core.options import SelectionParams
from oidownload.runs import run_select


@main.command("select", epilog=help_table(SELECT_MEANING))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@select_output
@selection_options
@boundary
def select_cmd(inputs: tuple[Path, ...], dest: Path, **p: Any) -> int:
    """Write the rows of INPUTS that a selection picks, as a new images CSV.

    Takes the same selection options as `download` (and their OIDOWNLOAD_* variables),
    so a selection can be checked, shared or split before anything is downloaded.
    An empty selection writes the header only, warns with the likely cause and exits 4.
    """
    say = say_to_stderr()
    n, why = run_select(inputs, dest, cast(SelectionParams, p), say)
    click.echo(f"{n} rows written to {'stdout' if str(dest) == '-' else dest}", err=True)
    if why is not None:
        say("nothing_selected", f"nothing selected: {why}", level="warning", exit_code=int(ExitCode.NOTHING_SELECTED))
        return ExitCode.NOTHING_SELECTED
    return ExitCode.OK
