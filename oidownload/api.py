"""The Python API: `download(inputs, output, **options)`, `await download_async(...)`,
`status(out)`, `select(inputs, output, **options)` and `annotations(out, format=...)`
(`export_annotations` here).

Options are each command's long option names in snake_case (`resize=640`,
`class_=["Snowman"]`), typed (DownloadOptions, SelectOptions) and checked by the option
table the command line is built from (core/options.py; the OIDOWNLOAD_* variables do not
apply), without click; errors are the commands' own, typed (ConfigError for what the
command line calls a usage error, InputError, OutputError). download works from a script
and from inside a running event loop (Jupyter): there the run gets a thread and an
event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from oidownload.core.exits import ExitCode
from oidownload.core.options import (
    DOWNLOAD_OPTIONS,
    INPUTS,
    SELECT_OUTPUT,
    SELECTION_OPTIONS,
    DownloadOptions,
    DownloadParams,
    OptionSpec,
    SelectionParams,
    SelectOptions,
    parse_options,
)
from oidownload.core.values import OneOf, PathIn

if TYPE_CHECKING:
    from oidownload.engine.progress import Tally
    from oidownload.engine.run import Stopper
    from oidownload.exports import ExportResult
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


Inputs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
Paths = str | os.PathLike[str]


def _paths(inputs: Inputs) -> list[str]:
    return [os.fspath(p) for p in ([inputs] if isinstance(inputs, str | os.PathLike) else list(inputs))]


def _inputs(inputs: Inputs) -> tuple[Path, ...]:
    return tuple(INPUTS.convert(p) for p in _paths(inputs))


def parameters(inputs: Inputs, output: str | os.PathLike[str], options: DownloadOptions) -> DownloadParams:
    """The parameters the CLI's `download` gets from these arguments (checked by the same
    option table), or ConfigError / TypeError."""
    if "output" in options:
        raise TypeError("download() got output twice")
    params: dict[str, Any] = parse_options("download", DOWNLOAD_OPTIONS, {**options, "output": os.fspath(output)})
    params["inputs"] = _inputs(inputs)
    if params["inputs"]:
        params["explicit"] = params["explicit"] | {"inputs"}
    return params  # type: ignore[return-value]


def _run(params: DownloadParams, stopper: Stopper | None) -> DownloadResult:
    from oidownload.core.errors import OidownloadError
    from oidownload.runs import execute

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


def select(inputs: Inputs, output: str | os.PathLike[str], **options: Unpack[SelectOptions]) -> SelectResult:
    """Writes the rows of `inputs` that a selection picks into the CSV `output`, as
    `oidownload select` does, with the same options as download's selection (class_,
    annotations, hierarchy, limit, seed...)."""
    from oidownload.runs import run_select

    if "output" in options:
        raise TypeError("select() got output twice")
    params = parse_options("select", (SELECT_OUTPUT, *SELECTION_OPTIONS), {**options, "output": os.fspath(output)})
    notes: list[str] = []
    warnings: list[str] = []

    def say(event: str, message: str, *, level: str = "info", **fields: Any) -> None:
        (warnings if level == "warning" else notes).append(message)

    dest: Path = params.pop("dest")
    selection: SelectionParams = params  # type: ignore[assignment]
    rows, why = run_select(_inputs(inputs), dest, selection, say)
    code = ExitCode.OK if why is None else ExitCode.NOTHING_SELECTED
    return SelectResult(rows, dest, int(code), why, tuple(notes), tuple(warnings))


def _checked(flags: tuple[str, ...], rule: PathIn | OneOf, values: Paths | Iterable[Paths] | None) -> tuple[Any, ...]:
    """Values of an `annotations` option, checked as its command line checks them."""
    spec = OptionSpec(flags, "", "", value=rule)
    return tuple(spec.convert(v) for v in ([] if values is None else _paths(values)))


def _one(flags: tuple[str, ...], rule: PathIn, value: Paths | None) -> Path | None:
    return next(iter(_checked(flags, rule, value)), None)


_FILE = PathIn(dir_okay=False)


# `oidownload.annotations` (this module cannot bind that name: `from __future__ import annotations`).
def export_annotations(out: str | os.PathLike[str], format: str = "coco", *,
                       annotations: Paths | Iterable[Paths] = (), db: str | None = None,
                       class_descriptions: Paths | None = None, class_: str | Iterable[str] = (),
                       hierarchy: Paths | None = None, with_parts: bool = False, dest: Paths | None = None,
                       images: Paths | Iterable[Paths] = (), state_dir: Paths | None = None,
                       narrative_traces: bool = False, with_narrative: bool = False,
                       narrative_contains: str | Iterable[str] = (),
                       relationship: str | Iterable[str] = (), predicate: str | Iterable[str] = (),
                       attributes: Paths | None = None) -> ExportResult:
    """The annotations of the images downloaded into OUT, as `oidownload annotations OUT
    --format FORMAT` writes them (exports.EXPORTERS: coco, yolo, yolo-seg, hf, csv, voc, attribution, webdataset), with its options.
    Returns what was written: counts, files and notes."""
    from oidownload.exports import EXPORTERS
    from oidownload.runs import run_annotations

    fmt = _checked(("--format",), OneOf(tuple(sorted(EXPORTERS)), case_sensitive=True), format)[0]
    return run_annotations(
        os.fspath(out), fmt, _checked(("--annotations",), _FILE, annotations), db,
        _one(("--class-descriptions",), _FILE, class_descriptions),
        tuple([class_] if isinstance(class_, str) else class_), _one(("--hierarchy",), _FILE, hierarchy),
        with_parts, _one(("-d", "--dest"), PathIn(), dest), _checked(("--images",), _FILE, images),
        _one(("--state-dir",), PathIn(), state_dir), narrative_traces=narrative_traces, with_narrative=with_narrative,
        narrative_words=tuple([narrative_contains] if isinstance(narrative_contains, str) else narrative_contains),
        relationships=tuple([relationship] if isinstance(relationship, str) else relationship),
        predicates=tuple([predicate] if isinstance(predicate, str) else predicate),
        attributes=_one(("--attributes",), _FILE, attributes))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def download(inputs: Inputs, output: str | os.PathLike[str], **options: Unpack[DownloadOptions]) -> DownloadResult:
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


async def download_async(inputs: Inputs, output: str | os.PathLike[str],
                         **options: Unpack[DownloadOptions]) -> DownloadResult:
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
