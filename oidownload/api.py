"""The Python API: `download(inputs, output, **options)`, `await download_async(...)`,
`status(out)`, `select(inputs, output, **options)` and `annotations(out, format=...)`
(`export_annotations` here).

Options are each command's long option names in snake_case (`resize=640`,
`class_=["Snowman"]`), checked by the very rules of the command line (the OIDOWNLOAD_*
variables do not apply); errors are the commands' own, typed (ConfigError for what the
command line calls a usage error, InputError, OutputError). download works from a script
and from inside a running event loop (Jupyter): there the run gets a thread and an
event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import difflib
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oidownload.core.errors import ConfigError
from oidownload.core.exits import ExitCode

if TYPE_CHECKING:
    import click

    from oidownload.core.config import Config
    from oidownload.engine.progress import Tally
    from oidownload.engine.run import RunResult, Stopper
    from oidownload.exports.formats import ExportResult
    from oidownload.state.report import ShardStatus


@dataclass(frozen=True)
class JobStatus:
    """The whole job in OUT, as `oidownload status` shows it: every run and every task's
    journal, each ImageID once. `counts` and `bytes` are per status."""

    out: str
    counts: dict[str, int]
    bytes: dict[str, int]
    by_source: dict[str, int]  # written images per source (original, thumbnail, cvdf)
    shards: tuple[ShardStatus, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def final_failures(self) -> int:
        """Failures another run does not retry (404, a wrong MD5...); without --retry-failed."""
        from oidownload.core.records import Status, is_final

        return sum(n for k, n in self.counts.items() if k != "ok" and is_final(Status(k)))

    @property
    def retryable(self) -> int:
        return self.total - self.ok - self.final_failures


@dataclass(frozen=True)
class DownloadResult:
    """What a run did: its exit code (the CLI's table), the tally of this run's outcomes
    by status, where the images went and what the run said at the end; and `job`, the
    whole job in OUT after it (a rerun that had nothing left to do has counts == {}
    and job.counts with every image)."""

    exit_code: int
    tally: Tally
    output: str
    state_dir: Path
    message: str
    wall: float
    cpu: float
    job: JobStatus | None = None  # None only when OUT's journal could not be read back

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK

    @property
    def counts(self) -> dict[str, int]:
        """This run's outcomes per status, e.g. {"ok": 398, "http_4xx": 2}."""
        return {status.value: n for status, n in sorted(self.tally.by_status.items())}

    @property
    def job_counts(self) -> dict[str, int]:
        """The whole job's images per status, this run's and every earlier one's."""
        return dict(self.job.counts) if self.job is not None else {}


@dataclass(frozen=True)
class SelectResult:
    """What `select` wrote: `rows` rows into `output`; exit_code 4 (and `why`) when
    nothing was selected, as the command exits."""

    rows: int
    output: Path
    exit_code: int
    why: str | None
    notes: tuple[str, ...]
    warnings: tuple[str, ...]


def _command(source: click.Command | None = None) -> click.Command:
    """A command's parameters (download's by default) without their environment
    variables: an API call says everything it means in its arguments."""
    import click

    from oidownload.commands.cli import download

    source = source or download
    params = []
    for param in source.params:
        clone = copy.copy(param)
        clone.envvar = None
        params.append(clone)
    return click.Command(source.name, params=params)


def _keyword(param: click.Parameter) -> str:
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else str(param.name)


def _argv(options: Mapping[str, Any], command: click.Command) -> list[str]:
    import click

    by_keyword = {_keyword(p): p for p in command.params if isinstance(p, click.Option) and not p.hidden}
    argv: list[str] = []
    for name, value in options.items():
        param = by_keyword.get(name.rstrip("_"))  # class_=...: `class` is a Python keyword
        if param is None:
            close = difflib.get_close_matches(name, by_keyword, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TypeError(f"{command.name}() got an unexpected keyword argument {name!r}{hint}")
        flag = next(o for o in param.opts if o.startswith("--"))
        if value is None or (value is False and getattr(param, "is_flag", False)):
            continue
        if getattr(param, "is_flag", False):
            if value is not True:
                raise ConfigError(f"{name}={value!r}: give True or False")
            argv.append(flag)
            continue
        values = [value] if isinstance(value, str | os.PathLike) or not isinstance(value, Iterable) else list(value)
        if len(values) > 1 and not getattr(param, "multiple", False):
            raise ConfigError(f"{name} takes one value, got {len(values)}")
        for v in values:
            argv += [flag, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
    return argv


Inputs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def _parse(command: click.Command, options: Mapping[str, Any], arguments: list[str]) -> dict[str, Any]:
    """The dict of parameters the command gets from these options and arguments, or
    ConfigError (a usage error on the command line) / TypeError (an unknown keyword)."""
    import click

    argv = [*_argv(options, command), "--", *arguments]
    try:
        with command.make_context(str(command.name), argv) as ctx:
            if command.name != "download":
                return dict(ctx.params)
            from oidownload.commands.cli import explicit_params

            return {**ctx.params, "explicit": explicit_params(ctx)}
    except click.ClickException as exc:
        raise ConfigError(exc.format_message()) from None


def _paths(inputs: Inputs) -> list[str]:
    return [os.fspath(p) for p in ([inputs] if isinstance(inputs, str | os.PathLike) else list(inputs))]


def parameters(inputs: Inputs, output: str | os.PathLike[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The same dict of parameters the CLI's `download` gets, or ConfigError / TypeError."""
    if "output" in options:
        raise TypeError("download() got output twice")
    return _parse(_command(), {**options, "output": output}, _paths(inputs))


def execute(params: dict[str, Any], stopper: Stopper | None, resume: str) -> tuple[Config, RunResult]:
    """One download from the CLI's parameters, with its verdict said at the end; the
    CLI and the API both run through here. `resume` says how to run it again."""
    from oidownload.commands.cli import announce, build_config, check_folder
    from oidownload.core.config import LogFormat, ProgressMode
    from oidownload.core.shard import resolve_with_count
    from oidownload.engine.progress import Progress
    from oidownload.engine.run import run_download
    from oidownload.provenance.rebuild import finish_run
    from oidownload.sinks import is_remote

    check_folder(params["state_dir"], "--state-dir")
    if not is_remote(str(params["out"])):
        check_folder(Path(params["out"]), "-o/--output")
    progress = Progress(ProgressMode(params["progress_mode"]), LogFormat(params["log_format"]),
                        params["progress_interval"])
    try:
        cfg = build_config(params, progress.log)
        shard = resolve_with_count(params["shard_index"], params["num_shards"], os.environ)
        result = run_download(cfg, shard, progress, stopper, finish=finish_run)
    finally:
        progress.close()
    announce(progress.log, result.exit_code, result.message, resume)
    return cfg, result


def _run(params: dict[str, Any], stopper: Stopper | None) -> DownloadResult:
    from oidownload.core.errors import OidownloadError

    cfg, result = execute(params, stopper, "call download() again with the same arguments")
    try:
        job: JobStatus | None = status(cfg.output.out, state_dir=cfg.output.state_dir)
    except OidownloadError:  # the run's verdict stands even when its journal cannot be read back
        job = None
    return DownloadResult(result.exit_code, result.tally, cfg.output.out, cfg.output.state_dir, result.message,
                          result.wall, result.cpu, job)


def status(out: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None) -> JobStatus:
    """The whole job in OUT, as `oidownload status OUT` counts it (every run, every task;
    works while a download runs). InputError when OUT has no journal."""
    from oidownload.state.report import out_status

    st = out_status(os.fspath(out), Path(state_dir) if state_dir is not None else None)
    return JobStatus(str(out), {k: c.n for k, c in st.counts.items()}, {k: c.bytes for k, c in st.counts.items()},
                     dict(st.sources), tuple(st.shards))


def select(inputs: Inputs, output: str | os.PathLike[str], **options: Any) -> SelectResult:
    """Writes the rows of `inputs` that a selection picks into the CSV `output`, as
    `oidownload select` does, with the same options as download's selection (class_,
    annotations, hierarchy, limit, seed...)."""
    from oidownload.commands.cli import run_select, select_cmd

    if "output" in options:
        raise TypeError("select() got output twice")
    params = _parse(_command(select_cmd), {**options, "output": output}, _paths(inputs))
    notes: list[str] = []
    warnings: list[str] = []

    def say(event: str, message: str, *, level: str = "info", **fields: Any) -> None:
        (warnings if level == "warning" else notes).append(message)

    inputs_, dest = params.pop("inputs"), params.pop("dest")
    rows, why = run_select(inputs_, dest, params, say)
    code = ExitCode.OK if why is None else ExitCode.NOTHING_SELECTED
    return SelectResult(rows, dest, int(code), why, tuple(notes), tuple(warnings))


# `oidownload.annotations` (this module cannot bind that name: `from __future__ import annotations`).
def export_annotations(out: str | os.PathLike[str], format: str = "coco", **options: Any) -> ExportResult:
    """The annotations of the images downloaded into OUT, as `oidownload annotations OUT
    --format FORMAT` writes them (coco, yolo, hf, csv, attribution), with its options
    (annotations, db, class_descriptions, class_, hierarchy, with_parts, dest, images,
    state_dir). Returns what was written: counts, files and notes."""
    from oidownload.commands.cli import annotations_cmd, run_annotations

    params = _parse(_command(annotations_cmd), {**options, "format": format}, [os.fspath(out)])
    return run_annotations(**params)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def download(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], output: str | os.PathLike[str],
             **options: Any) -> DownloadResult:
    """Downloads the images listed in `inputs` into `output`, as `oidownload download`
    does, and returns a DownloadResult. Fatal errors raise InputError / OutputError,
    bad options ConfigError (unknown ones TypeError). Calling it again resumes.

    From a script the run uses this thread (Ctrl-C stops it cleanly: exit_code 130).
    Inside a running event loop (a notebook) it runs in a thread with its own loop,
    and this call waits for it; an interrupt stops it cleanly the same way. Under
    asyncio.run, Ctrl-C stops the run within --grace and then raises KeyboardInterrupt
    (the journal is saved; `await download_async(...)` keeps the loop free instead).
    """
    params = parameters(inputs, output, options)
    main_thread = threading.current_thread() is threading.main_thread()
    if not _loop_running() and main_thread:
        return _run(params, None)
    from oidownload.engine.run import Stopper

    stopper = Stopper()
    outcome: list[DownloadResult | BaseException] = []
    finished = threading.Event()
    # A notebook's interrupt arrives as KeyboardInterrupt (Python's own SIGINT handler).
    # asyncio.run installs a handler of its own that only cancels its task, which cannot
    # happen while this call blocks its loop: Ctrl-C would wait for the whole download.
    # So while we wait, SIGINT stops the run (within --grace), and then it is raised.
    interrupted = threading.Event()
    previous: Any = None
    current = signal.getsignal(signal.SIGINT)  # None: set outside Python, and then not ours to replace
    if main_thread and current is not None and current not in (signal.default_int_handler, signal.SIG_IGN):
        def on_sigint(signum: int, frame: object) -> None:
            interrupted.set()
            stopper.stop(ExitCode.SIGINT, "SIGINT received")

        previous = signal.signal(signal.SIGINT, on_sigint)

    def work() -> None:
        try:
            outcome.append(_run(params, stopper))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)
        finally:
            finished.set()

    threading.Thread(target=work, name="oidownload", daemon=True).start()
    # An Event, not Thread.join: a KeyboardInterrupt inside join can leave the thread
    # marked as stopped while it still runs (before Python 3.13).
    try:
        while not finished.is_set():
            try:
                finished.wait(0.2)  # a timeout, so that the signal handler runs promptly
            except KeyboardInterrupt:  # a notebook's interrupt: stop as on SIGINT, then return
                stopper.stop(ExitCode.SIGINT, "KeyboardInterrupt received")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    if interrupted.is_set():
        # The run stopped cleanly and its journal is saved (the same call resumes); the
        # interrupt goes on to the caller, as Ctrl-C does in any script.
        raise KeyboardInterrupt("download() interrupted; the same call resumes")
    return outcome[0]


async def download_async(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                         output: str | os.PathLike[str], **options: Any) -> DownloadResult:
    """`await download_async(...)`: the same run, in a thread with its own event loop, so
    the caller's loop stays free. Cancelling the await stops the run cleanly (the
    journal is flushed, the same call resumes) and then raises CancelledError."""
    from oidownload.engine.run import Stopper

    params = parameters(inputs, output, options)
    stopper = Stopper()
    future = asyncio.get_running_loop().run_in_executor(None, _run, params, stopper)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stopper.stop(ExitCode.SIGINT, "the await was cancelled")
        with contextlib.suppress(Exception):
            await future
        raise
