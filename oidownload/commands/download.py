"""`oidownload download`: the options of the table (core/options.py) → DownloadParams →
one run (runs.execute); its exit code is the run's."""

from __future__ import annotations

import shlex
import sys
from typing import Any, cast

import click

from oidownload.commands.group import EXIT_CODES, boundary, main, python_warnings_as_json
from oidownload.commands.options import download_options, explicit_params
from oidownload.core.config import LogFormat
from oidownload.core.options import DownloadParams
from oidownload.inputs.text import input_name, is_stream


@main.command(epilog=EXIT_CODES)
@download_options
@boundary
def download(**params: Any) -> int:
    """Download the images listed in INPUTS (Open Images CSVs, plain or .gz) into OUT.

    Running the same command again resumes: finished images are skipped without a
    request, and retryable failures are tried again.
    """
    from oidownload.runs import execute

    if LogFormat(params["log_format"]) is LogFormat.JSON:
        python_warnings_as_json()
    command = shlex.join(["oidownload", *sys.argv[1:]])
    resume = f"run the same command again: {command}"
    piped = [input_name(p) for p in params["inputs"] if is_stream(p) or str(p).startswith("/dev/fd/")]
    if piped:  # read once: the same command line alone would find it empty or gone
        resume = (f"run the same command again, feeding it the same input ({', '.join(piped)} was read once; "
                  f"finished images are skipped): {command}")
    params["explicit"] = explicit_params(click.get_current_context())
    _, result = execute(cast(DownloadParams, params), None, resume)
    return result.exit_code

