"""`oidownload metadata`: the official metadata files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import FOLDER, Int, opt
from oidownload.core.exits import ExitCode
from oidownload.runs import check_folder


@main.command()
@opt("--version", "version", scope="metadata", type=click.Choice(["v3", "v6", "v7"]), default="v7",
     help="Open Images version.")
@opt("-o", "--output", "dest", scope="metadata", type=FOLDER, default="metadata",
     help="Folder for the files.")
@opt("--base-url", scope="metadata", default="https://storage.googleapis.com/openimages/",
     help="Where the files are served from.")
@opt("--only", scope="metadata", multiple=True,
     help="Only files whose name matches this glob, e.g. 'validation-*' (repeatable).")
@opt("--list", "list_only", scope="metadata", is_flag=True, default=False, help="List the version's files and exit.")
@opt("--max-size-mb", scope="metadata", type=Int(1, 1 << 20), default=8192,
     help="Largest file accepted when the server announces no size (a chunked answer).")
@boundary
def metadata(version: str, dest: Path, base_url: str, only: tuple[str, ...], list_only: bool, max_size_mb: int) -> int:
    """Download the official metadata files (image lists, boxes, labels, classes).

    Interrupted downloads resume from their .part file; every file's size is checked
    against what the server announced.
    """
    from oidownload.dataset.metadata import download_metadata, select_files

    check_folder(dest, "-o/--output")
    if list_only:
        for rel in select_files(version, only):
            click.echo(base_url.rstrip("/") + "/" + rel)
        return ExitCode.OK
    results = download_metadata(version, dest, base_url=base_url, only=only, bars=sys.stderr.isatty(),
                                max_bytes=max_size_mb << 20)
    for r in results:
        click.echo(f"{r.state:<14}{r.size:>14}  {r.path}")
        if r.note:
            click.echo(f"oidownload: warning: {r.path} not written: {r.note}", err=True)
    return ExitCode.OK
