"""The exit codes and what each means: one table for `--help`, the README and the
Python API, and the rule that picks a finished run's code from what its job holds.

Pure: the pipeline hands in the counts, this module hands back a verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    OK = 0
    FATAL = 1
    USAGE = 2
    TOO_MANY_FAILURES = 3
    NOTHING_SELECTED = 4
    INCOMPLETE = 5  # as rclone's 5: a temporary error that another run may fix
    DAMAGED = 6  # verify only
    MAX_RUNTIME = 75  # EX_TEMPFAIL: stopped on time, rerun to resume
    SIGINT = 130
    SIGTERM = 143


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "finished: every selected image has a final outcome (dead links are expected)",
    ExitCode.FATAL: "fatal: unreadable input, unwritable output, full disk; the journal stays intact",
    ExitCode.USAGE: "usage error: an unknown option, a number out of range, options that clash",
    ExitCode.TOO_MANY_FAILURES: "finished, but the job's final failures are over --max-failure-rate",
    ExitCode.NOTHING_SELECTED: "nothing selected: no row of the input matches (a warning says why)",
    ExitCode.INCOMPLETE: "incomplete: retryable failures are left, or every image failed; run again",
    ExitCode.DAMAGED: "verify: written images are missing or damaged (listed; marked, so the next download fetches them)",
    ExitCode.MAX_RUNTIME: "stopped at --max-runtime; run the same command again to resume",
    ExitCode.SIGINT: "interrupted (SIGINT); state is saved, run the same command again to resume",
    ExitCode.SIGTERM: "terminated (SIGTERM); state is saved, run the same command again to resume",
}

# Codes after which the same command, run again, carries on.
RESUMABLE = frozenset({ExitCode.INCOMPLETE, ExitCode.MAX_RUNTIME, ExitCode.SIGINT, ExitCode.SIGTERM})


# The codes of the commands that are not a download: each says only what it can return.
SELECT_MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "the selected rows are written",
    ExitCode.FATAL: "fatal: unreadable input, unwritable output file",
    ExitCode.USAGE: MEANING[ExitCode.USAGE],
    ExitCode.NOTHING_SELECTED: "nothing selected: the CSV holds the header only (a warning says why)",
}
VERIFY_MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "every image the journal records as written is there and decodes",
    ExitCode.FATAL: "fatal: no journal, or a download of OUT is running",
    ExitCode.USAGE: MEANING[ExitCode.USAGE],
    ExitCode.DAMAGED: "written images are missing or damaged (listed; marked, so the next download fetches them)",
    ExitCode.SIGINT: "interrupted (SIGINT); nothing was marked",
}


def help_table(meanings: dict[ExitCode, str] | None = None) -> str:
    """The table as click prints it in an epilog (\\b keeps the lines as they are):
    download's, or the `meanings` of another command."""
    lines = ["\b", "Exit codes:"]
    lines += [f"  {int(code):<4} {meaning}" for code, meaning in (meanings or MEANING).items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class JobCounts:
    """One task's journal at the end of a run: the whole job so far, not only this run."""

    rows: int = 0
    ok: int = 0
    final_failures: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    code: ExitCode
    message: str = ""


def finished_verdict(job: JobCounts, retryable_left: int, max_failure_rate: float | None) -> Verdict:
    """The code of a run that read its whole share and was not stopped.

    - 3 when the job's final failures over all its rows pass --max-failure-rate. It wins
      over 5: rerunning turns retryable failures into successes or final failures, so
      this rate never falls by running again.
    - 5 when retryable failures of this run's selection are left, or when the job has
      rows and not one of them succeeded.
    """
    if max_failure_rate is not None and job.rows:
        rate = job.final_failures / job.rows
        if rate > max_failure_rate:
            return Verdict(ExitCode.TOO_MANY_FAILURES,
                           f"{job.final_failures} of the job's {job.rows} images failed for good ({rate:.1%}), "
                           f"over --max-failure-rate {max_failure_rate:.1%}")
    if retryable_left:
        return Verdict(ExitCode.INCOMPLETE,
                       f"incomplete: {retryable_left} image(s) failed in a way that may pass on another try")
    if job.rows and not job.ok:
        return Verdict(ExitCode.INCOMPLETE,
                       f"every one of the job's {job.rows} images failed; nothing was downloaded: check the "
                       "input's URLs, --source and the network")
    return Verdict(ExitCode.OK)
