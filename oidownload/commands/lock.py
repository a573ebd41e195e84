"""`oidownload lock`: the lock file and the Croissant card written again from the journals."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import state_dir_option
from oidownload.core.exits import ExitCode


@main.command("lock")
@click.argument("out")
@state_dir_option
@boundary
def lock_cmd(out: str, state_dir: Path | None) -> int:
    """Write OUT's lock file (oidownload.lock.jsonl.gz) and Croissant card (croissant.json)
    again from its journals: for an output made before they existed, or after `verify`.

    Every download writes both at its end; this is the same, on demand, and it also
    reads back and hashes the images journaled before hashes were kept.
    """
    from oidownload.provenance.lock import write_lock

    res = write_lock(out, state_dir, hash_missing=True)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items()))
    click.echo(f"{res.path}: {res.lines} images ({counts or 'none'}) in {res.seconds:.1f}s")
    return ExitCode.OK
