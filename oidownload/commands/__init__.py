"""The command line: the group `main` (group.py) and one module per command, each
registered by being imported here (one line a command)."""

from oidownload.commands import (  # noqa: F401  (each registers its command on main)
    annotations,
    bench,
    classes,
    db,
    download,
    gallery,
    lock,
    metadata,
    report,
    select,
    status,
    verify,
)
from oidownload.commands.group import main

__all__ = ["main"]
