"""`oidownload verify`: every written image checked against the journal, or against a
lock file (--lock)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import Duration, Int, choice_of, opt, state_dir_option
from oidownload.core.config import ProgressMode
from oidownload.core.exits import VERIFY_MEANING, ExitCode, help_table
from oidownload.core.options import MAX_PROCESSES


class _VerifyProgress:
    """verify's progress, with and without --lock: a bar on a terminal, a log line every
    interval otherwise; `close` ends the bar (before the problems are printed)."""

    def __init__(self, mode: ProgressMode, interval: float) -> None:
        if mode is ProgressMode.AUTO:
            mode = ProgressMode.BAR if sys.stderr.isatty() else ProgressMode.LOG
        self.mode, self.interval = mode, interval
        self.bar: Any = None
        self.last = time.monotonic()

    def show(self, checked: int, expected: int, postfix: str, line: str) -> None:
        if self.mode is ProgressMode.BAR:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=expected, unit="img", desc="verify", file=sys.stderr, dynamic_ncols=True)
            self.bar.n = checked
            self.bar.set_postfix_str(postfix, refresh=True)
        elif self.mode is ProgressMode.LOG and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            click.echo(f"verify: {checked}/{expected} {line}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _verify_lock(out: str, lock_file: Path, processes: int | None, mode: ProgressMode, interval: float) -> int:
    """`verify --lock`: one tab-separated line per problem (kind, ImageID, where, why),
    a summary on stderr, exit 6 when anything is wrong."""
    from oidownload.provenance.check import LockCheck, check_against_lock

    progress = _VerifyProgress(mode, interval)

    def show(r: LockCheck) -> None:
        progress.show(r.checked, r.expected, f"{len(r.problems)} problem(s)",
                      f"hashed, {len(r.problems)} problem(s)")

    try:
        res = check_against_lock(out, lock_file, processes=processes, on_progress=show)
    except KeyboardInterrupt:
        click.echo("oidownload: verify interrupted", err=True)
        return ExitCode.SIGINT
    finally:
        progress.close()
    for p in res.problems:
        where, why = (text.replace("\t", " ") for text in (p.where, p.why))
        click.echo(f"{p.kind}\t{p.image_id}\t{where}\t{why}")
    rate = res.checked / res.seconds if res.seconds > 0 else 0.0
    kinds = ", ".join(f"{res.count(k)} {k}" for k in ("missing", "extra", "different", "damaged"))
    click.echo(f"verify: {res.checked} images hashed against {lock_file} ({res.expected} in the lock) in "
               f"{res.seconds:.1f}s ({rate:.0f}/s): {kinds}", err=True)
    return ExitCode.DAMAGED if res.problems else ExitCode.OK


@main.command(epilog=help_table(VERIFY_MEANING))
@click.argument("out")
@opt("--processes", scope="verify", type=Int(1, MAX_PROCESSES), show_default="one per usable CPU",
     help="Worker processes reading and decoding; the default counts the CPUs this process may use.")
@opt("--mark/--no-mark", scope="verify", default=True,
     help="Mark what is missing or damaged in the journal, so that the next download fetches exactly that again.")
@opt("--progress", "progress_mode", scope="verify", type=choice_of(ProgressMode), default="auto",
     help="auto: a bar on a terminal, log lines otherwise.")
@opt("--progress-interval", scope="verify", type=Duration(), default="5",
     help="Seconds between progress log lines.")
@opt("--lock", "lock_file", scope="verify", type=click.Path(path_type=Path, dir_okay=False),
     help="Check OUT against this lock file instead of the journal: every image is hashed; missing, extra and "
          "different images are listed (no journal needed, nothing is marked).")
@state_dir_option
@boundary
def verify(out: str, processes: int | None, mark: bool, progress_mode: str, progress_interval: float,
           lock_file: Path | None, state_dir: Path | None) -> int:
    """Check every image the journal of OUT records as written: it is there (file, tar
    member or object), it decodes, its width, height and byte count are the journal's,
    and a kept original (--keep-original) still matches its OriginalMD5.

    Prints what is missing or damaged (tab-separated: kind, ImageID, where, why) and a
    summary, and exits 6 when there is any. Those rows become `damaged` in the journal,
    a retryable status: running the same download again fetches exactly them. Refuses
    to run while a download of OUT is running (--no-mark checks without marking).
    """
    from oidownload.provenance.verify import VerifyResult
    from oidownload.provenance.verify import verify as run_verify

    if lock_file is not None:
        return _verify_lock(out, lock_file, processes, ProgressMode(progress_mode), progress_interval)
    progress = _VerifyProgress(ProgressMode(progress_mode), progress_interval)

    def show(r: VerifyResult) -> None:
        progress.show(r.checked, r.expected, f"missing {r.missing}, damaged {r.damaged}",
                      f"checked, {r.missing} missing, {r.damaged} damaged")

    def found(r: VerifyResult) -> None:
        progress.close()
        for p in r.problems:
            where, why = (text.replace("\t", " ") for text in (p.where, p.why))  # one problem, four columns
            click.echo(f"{'missing' if p.missing else 'damaged'}\t{p.image_id}\t{where}\t{why}")

    try:
        # The list is printed before the journal is marked (found), which may wait on a busy journal.
        res = run_verify(out, state_dir, processes=processes, mark=mark, on_progress=show, on_found=found)
    except KeyboardInterrupt:
        click.echo("oidownload: verify interrupted; nothing was marked", err=True)
        return ExitCode.SIGINT
    finally:
        progress.close()
    rate = res.checked / res.seconds if res.seconds > 0 else 0.0
    click.echo(f"verify: {res.checked} images checked in {res.seconds:.1f}s ({rate:.0f}/s): "
               f"{res.checked - len(res.problems)} ok, {res.missing} missing, {res.damaged} damaged"
               + (f"; {res.originals} kept originals checked against OriginalMD5" if res.originals else ""), err=True)
    for death in res.deaths:
        click.echo(f"verify: {death} (out of memory?); it was replaced and its images checked again", err=True)
    if not res.problems:
        return ExitCode.OK
    if mark:
        click.echo(f"verify: {res.marked} rows marked damaged in the journal; run the same download again to fetch "
                   "exactly them", err=True)
    else:
        click.echo("verify: nothing marked (--no-mark)", err=True)
    return ExitCode.DAMAGED
