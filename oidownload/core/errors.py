"""Fatal errors only. Per-image failures are `Outcome`s, never exceptions.

    OidownloadError          anything that ends the run; the CLI prints it and exits 1
     ├── InputError          an input file is missing, unreadable or has an unknown header
     ├── OutputError         OUT is unwritable, the disk is full, the journal is locked
     │    └── JournalError   a journal write failed (`full`: the disk or quota is full)
     ├── ConfigError         options that contradict each other (exit 2, like a usage error)
     └── DatabaseError       the --db database cannot be reached, read or written

Other exceptions of the package never leave the module that raises them: the fetch's
HostHeld, the worker's TooLarge, the tar index's BadIndex, and fsio's SymlinkRefused
and NotRegular (OSErrors, which their callers turn into outcomes or one of the above).
"""

from __future__ import annotations


class OidownloadError(Exception):
    """Base of every fatal error. The message says what happened and what to do."""

    exit_code = 1


class InputError(OidownloadError):
    pass


class OutputError(OidownloadError):
    pass


class JournalError(OutputError):
    """A journal write failed; `full` when the disk (or quota) is full."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class ConfigError(OidownloadError):
    exit_code = 2


class DatabaseError(OidownloadError):
    """The database cannot be reached, read or written (exit 1)."""
