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
@opt("--narratives-base-url", scope="metadata", default=None,
     help="Where the localized narratives are served from [default: their own bucket; with another --base-url, "
          "BASE_URL/localized-narratives/annotations/].")
@opt("--only", scope="metadata", multiple=True,
     help="Only this group (see --list: masks and narratives-traces are fetched only when asked) or the files "
          "whose name matches this glob, e.g. 'validation-*' (repeatable).")
@opt("--list", "list_only", scope="metadata", is_flag=True, default=False,
     help="List the version's groups, files and known sizes, and exit.")
@opt("--max-size-mb", scope="metadata", type=Int(1, 1 << 20), default=8192,
     help="Largest file accepted when the server announces no size (a chunked answer).")
@boundary
def metadata(version: str, dest: Path, base_url: str, narratives_base_url: str | None, only: tuple[str, ...],
             list_only: bool, max_size_mb: int) -> int:
    """Download the official metadata files (image lists, boxes, labels, classes,
    segmentation, relationships, point labels, narratives).

    Interrupted downloads resume from their .part file; every file's size is checked
    against what the server announced.
    """
    from oidownload.dataset.metadata import download_metadata
    from oidownload.dataset.releases import listing

    check_folder(dest, "-o/--output")
    if list_only:
        for line in listing(version, only, base_url, narratives_base_url):
            click.echo(line)
        return ExitCode.OK
    results = download_metadata(version, dest, base_url=base_url, only=only, bars=sys.stderr.isatty(),
                                max_bytes=max_size_mb << 20, narratives_base_url=narratives_base_url)
    for r in results:
        click.echo(f"{r.state:<14}{r.size:>14}  {r.path}")
        if r.note:
            click.echo(f"oidownload: warning: {r.path} not written: {r.note}", err=True)
    return ExitCode.OK
