"""Fatal errors only. Per-image failures are `Outcome`s, never exceptions.

    OidownloadError          anything that ends the run; cli.py prints it and exits 1
     ├── InputError          an input file is missing, unreadable or has an unknown header
     ├── OutputError         OUT is unwritable, the disk is full, the journal is locked
     └── ConfigError         options that contradict each other (exit 2, like a usage error)
"""

from __future__ import annotations


class OidownloadError(Exception):
    """Base of every fatal error. The message says what happened and what to do."""

    exit_code = 1


class InputError(OidownloadError):
    pass


class OutputError(OidownloadError):
    pass


class ConfigError(OidownloadError):
    exit_code = 2
