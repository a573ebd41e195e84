"""The Python API: `download(inputs, output, **options)` and `await download_async(...)`.

Options are the CLI's long option names in snake_case (`resize=640`, `class_=["Snowman"]`),
checked by the very rules of the command line (the OIDOWNLOAD_* variables do not apply).
Works from a script and from inside a running event loop (Jupyter): there the run gets
a thread and an event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import difflib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .exits import ExitCode

if TYPE_CHECKING:
    import click

    from .config import Config
    from .pipeline import RunResult, Stopper
    from .progress import Tally


@dataclass(frozen=True)
class DownloadResult:
    """What a run did: its exit code (the CLI's table), the tally of this run's outcomes
    by status, where the images went and what the run said at the end."""

    exit_code: int
    tally: Tally
    output: str
    state_dir: Path
    message: str
    wall: float
    cpu: float

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK

    @property
    def counts(self) -> dict[str, int]:
        """This run's outcomes per status, e.g. {"ok": 398, "http_4xx": 2}."""
        return {status.value: n for status, n in sorted(self.tally.by_status.items())}


def _command() -> click.Command:
    """download's parameters without their environment variables: an API call says
    everything it means in its arguments."""
    import click

    from .cli import download

    params = []
    for param in download.params:
        clone = copy.copy(param)
        clone.envvar = None
        params.append(clone)
    return click.Command("download", params=params)


def _keyword(param: click.Parameter) -> str:
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else str(param.name)


def _argv(options: Mapping[str, Any], command: click.Command) -> list[str]:
    import click

    by_keyword = {_keyword(p): p for p in command.params if isinstance(p, click.Option)}
    argv: list[str] = []
    for name, value in options.items():
        param = by_keyword.get(name.rstrip("_"))  # class_=...: `class` is a Python keyword
        if param is None:
            close = difflib.get_close_matches(name, by_keyword, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TypeError(f"download() got an unexpected keyword argument {name!r}{hint}")
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


def parameters(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], output: str | os.PathLike[str],
               options: Mapping[str, Any]) -> dict[str, Any]:
    """The same dict of parameters the CLI's `download` gets, or ConfigError / TypeError."""
    import click

    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if "output" in options:
        raise TypeError("download() got output twice")
    command = _command()
    argv = [*_argv({**options, "output": output}, command), "--", *(os.fspath(p) for p in paths)]
    try:
        with command.make_context("download", argv) as ctx:
            from .cli import explicit_params

            return {**ctx.params, "explicit": explicit_params(ctx)}
    except click.ClickException as exc:
        raise ConfigError(exc.format_message()) from None


def execute(params: dict[str, Any], stopper: Stopper | None, resume: str) -> tuple[Config, RunResult]:
    """One download from the CLI's parameters, with its verdict said at the end; the
    CLI and the API both run through here. `resume` says how to run it again."""
    from .cli import announce, build_config, check_folder
    from .config import LogFormat, ProgressMode
    from .pipeline import run_download
    from .progress import Progress
    from .shard import resolve_with_count

    check_folder(params["state_dir"], "--state-dir")
    progress = Progress(ProgressMode(params["progress_mode"]), LogFormat(params["log_format"]),
                        params["progress_interval"])
    try:
        cfg = build_config(params, progress.log)
        shard = resolve_with_count(params["shard_index"], params["num_shards"], os.environ)
        result = run_download(cfg, shard, progress, stopper)
    finally:
        progress.close()
    announce(progress.log, result.exit_code, result.message, resume)
    return cfg, result


def _run(params: dict[str, Any], stopper: Stopper | None) -> DownloadResult:
    cfg, result = execute(params, stopper, "call download() again with the same arguments")
    return DownloadResult(result.exit_code, result.tally, cfg.output.out, cfg.output.state_dir, result.message,
                          result.wall, result.cpu)


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
    and this call waits for it; an interrupt stops it cleanly the same way.
    """
    params = parameters(inputs, output, options)
    if not _loop_running() and threading.current_thread() is threading.main_thread():
        return _run(params, None)
    from .pipeline import Stopper

    stopper = Stopper()
    outcome: list[DownloadResult | BaseException] = []
    finished = threading.Event()

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
    while not finished.is_set():
        try:
            finished.wait()
        except KeyboardInterrupt:  # a notebook's interrupt: stop as on SIGINT, then return
            stopper.stop(ExitCode.SIGINT, "KeyboardInterrupt received")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


async def download_async(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                         output: str | os.PathLike[str], **options: Any) -> DownloadResult:
    """`await download_async(...)`: the same run, in a thread with its own event loop, so
    the caller's loop stays free. Cancelling the await stops the run cleanly (the
    journal is flushed, the same call resumes) and then raises CancelledError."""
    from .pipeline import Stopper

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
