"""Click commands → a frozen Config → run. The only place that prints fatal errors and
picks exit codes (see `oidownload --help` and the README's table); every command
catches its errors at one boundary (`boundary`) and prints one line.

Environment variables are scoped by command: `download` reads OIDOWNLOAD_<OPTION>;
every other command reads OIDOWNLOAD_<COMMAND>_<OPTION>, except the options that mean
exactly what they mean for download (`select`'s selection options, `--state-dir`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from oidownload import __version__
from oidownload.core.config import (
    AUTO_CEILING,
    AUTO_START,
    MAX_REDIRECTS,
    Config,
    Fallback,
    ImageConfig,
    LogFormat,
    NetConfig,
    Orientation,
    OutputConfig,
    OutputFormat,
    OutputKind,
    ProgressMode,
    ResizeMode,
    RunConfig,
    SelectConfig,
    SourceChoice,
    SourceConfig,
)
from oidownload.core.errors import ConfigError, OidownloadError
from oidownload.core.exits import RESUMABLE, SELECT_MEANING, VERIFY_MEANING, ExitCode, help_table
from oidownload.core.ids import is_image_id
from oidownload.engine.accel import check as check_pillow
from oidownload.engine.accel import pillow_build
from oidownload.engine.progress import log_line
from oidownload.exports import EXPORTERS
from oidownload.inputs.rows import input_name, is_stream, url_problem
from oidownload.state.reader import StateDir, default_state_dir, local_dest

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = help_table()
ENV_PREFIX = "OIDOWNLOAD_"


def envvar_name(long: str, scope: str | None = None) -> str:
    """OIDOWNLOAD_<OPTION> for download's options (and those shared with it), else
    OIDOWNLOAD_<COMMAND>_<OPTION>."""
    name = long.lstrip("-").upper().replace("-", "_")
    return ENV_PREFIX + (f"{scope.upper()}_" if scope else "") + name


class _Repeatable(click.Option):
    """A repeatable option whose environment variable holds one value a line: click
    splits at any whitespace, which made OIDOWNLOAD_CLASS="Coffee cup" two classes.
    Class names, headers and paths hold spaces and commas, never a newline."""

    def value_from_envvar(self, ctx: click.Context) -> Any:
        rv = self.resolve_envvar_value(ctx)
        if rv is None:
            return None
        values = [line.strip() for line in rv.splitlines()]
        return [v for v in values if v] or None


def opt(*decls: str, scope: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """click.option with its environment variable: OIDOWNLOAD_<NAME>, or with a scope
    (a command other than download) OIDOWNLOAD_<SCOPE>_<NAME>. A repeatable option's
    variable takes one value a line."""
    long = next(d for d in decls if d.startswith("--")).split("/")[0]
    kwargs.setdefault("envvar", envvar_name(long, scope))
    if kwargs.get("multiple"):
        kwargs.setdefault("cls", _Repeatable)
    kwargs.setdefault("show_envvar", True)
    if "default" in kwargs:
        kwargs.setdefault("show_default", True)
    return click.option(*decls, **kwargs)


# Paths we write to are checked by the command, not by click: a folder that is a file is
# the file system's state, not a usage error, and gets one line and exit 1.
FOLDER = click.Path(path_type=Path)
FILE_OUT = click.Path(path_type=Path)


# -- numbers: zero, negative and absurd values are usage errors ---------------------------

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DAY = 86400.0


# click's ParamType became generic in 8.2; subscript it for mypy only.
if TYPE_CHECKING:
    from oidownload.exports import ExportResult

    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType


def parse_duration(text: str) -> float | None:
    """Seconds from '90', '45m', '7.5h', '11h45m', '1d2h' or Slurm's '12:00:00'; None
    when the text is none of these."""
    text = text.strip().lower()
    clock = re.fullmatch(r"(\d+):(\d{2})(?::(\d{2}))?", text)
    if clock:
        h, m, s = clock.groups()
        return int(h) * 3600 + int(m) * 60 + int(s or 0) if s is not None else int(h) * 60 + int(m)
    if re.fullmatch(r"[0-9]*\.?[0-9]+", text):
        return float(text)
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([smhd])", text)
    if not parts or re.sub(r"([0-9]*\.?[0-9]+)\s*([smhd])", "", text).strip():
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _span(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class Duration(_ParamType):
    """Seconds, or a duration like 45m, 7.5h, 11h45m or 12:00:00; more than zero (or at
    least zero, with zero_ok) and at most `most`."""

    name = "duration"

    def __init__(self, most: float = DAY, *, zero_ok: bool = False) -> None:
        self.most = most
        self.zero_ok = zero_ok

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
        if seconds is None:
            self.fail(f"{value!r} is not a duration like 90, 45m, 11h45m or 12:00:00", param, ctx)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero_ok):
            self.fail(f"{value!r} must be {'zero or ' if self.zero_ok else ''}more than zero seconds", param, ctx)
        if seconds > self.most:
            self.fail(f"{value!r} is more than {_span(self.most)}, the most this option takes", param, ctx)
        return seconds


class Int(click.IntRange):
    """An integer in [lo, hi]: every integer option has both bounds."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(lo, hi)


class IntOrAuto(Int):
    """An integer in [lo, hi], or 'auto' (None)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        return super().convert(value, param, ctx)


class Float(click.FloatRange):
    """A finite number in (lo, hi], or [lo, hi] with lo_ok: NaN and infinity are refused."""

    def __init__(self, lo: float, hi: float, *, lo_ok: bool = False) -> None:
        super().__init__(lo, hi, min_open=not lo_ok)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _enum(cls: type[Any]) -> click.Choice[str]:
    return click.Choice([e.value for e in cls], case_sensitive=False)


class _Aliased(click.Choice):  # type: ignore[type-arg]
    """A choice that also takes the other usual spelling of a value (jpg for jpeg)."""

    def __init__(self, cls: type[Any], aliases: dict[str, str]) -> None:
        super().__init__([e.value for e in cls], case_sensitive=False)
        self.aliases = aliases

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = self.aliases.get(value.lower(), value)
        return super().convert(value, param, ctx)


# -- saying things on stderr, as text or JSON lines -------------------------------------

Say = Callable[..., None]


def say_to_stderr(log_format: LogFormat = LogFormat.TEXT) -> Say:
    """say(event, message, level=..., **fields): one line on stderr."""

    def say(event: str, message: str, *, level: str = "info", **fields: Any) -> None:
        click.echo(log_line(log_format, level, event, message, **fields), err=True)

    return say


def _requested_log_format(argv: Sequence[str]) -> LogFormat:
    """--log-format of a `download` command line (or its environment variable), read
    before click parses it, so that even a usage error comes out as JSON."""
    if not argv or argv[0] != "download":
        return LogFormat.TEXT
    value = os.environ.get(envvar_name("--log-format"), "text")
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--log-format" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--log-format="):
            value = arg.split("=", 1)[1]
    return LogFormat.JSON if value.lower() == "json" else LogFormat.TEXT


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line: the path, what went wrong, and what to do."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc)
    hint = {
        errno.ENOENT: "check the path (a folder on the way does not exist)",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder; give a file",
        errno.EACCES: "fix the permissions or pick another path",
        errno.EPERM: "fix the permissions or pick another path",
        errno.EROFS: "the file system is read-only; pick another path",
        errno.ENOSPC: "free some space and run the same command again",
        errno.EDQUOT: "free some space and run the same command again",
    }.get(exc.errno or 0, "")
    return _one_line(f"{where}: {what}" + (f"; {hint}" if hint else "") if where else what)


def quiet_exit_on_closed_pipe() -> NoReturn:
    """The reader of stdout went away (`| head -1`): not an error, as for cat or grep.
    stdout is pointed at /dev/null first, or the interpreter's last flush would fail
    and print a complaint of its own."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    sys.exit(ExitCode.OK)


def boundary(f: F) -> F:
    """The one place a command's errors end: a usage error exits 2 through click, a
    fatal error or any I/O error prints one line and exits with its code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        say = say_to_stderr(LogFormat(kwargs.get("log_format") or "text"))
        try:
            return f(*args, **kwargs)
        except BrokenPipeError:
            quiet_exit_on_closed_pipe()
        except ConfigError as exc:
            raise click.UsageError(_one_line(str(exc))) from None
        except OidownloadError as exc:
            say("fatal", _one_line(str(exc)), level="error", exit_code=exc.exit_code)
            sys.exit(exc.exit_code)
        except OSError as exc:
            say("fatal", describe_os_error(exc), level="error", exit_code=int(ExitCode.FATAL))
            sys.exit(ExitCode.FATAL)
        except KeyboardInterrupt:  # before a run's own handler is in place, or after it
            say("interrupted", "interrupted", level="error", exit_code=int(ExitCode.SIGINT))
            sys.exit(ExitCode.SIGINT)

    return wrapper  # type: ignore[return-value]


def _python_warnings_as_json() -> None:
    """With --log-format json, what Python itself would print on stderr (a library's
    warnings, logging records such as asyncio's) becomes JSON lines too."""
    import logging
    import warnings

    say = say_to_stderr(LogFormat.JSON)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        say("python_warning", _one_line(str(message)), level="warning", category=category.__name__,
            where=f"{filename}:{lineno}")

    class ToJson(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info"
            text = record.getMessage() + (" " + logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
            say("python_log", _one_line(text), level=level, logger=record.name)

    warnings.showwarning = show
    root = logging.getLogger()
    root.handlers[:] = [ToJson(logging.WARNING)]


class _Main(click.Group):
    """The group: prints a usage error as one JSON object when `download --log-format
    json` was asked for, and as click does otherwise."""

    # click itself turns a closed pipe into exit 1; --help into `| head` is caught first.
    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            quiet_exit_on_closed_pipe()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            quiet_exit_on_closed_pipe()

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            try:
                rv = super().main(argv, prog_name, complete_var, False, **extra)
            finally:
                # What is still buffered for a pipe goes now, where a closed one is caught.
                sys.stdout.flush()
        except BrokenPipeError:  # --help, a listing or a usage message into a closed pipe
            quiet_exit_on_closed_pipe()
        except click.ClickException as exc:
            if _requested_log_format(argv) is LogFormat.JSON:
                say_to_stderr(LogFormat.JSON)("usage", _one_line(exc.format_message()), level="error",
                                              exit_code=exc.exit_code)
            else:
                exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(ExitCode.FATAL)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Main, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="oidownload",
                      message=f"%(prog)s, version %(version)s\n{pillow_build().describe()}")
def main() -> None:
    """Download Open Images: verified, resized, sharded, resumable.

    Environment variables: `download` reads OIDOWNLOAD_<OPTION> (OIDOWNLOAD_RESIZE=640);
    the other commands read OIDOWNLOAD_<COMMAND>_<OPTION> (OIDOWNLOAD_ANNOTATIONS_FORMAT=yolo),
    except the options they share with download (select's selection options, --state-dir).
    """
    try:
        check_pillow()
    except OidownloadError as exc:
        say_to_stderr()("fatal", _one_line(str(exc)), level="error", exit_code=exc.exit_code)
        sys.exit(exc.exit_code)


def _apply(f: F, decorators: Sequence[Callable[[Any], Any]]) -> F:
    for d in reversed(decorators):
        f = d(f)
    return f


def selection_options(f: F) -> F:
    """Which rows: shared by `download` and `select`."""
    file_ = click.Path(path_type=Path, dir_okay=False)
    return _apply(f, [
        opt("--subset", "subsets", multiple=True, help="Only rows whose Subset is this (repeatable)."),
        opt("--limit", type=Int(1, 10**12),
            help="At most this many rows: the first ones, or a sample that is the same for a --seed."),
        opt("--seed", type=Int(0, 2**63 - 1), help="Sample --limit rows deterministically with this seed."),
        opt("--ids", "ids_file", type=file_, help="Only the ImageIDs listed in this file, one per line."),
        opt("--class", "class_names", multiple=True,
            help="Only images with this class (a name from --class-descriptions, or a MID); repeatable."),
        opt("--classes-file", type=file_, help="Class names or MIDs, one a line."),
        opt("--class-descriptions", type=file_, help="class-descriptions.csv (V3) or oidv6/7-class-descriptions.csv."),
        opt("--annotations", "annotation_files", multiple=True, type=file_,
            help="Box or image-label CSVs (V3 or V4+, plain or .gz) to select from; repeatable."),
        opt("--db", help="Select from this database (see `oidownload db load`) instead of --annotations: "
                         "a path, sqlite:///path or postgresql://user@host:port/dbname."),
        opt("--hierarchy", type=file_,
            help="bbox_labels_600_hierarchy.json: a class also selects its subcategories, at any depth."),
        opt("--no-expand", is_flag=True, default=False, help="With --hierarchy: select only the classes named."),
        opt("--with-parts", is_flag=True, default=False,
            help="With --hierarchy: also follow Part relations (the parts of a Human body...)."),
        opt("--limit-per-class", type=Int(1, 10**9),
            help="Up to N images per selected class, the same for a --seed whatever the row order; the union."),
        opt("--label-source", type=click.Choice(["human", "machine", "any"]), default="any",
            help="Which image-level labels count (boxes are all human)."),
        opt("--min-confidence", type=Float(0, 1, lo_ok=True), default=0.5,
            help="Labels below this confidence do not count (human negatives are 0)."),
        opt("--boxes-only", is_flag=True, default=False, help="Only images with a box of the class."),
        opt("--exclude-occluded", is_flag=True, default=False, help="Boxes marked IsOccluded do not count."),
        opt("--exclude-truncated", is_flag=True, default=False, help="Boxes marked IsTruncated do not count."),
        opt("--exclude-group-of", is_flag=True, default=False, help="Boxes marked IsGroupOf do not count."),
        opt("--exclude-depiction", is_flag=True, default=False, help="Boxes marked IsDepiction do not count."),
        opt("--exclude-inside", is_flag=True, default=False, help="Boxes marked IsInside do not count."),
    ])


def plan_selection(inputs: tuple[Path, ...], p: dict[str, Any], say: Say, ids: frozenset[str] | None = None) -> Any:
    """The id-level selection (--ids, classes, a seeded sample), worked out up front."""
    from oidownload.dataset.annotations import LabelSource
    from oidownload.dataset.classes import read_classes_file
    from oidownload.dataset.selection import ClassChoice, plan

    names = list(p["class_names"])
    if p["classes_file"]:
        names += read_classes_file(p["classes_file"])
    exclude = frozenset(
        attr for flag, attr in (("exclude_occluded", "IsOccluded"), ("exclude_truncated", "IsTruncated"),
                                ("exclude_group_of", "IsGroupOf"), ("exclude_depiction", "IsDepiction"),
                                ("exclude_inside", "IsInside"))
        if p[flag]
    )
    if p["seed"] is not None and p["limit"] is None and p["limit_per_class"] is None:
        raise ConfigError("--seed samples --limit rows or --limit-per-class images: give one of them too")
    if (p["no_expand"] or p["with_parts"]) and not p["hierarchy"]:
        raise ConfigError("--no-expand and --with-parts need --hierarchy")
    choice = ClassChoice(
        tuple(names), class_descriptions=p["class_descriptions"], annotations=tuple(p["annotation_files"]),
        db=p["db"], hierarchy=p["hierarchy"], expand=not p["no_expand"], with_parts=p["with_parts"],
        filter={"label_source": LabelSource(p["label_source"]), "min_confidence": p["min_confidence"],
                "boxes_only": p["boxes_only"], "exclude": exclude},
        limit_per_class=p["limit_per_class"],
    )
    result = plan(inputs, subsets=frozenset(p["subsets"]), ids=_read_ids(p["ids_file"]) if p["ids_file"] else ids,
                  choice=choice, limit=p["limit"], seed=p["seed"])
    for note in result.notes:
        say("selection", note)
    for warning in result.warnings:
        say("selection", warning, level="warning")
    return result


MAX_CONCURRENCY = 4096
DEFAULT_QUALITY = 90
MAX_PROCESSES = 1024
MAX_SHARDS = 1_000_000


def download_options(f: F) -> F:
    decorators = [
        # Not required by click: --from-lock can stand in for them (build_config says so).
        click.argument("inputs", nargs=-1, type=click.Path(path_type=Path)),
        opt("-o", "--output", "out", required=True,
            help="Output folder (OUT), or s3://bucket/prefix, az://container/prefix, gs://bucket/prefix; the journal "
                 "lives in OUT/.oidownload/ (for a store, under ~/.local/state/oidownload/) unless --state-dir says otherwise."),
        opt("--state-dir", type=FOLDER,
            help="Where the journal lives [default: OUT/.oidownload]."),
        opt("--output-format", type=_enum(OutputKind), default="files",
            help="files: OUT/<subset>/<abc>/<id>.<ext>; webdataset: tar shards of <id>.<ext> + <id>.json."),
        opt("--shard-size", type=Int(1, 10_000_000), default=10_000, help="Samples per webdataset shard."),
        opt("--fsync", is_flag=True, default=False,
            help="Sync each image to disk before the journal records it (survives a power cut; slower)."),
        selection_options,
        opt("--source", type=_enum(SourceChoice), default="original",
            help="original: the verified original; thumbnail: Thumbnail300KURL; auto: the thumbnail when there is one; "
                 "cvdf: the copy on the CVDF mirror (at most 1024 px, checked by its ETag)."),
        opt("--fallback", type=_enum(Fallback), default="none",
            help="cvdf: when the original is gone for good (404/410, unavailable, MD5 or size mismatch, refused "
                 "redirect), take the mirror's copy."),
        opt("--mirror-url", default="https://open-images-dataset.s3.amazonaws.com",
            help="Base URL of the CVDF mirror (<base>/<subset>/<ImageID>.jpg)."),
        opt("--user-agent", help="User-Agent sent with every request [default: oidownload/VERSION]."),
        opt("--header", "headers", multiple=True, help="An extra request header, 'Name: value' (repeatable)."),
        opt("--resize", type=Int(1, 65535), help="Target size in pixels (never upscales)."),
        opt("--resize-mode", type=_enum(ResizeMode), default="fit",
            help="fit: longest side <= N; fill: centre crop to NxN; none: keep the size."),
        opt("--format", "fmt", type=_Aliased(OutputFormat, {"jpg": "jpeg"}), default="jpeg",
            help="Output format (jpg is jpeg); keep writes the fetched bytes unchanged."),
        # No default here, so that a --quality given with png (which has none) can be told apart.
        opt("--quality", type=Int(1, 100), show_default=str(DEFAULT_QUALITY), help="JPEG/WebP quality."),
        opt("--orientation", type=_enum(Orientation), default="raw",
            help="raw: pixels as stored (the frame of the boxes); upright: turn by the Rotation column, or by EXIF when there is none."),
        opt("--keep-original", is_flag=True, default=False, help="Also keep the verified original bytes under OUT/original/."),
        opt("--concurrency", type=Int(1, MAX_CONCURRENCY), default=256, help="Requests in flight, in total."),
        opt("--per-host", type=IntOrAuto(1, MAX_CONCURRENCY), default="auto",
            help=f"Requests in flight per host: auto starts at {AUTO_START} and doubles while that raises the host's "
                 f"throughput, up to {AUTO_CEILING} (and --concurrency); N fixes it at N. Halved on 429/503."),
        opt("--processes", type=Int(1, MAX_PROCESSES), show_default="one per usable CPU",
            help="Image-processing worker processes; the default counts the CPUs this process may use (affinity mask, cgroup CPU quota)."),
        opt("--connect-timeout", type=Duration(), default="10", help="Seconds to connect."),
        opt("--read-timeout", type=Duration(), default="30", help="Seconds without a byte before giving up."),
        opt("--timeout", type=Duration(), default="120", help="Total seconds for one request."),
        opt("--deadline", type=Duration(), default="600", help="Total seconds for one image, all retries included."),
        opt("--retries", type=Int(0, 100), default=3, help="Retries of a retryable failure, with backoff."),
        opt("--retry-failed", is_flag=True, default=False, help="Also retry images whose failure was final (404, MD5...)."),
        opt("--max-body-mb", type=Float(0, 4096), default=64.0, help="Largest body accepted."),
        opt("--max-redirects", type=Int(0, MAX_REDIRECTS), default=5, help="Redirects followed per request (0: none)."),
        opt("--max-bytes-in-flight-mb", type=Float(1, 65536, lo_ok=True), default=128.0,
            help="Bodies being read or processed, in MB: bounds memory."),
        opt("--max-decode-mb", type=Float(1, 65536, lo_ok=True), default=512.0,
            help="Memory one image may take to decode and resize, estimated before decoding; over it: too_large."),
        opt("--grace", type=Duration(zero_ok=True), default="10",
            help="On SIGINT/SIGTERM, seconds to let in-flight images finish (0: stop at once)."),
        opt("--max-failure-rate", type=Float(0, 1, lo_ok=True),
            help="Exit 3 when more than this fraction of the job's images failed for good (0: any)."),
        opt("--max-runtime", type=Duration(366 * DAY), help="Stop cleanly after this long (exit 75), e.g. before a scheduler's limit."),
        opt("--num-shards", type=Int(1, MAX_SHARDS), help="Split the rows into this many shares (cluster runs)."),
        opt("--shard-index", type=Int(0, MAX_SHARDS - 1), help="This task's share; detected from Slurm/Kubernetes when absent."),
        opt("--resplit", is_flag=True, default=False,
            help="Allow another split of the rows than the one OUT already has (e.g. 8 tasks after 4); finished images are not fetched again."),
        opt("--log-format", type=_enum(LogFormat), default="text",
            help="json: everything on stderr as JSON lines (level, event, fields): progress, notes, warnings, errors."),
        opt("--progress", "progress_mode", type=_enum(ProgressMode), default="auto",
            help="auto: a bar on a terminal, log lines otherwise."),
        opt("--progress-interval", type=Duration(), default="5", help="Seconds between progress log lines."),
        opt("--placeholder-md5", multiple=True, help="Base64 MD5 of another 'photo unavailable' image (repeatable)."),
        opt("--metrics-port", type=Int(1, 65535),
            help="Serve Prometheus metrics on http://ADDR:PORT/metrics while the run lasts (README: Watching a cluster run)."),
        opt("--metrics-addr", default="127.0.0.1",
            help="Address for --metrics-port; 0.0.0.0 to let a scraper on another machine (or pod) in."),
        opt("--metrics-file", type=click.Path(path_type=Path, dir_okay=False),
            help="Rewrite the metrics in Prometheus' text format into this file every 2 s, atomically "
                 "(node_exporter's textfile collector: name it *.prom); {task} in it becomes the task, e.g. 3-of-8."),
        opt("--metrics-linger", type=Duration(),
            help="Keep serving /metrics this long after the run ends, so that the last scrape sees the final counts."),
        opt("--from-lock", type=click.Path(path_type=Path, dir_okay=False),
            help="Rebuild the dataset of this lock file (oidownload.lock.jsonl.gz): its ImageIDs, with its settings "
                 "(a conflicting option is refused); at the end each image is identical, different, "
                 "different_source or missing."),
    ]
    return _apply(f, decorators)


def _read_ids(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --ids {path}: {exc.strerror or exc}") from None
    ids = set()
    for n, line in enumerate(text.splitlines(), 1):
        token = line.strip().split(",")[0].strip()
        if not token or token.startswith("#") or token == "ImageID":
            continue
        if not is_image_id(token):
            raise ConfigError(f"{path}:{n}: {token[:40]!r} is not a 16-hex-digit ImageID")
        ids.add(token.lower())
    return frozenset(ids)


def _absolute_db(url: str | None) -> str | None:
    """The --db as the journal remembers it: a relative SQLite path made absolute, so
    `annotations` finds it from any folder."""
    if url is None:
        return None
    from oidownload.dataset.db import sqlite_path

    path = sqlite_path(url)
    return str(path.resolve()) if path is not None else url


def _contradictions(p: dict[str, Any], fmt: OutputFormat, say: Say) -> None:
    """Options that cannot all be meant: a usage error when one would be silently
    dropped and the output would not be what was asked, a warning when it is only moot."""
    orientation = Orientation(p["orientation"])
    if fmt is OutputFormat.KEEP and (p["resize"] is not None or orientation is Orientation.UPRIGHT):
        raise ConfigError("--format keep writes the fetched bytes unchanged: it cannot --resize or turn --orientation upright")
    if ResizeMode(p["resize_mode"]) is ResizeMode.FILL and p["resize"] is None:
        raise ConfigError("--resize-mode fill crops to NxN: give the size with --resize N")
    if p["keep_original"] and SourceChoice(p["source"]) is SourceChoice.THUMBNAIL:
        raise ConfigError("--keep-original keeps the verified original, which --source thumbnail never fetches: "
                          "drop one of them")
    if p["quality"] is not None and fmt in (OutputFormat.PNG, OutputFormat.KEEP):
        say("options", f"--quality applies to jpeg and webp; --format {fmt.value} ignores it", level="warning")


def build_config(p: dict[str, Any], say: Say | None = None) -> Config:
    say = say or (lambda *a, **k: None)
    lock_ids: frozenset[str] | None = None
    if p.get("from_lock") is not None:
        from oidownload.provenance.rebuild import apply_lock

        p = dict(p)
        p["from_lock"] = _lock_kept_apart(p)
        lock_ids = apply_lock(p, p["from_lock"], _SELECTION_KEYS)
        if not p["inputs"]:
            p["inputs"] = (_manifest_from_lock(p),)
    if not p["inputs"]:
        raise ConfigError("Missing argument 'INPUTS...': give the image lists to download (or --from-lock LOCK)")
    fmt = OutputFormat(p["fmt"])
    orientation = Orientation(p["orientation"])
    _contradictions(p, fmt, say)
    for md5 in p["placeholder_md5"]:
        if not re.fullmatch(r"[A-Za-z0-9+/]{22}==", md5):
            raise ConfigError(f"--placeholder-md5 {md5!r} is not a base64 MD5")
    net = NetConfig(
        headers=_headers(p["headers"]),
        **({"user_agent": p["user_agent"]} if p["user_agent"] else {}),
        concurrency=p["concurrency"], per_host=p["per_host"], connect_timeout=p["connect_timeout"],
        read_timeout=p["read_timeout"], total_timeout=p["timeout"], image_deadline=p["deadline"],
        retries=p["retries"], max_body_bytes=int(p["max_body_mb"] * 1024 * 1024), max_redirects=p["max_redirects"],
    )
    image = ImageConfig(
        resize=p["resize"], resize_mode=ResizeMode(p["resize_mode"]), format=fmt,
        quality=DEFAULT_QUALITY if p["quality"] is None else p["quality"],
        orientation=orientation, keep_original=p["keep_original"], placeholder_md5s=frozenset(p["placeholder_md5"]),
        max_decode_bytes=int(p["max_decode_mb"] * 1024 * 1024),
    )
    chosen = plan_selection(tuple(p["inputs"]), p, say, lock_ids)
    select = SelectConfig(
        subsets=frozenset(p["subsets"]),
        # A seeded sample is already cut to --limit; otherwise the first rows count.
        limit=None if p["seed"] is not None else p["limit"],
        retry_failed=p["retry_failed"], ids=chosen.ids,
        ids_from=chosen.ids_from if p["ids_file"] is None or chosen.ids_from != "--ids" else f"--ids {p['ids_file']}",
        classes=chosen.classes, annotations=tuple(a.resolve() for a in chosen.annotations),
        class_descriptions=chosen.class_descriptions.resolve() if chosen.class_descriptions else None,
        db=_absolute_db(chosen.db), options=_selection_options(p),
        from_lock=p["from_lock"].resolve() if p.get("from_lock") else None,
    )
    run = RunConfig(
        processes=p["processes"], max_bytes_in_flight=int(p["max_bytes_in_flight_mb"] * 1024 * 1024),
        grace=p["grace"], max_failure_rate=p["max_failure_rate"], max_runtime=p["max_runtime"],
        log_format=LogFormat(p["log_format"]), progress=ProgressMode(p["progress_mode"]),
        progress_interval=p["progress_interval"], resplit=p["resplit"],
        metrics_port=p["metrics_port"], metrics_addr=p["metrics_addr"], metrics_file=p["metrics_file"],
        metrics_linger=p["metrics_linger"] or 0.0,
    )
    out = str(p["out"])
    output = OutputConfig(out=out, state_dir=p["state_dir"] or default_state_dir(out), kind=OutputKind(p["output_format"]),
                          shard_size=p["shard_size"], fsync=p["fsync"])
    mirror = p["mirror_url"]
    if "://" not in mirror or mirror.startswith("file:"):
        # A local copy is fetched like the mirror itself, over HTTP: one line serves it.
        raise ConfigError(f"--mirror-url {mirror!r} is not an http(s) URL; to use a local copy of the mirror, serve "
                          "its folder: `python -m http.server 8000 --bind 127.0.0.1 --directory FOLDER` and pass "
                          "--mirror-url http://127.0.0.1:8000")
    # The rule every input URL meets, so that a mirror URL cannot fail each row later.
    why = url_problem(mirror) if re.fullmatch(r"[^\s?#]*", mirror) else "has a query or spaces"
    if why is not None:
        raise ConfigError(f"--mirror-url {mirror!r} {why}")
    source = SourceConfig(SourceChoice(p["source"]), mirror.rstrip("/"), Fallback(p["fallback"]) is Fallback.CVDF)
    if source.fallback and source.choice in (SourceChoice.CVDF, SourceChoice.THUMBNAIL):
        raise ConfigError(f"--fallback cvdf applies to --source original or auto, not {source.choice.value}")
    return Config(inputs=tuple(p["inputs"]), output=output, net=net, source=source, image=image, select=select, run=run)


_SELECTION_KEYS = ("subsets", "limit", "seed", "ids_file", "class_names", "classes_file", "class_descriptions",
                   "annotation_files", "db", "hierarchy", "no_expand", "with_parts", "limit_per_class", "label_source",
                   "min_confidence", "boxes_only", "exclude_occluded", "exclude_truncated", "exclude_group_of",
                   "exclude_depiction", "exclude_inside")


def _selection_options(p: dict[str, Any]) -> str:
    """The selection flags that were given, as JSON (paths made absolute), for the lock."""
    found: dict[str, Any] = {}
    explicit = p.get("explicit")
    for key in _SELECTION_KEYS:
        value = p.get(key)
        if value in (None, False, (), []) or (explicit is not None and key not in explicit):
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, tuple):
            value = [str(v.resolve()) if isinstance(v, Path) else v for v in value]
        found[key] = value
    return json.dumps(found, sort_keys=True)


def _lock_kept_apart(p: dict[str, Any]) -> Path:
    """--from-lock naming OUT's own lock (a rebuild resumed in place): a copy in the state
    dir is compared with, since the run's end replaces the lock itself; the first copy
    stays, so that every resume compares with the lock the rebuild started from."""
    import shutil

    from oidownload.provenance.lock import lock_path

    given: Path = p["from_lock"]
    state_dir = Path(p["state_dir"] or default_state_dir(str(p["out"])))
    own = lock_path(str(p["out"]), state_dir)
    try:
        if not own.exists() or not given.exists() or not os.path.samefile(given, own):
            return given
        kept = state_dir / "from.lock.jsonl.gz"
        if not kept.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(given, kept)
    except OSError as exc:
        raise ConfigError(f"cannot keep a copy of {given} in {state_dir}: {exc.strerror or exc}") from None
    return kept


def _manifest_from_lock(p: dict[str, Any]) -> Path:
    """The lock's URLs as an input list in the state dir, for --from-lock without INPUTS."""
    from oidownload.provenance.rebuild import write_manifest

    state_dir = p["state_dir"] or default_state_dir(str(p["out"]))
    path = Path(state_dir) / "from-lock-images.csv"
    try:
        write_manifest(p["from_lock"], path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    found = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()) or re.search(r"[\r\n\x00]", text):
            raise ConfigError(f"--header {value!r} is not 'Name: value'")
        found.append((name.strip(), text.strip()))
    return tuple(found)


def announce(say: Say, exit_code: int, message: str, resume: str) -> None:
    """The run's verdict on stderr, at the level its code deserves, with how to resume
    when running again carries on."""
    code = ExitCode(exit_code)
    if not message:
        return
    fields: dict[str, Any] = {"exit_code": int(code)}
    if code in RESUMABLE:
        message = f"{message}; to resume, {resume}"
        fields["resume"] = resume
    level = "info" if code == ExitCode.OK else "error" if code == ExitCode.TOO_MANY_FAILURES else "warning"
    say(code.name.lower(), message, level=level, **fields)


@main.command(epilog=EXIT_CODES)
@download_options
@boundary
def download(**params: Any) -> None:
    """Download the images listed in INPUTS (Open Images CSVs, plain or .gz) into OUT.

    Running the same command again resumes: finished images are skipped without a
    request, and retryable failures are tried again.
    """
    from oidownload.api import execute

    if LogFormat(params["log_format"]) is LogFormat.JSON:
        _python_warnings_as_json()
    command = shlex.join(["oidownload", *sys.argv[1:]])
    resume = f"run the same command again: {command}"
    piped = [input_name(p) for p in params["inputs"] if is_stream(p) or str(p).startswith("/dev/fd/")]
    if piped:  # read once: the same command line alone would find it empty or gone
        resume = (f"run the same command again, feeding it the same input ({', '.join(piped)} was read once; "
                  f"finished images are skipped): {command}")
    params["explicit"] = explicit_params(click.get_current_context())
    _, result = execute(params, None, resume)
    sys.exit(result.exit_code)


def explicit_params(ctx: click.Context) -> frozenset[str]:
    """The parameters given (on the command line, in the environment or to the API)
    rather than left at their defaults: --from-lock refuses those that disagree with it."""
    from click.core import ParameterSource

    return frozenset(name for name in ctx.params
                     if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT))


def check_folder(path: Path | None, what: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise OidownloadError(f"{what} {path} is a file, not a folder; pick another path")


def check_new_file(dest: Path) -> None:
    """An output file's folder must exist and be writable, and the file not be a folder:
    said in one line before any work, rather than found by the first write."""
    if dest.is_dir():
        raise OidownloadError(f"cannot write {dest}: it is a folder; give a file name")
    parent = dest.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe != parent:
        if probe.exists() and not probe.is_dir():
            raise OidownloadError(f"cannot write {dest}: {probe} is a file, not a folder; pick another path")
        missing = parent  # the first folder on the way that is not there, as the user wrote it
        while missing.parent != probe and missing.parent != missing:
            missing = missing.parent
        raise OidownloadError(f"cannot write {dest}: the folder {missing} does not exist; "
                              "create it first or pick another path")
    if not parent.is_dir():
        raise OidownloadError(f"cannot write {dest}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OidownloadError(f"cannot write {dest}: the folder {parent} is not writable; "
                              "fix its permissions or pick another path")


@main.command("select", epilog=help_table(SELECT_MEANING))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt("-o", "--output", "dest", scope="select", required=True, type=FILE_OUT,
     help="The new images CSV (same columns as the input); - for stdout.")
@selection_options
@boundary
def select_cmd(inputs: tuple[Path, ...], dest: Path, **p: Any) -> None:
    """Write the rows of INPUTS that a selection picks, as a new images CSV.

    Takes the same selection options as `download` (and their OIDOWNLOAD_* variables),
    so a selection can be checked, shared or split before anything is downloaded.
    An empty selection writes the header only, warns with the likely cause and exits 4.
    """
    say = say_to_stderr()
    n, why = run_select(inputs, dest, p, say)
    click.echo(f"{n} rows written to {'stdout' if str(dest) == '-' else dest}", err=True)
    if why is not None:
        say("nothing_selected", f"nothing selected: {why}", level="warning", exit_code=int(ExitCode.NOTHING_SELECTED))
        sys.exit(ExitCode.NOTHING_SELECTED)


def run_select(inputs: tuple[Path, ...], dest: Path, p: dict[str, Any], say: Say) -> tuple[int, str | None]:
    """`select`'s work, for the command and the API: (rows written, why nothing was
    selected or None)."""
    from oidownload.core.fsio import is_stream_target
    from oidownload.inputs.listing import empty_cause, write_selected

    if str(dest) == "-":
        dest = Path("/dev/stdout")  # `-o -`: the rows go to stdout, the counts to stderr
    if not is_stream_target(dest):
        check_new_file(dest)
    chosen = plan_selection(inputs, p, say)
    limit = None if p["seed"] is not None else p["limit"]
    n = write_selected(inputs, dest, subsets=frozenset(p["subsets"]), ids=chosen.ids, limit=limit)
    if n:
        return n, None
    ids_from = f"--ids {p['ids_file']}" if chosen.ids_from == "--ids" else chosen.ids_from
    why = empty_cause(inputs, subsets=frozenset(p["subsets"]), ids=chosen.ids, ids_from=ids_from)
    return 0, why or "no row of the input is well-formed"


def state_dir_option(f: F) -> F:
    """Shared with download: the same variable names the same folder."""
    return opt("--state-dir", type=FOLDER,
               help="The download's --state-dir, if it had one [default: OUT/.oidownload].")(f)


def remembered_annotations(state: StateDir, annotation_files: tuple[Path, ...], class_descriptions: Path | None,
                           class_names: tuple[str, ...]) -> tuple[list[Path], Path | None, frozenset[str] | None]:
    """(annotation files, class descriptions, classes) as given, or else as the download
    into OUT selected with (its journal remembers them); classes None: every class."""
    import json

    from oidownload.dataset.classes import ClassDescriptions

    remembered = [json.loads(v) for v in state.meta("selection")]
    files = list(annotation_files) or [Path(a) for m in remembered for a in m.get("annotations", [])]
    files = list(dict.fromkeys(files))
    descriptions = class_descriptions or next(
        (Path(m["class_descriptions"]) for m in remembered if m.get("class_descriptions")), None)
    classes: frozenset[str] | None = None
    if class_names:
        if descriptions is None and any(not n.startswith("/") for n in class_names):
            raise ConfigError("class names need --class-descriptions")
        classes = frozenset(ClassDescriptions.load(descriptions).resolve(class_names) if descriptions
                            else class_names)
    elif any(m.get("classes") for m in remembered):
        classes = frozenset(c for m in remembered for c in m.get("classes", []))
    return files, descriptions, classes


@main.command("annotations")
@click.argument("out")
@opt("--format", "fmt", scope="annotations", type=click.Choice(sorted(EXPORTERS)),
     default="coco", help="Output layout.")
@opt("--annotations", "annotation_files", scope="annotations", multiple=True,
     type=click.Path(path_type=Path, dir_okay=False),
     help="Box or label CSVs [default: those the download selected with].")
@opt("--db", scope="annotations", help="Export from this database instead of CSVs [default: the download's].")
@opt("--class-descriptions", scope="annotations", type=click.Path(path_type=Path, dir_okay=False),
     help="For category names [default: the download's, or the database's classes].")
@opt("--class", "class_names", scope="annotations", multiple=True,
     help="Only these classes (names or MIDs) [default: the download's].")
@opt("--hierarchy", scope="annotations", type=click.Path(path_type=Path, dir_okay=False),
     help="With --class: the classes' subcategories too (bbox_labels_600_hierarchy.json).")
@opt("--with-parts", scope="annotations", is_flag=True, default=False, help="With --hierarchy: their parts too.")
@opt("-d", "--dest", scope="annotations", type=FOLDER,
     help="Output folder [default: OUT/annotations].")
@opt("--images", "image_lists", scope="annotations", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Image lists (CSV) for the credits (attribution, coco, hf) [default: the download's inputs; give them "
          "when the download read a pipe].")
@state_dir_option
@boundary
def annotations_cmd(out: str, fmt: str, annotation_files: tuple[Path, ...], db: str | None,
                    class_descriptions: Path | None, class_names: tuple[str, ...], hierarchy: Path | None,
                    with_parts: bool, dest: Path | None, image_lists: tuple[Path, ...], state_dir: Path | None) -> None:
    """Annotations of the images downloaded into OUT, in the frame of the written files.

    \b
    csv:  the Open Images rows, filtered
    coco: coco.json, file names relative to OUT, boxes in pixels (and as polygons),
          each image's licence, author and flickr_url
    yolo: DEST/yolo/ for Ultralytics: images/<split>/ (links to the files),
          labels/<split>/, data.yaml
    hf:   OUT/<subset>/metadata.jsonl for Hugging Face's imagefolder (not in DEST:
          it must sit beside the images)
    attribution: ATTRIBUTION.csv and ATTRIBUTION.html (credits, grouped by licence)

    Widths and heights come from the journal (after resizing and turning). yolo and hf
    need the files output in a local folder.
    """
    res = run_annotations(out, fmt, annotation_files, db, class_descriptions, class_names, hierarchy, with_parts,
                          dest, image_lists, state_dir)
    if fmt == "attribution":
        click.echo(f"{res.images} images credited -> {res.dest}", err=True)
    else:
        click.echo(
            f"{res.images} images, {res.boxes} boxes, {res.labels} labels"
            + (f", {res.dropped} boxes outside a crop dropped" if res.dropped else "")
            + f" -> {res.dest}",
            err=True,
        )
    for note in res.notes:
        click.echo(f"oidownload: note: {note}", err=True)
    for f in res.files:
        click.echo(str(f))


def run_annotations(out: str, fmt: str, annotation_files: tuple[Path, ...], db: str | None,
                    class_descriptions: Path | None, class_names: tuple[str, ...], hierarchy: Path | None,
                    with_parts: bool, dest: Path | None, image_lists: tuple[Path, ...],
                    state_dir: Path | None) -> ExportResult:
    """`annotations`' work, for the command and the API."""
    import json

    from oidownload.dataset.hierarchy import Hierarchy, expand
    from oidownload.dataset.selection import class_names as names_of
    from oidownload.dataset.selection import open_annotations
    from oidownload.exports import export
    from oidownload.state.reader import StateDir

    if not EXPORTERS[fmt].beside_images:  # hf writes beside the images, not in a dest
        dest = local_dest(out, dest, "-d/--dest")
    check_folder(dest, "-d/--dest")
    remembered = [json.loads(v) for v in StateDir.open(out, state_dir).meta("selection")]
    files = list(annotation_files)
    if not files and db is None:
        files = [Path(a) for m in remembered for a in m.get("annotations", [])]
        db = next((m["db"] for m in remembered if m.get("db")), None)
    files = list(dict.fromkeys(files))
    descriptions = class_descriptions or next(
        (Path(m["class_descriptions"]) for m in remembered if m.get("class_descriptions")), None)
    with open_annotations(tuple(files), db) as source:
        names = names_of(source, descriptions)
        classes: frozenset[str] | None = None
        if class_names:
            if names is None and any(not n.startswith("/") for n in class_names):
                raise ConfigError("class names need --class-descriptions or --db")
            classes = frozenset(names.resolve(class_names) if names else class_names)
            if hierarchy is not None:
                classes = expand(sorted(classes), Hierarchy.load(hierarchy), with_parts=with_parts).mids
        elif hierarchy is not None:
            raise ConfigError("--hierarchy needs --class here: a download's classes are remembered expanded")
        elif any(m.get("classes") for m in remembered):
            classes = frozenset(c for m in remembered for c in m.get("classes", []))
        return export(out, fmt, source, dest=dest, names=names, classes=classes,
                      state_dir=state_dir, image_lists=list(image_lists) or None)


# The hierarchy's root has no name in the class descriptions; the Open Images site calls it so.
ROOT_NAME = "Entity"


@main.command("classes")
@opt("--hierarchy", scope="classes", type=click.Path(path_type=Path, dir_okay=False),
     help="bbox_labels_600_hierarchy.json [default: the one loaded into --db].")
@opt("--class", "class_name", scope="classes", help="Show only the subtree of this class (a name or a MID).")
@opt("--class-descriptions", scope="classes", type=click.Path(path_type=Path, dir_okay=False),
     help="For the names of the MIDs.")
@opt("--db", scope="classes",
     help="A database with the classes and the hierarchy loaded (`oidownload db load`), instead of the files.")
@opt("--with-parts", scope="classes", is_flag=True, default=False,
     help="Also the parts (Part relations), as download's --with-parts selects them; marked [part].")
@opt("--no-parts", scope="classes", is_flag=True, default=False, hidden=True)  # the old default; parts need --with-parts now
@boundary
def classes_cmd(hierarchy: Path | None, class_name: str | None, class_descriptions: Path | None, db: str | None,
                with_parts: bool, no_parts: bool) -> None:
    """Print the class hierarchy as a tree with names, or the subtree of --class: exactly
    the classes `--class NAME --hierarchy FILE` selects (with --with-parts, its parts
    too, each marked [part])."""
    from oidownload.dataset.classes import MID_RE
    from oidownload.dataset.hierarchy import Hierarchy
    from oidownload.dataset.selection import class_names as names_of
    from oidownload.dataset.selection import open_annotations

    if no_parts and with_parts:
        raise ConfigError("--no-parts and --with-parts contradict each other")
    if hierarchy is None and db is None:
        raise ConfigError("give --hierarchy FILE, or a --db with the hierarchy loaded")
    with open_annotations((), db) as source:
        names = names_of(source, class_descriptions)
        loaded = getattr(source, "hierarchy", None)
        tree = Hierarchy.load(hierarchy) if hierarchy is not None else loaded() if loaded is not None else None
    if tree is None:
        raise ConfigError(f"the database {db} holds no class hierarchy: load bbox_labels_600_hierarchy.json into it "
                          "with `oidownload db load`, or give --hierarchy FILE")
    where = str(hierarchy) if hierarchy is not None else f"the hierarchy in {db}"
    starts = [tree.root]
    if class_name:
        if MID_RE.fullmatch(class_name.strip()):
            starts = [class_name.strip()]
        elif names is None:
            raise ConfigError("a class name needs --class-descriptions or --db; a MID like /m/07yv9 does not")
        else:
            starts = sorted(names.resolve([class_name]))
        missing = [m for m in starts if m not in tree]
        if missing:
            raise ConfigError(f"{class_name} ({', '.join(missing)}) is not in {where}")

    def name(mid: str) -> str:
        shown = names.name(mid) if names else mid
        return ROOT_NAME if mid == tree.root and shown == mid else shown

    for start in starts:
        for line in tree.render(name, start, with_parts=with_parts):
            click.echo(line)


@main.group("db")
def db_group() -> None:
    """The annotations in a database (SQLite built in, PostgreSQL with oidownload[postgres])."""


@db_group.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt("--db", scope="db_load", default="openimages.sqlite",
     help="A path, sqlite:///path or postgresql://user@host:port/dbname (the password from PGPASSWORD or ~/.pgpass).")
@opt("--strict", scope="db_load", is_flag=True, default=False,
     help="A malformed row stops the load (its file is not loaded).")
@boundary
def db_load(paths: tuple[Path, ...], db: str, strict: bool) -> None:
    """Load image lists, labels, boxes, class descriptions and the class hierarchy.

    PATHS are files (.csv, .gz, the hierarchy JSON), folders of them, or the V3
    .tar.gz archives (read as they are, not extracted). A rerun skips the files
    already loaded and reloads the ones that changed; a killed load leaves no
    partial file behind. Then select with `--db` instead of `--annotations`.
    """
    from oidownload.dataset.db.load import load

    res = load(db, list(paths), strict=strict, log=lambda msg: click.echo(msg, err=True))
    loaded = [f for f in res.files if f.state in ("loaded", "reloaded")]
    rows = sum(f.rows for f in loaded)
    bad = sum(f.bad_rows for f in res.files)
    click.echo(f"{len(loaded)} file(s) loaded ({rows} rows, {bad} bad), "
               f"{sum(f.state == 'unchanged' for f in res.files)} unchanged, "
               f"{len(res.indexes)} index(es) built in {res.seconds:.1f} s -> {db}")


@main.command("gallery")
@click.argument("out")
@opt("-o", "--output", "dest", scope="gallery", type=FOLDER, help="Folder for the gallery [default: OUT/gallery].")
@opt("--page-size", scope="gallery", type=Int(1, 5000), default=100, help="Images per page of the grid.")
@opt("--annotations", "annotation_files", scope="gallery", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Box and image-label CSVs [default: those the download selected with].")
@opt("--class-descriptions", scope="gallery", type=click.Path(path_type=Path, dir_okay=False),
     help="For class names [default: the download's].")
@opt("--class", "class_names", scope="gallery", multiple=True,
     help="Draw only these classes (names or MIDs) [default: the download's].")
@opt("--all-classes", scope="gallery", is_flag=True, default=False,
     help="Draw every class's boxes, not only the download's classes.")
@opt("--images", "image_lists", scope="gallery", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Image lists (CSV) for the attribution [default: the download's inputs].")
@opt("--processes", scope="gallery", type=Int(1, MAX_PROCESSES), default=None,
     help="Worker processes for thumbnails and pages [default: one per usable CPU].")
@opt("--progress", "progress_mode", scope="gallery", type=_enum(ProgressMode), default="auto",
     help="auto: a bar on a terminal, log lines otherwise.")
@state_dir_option
@boundary
def gallery_cmd(out: str, dest: Path | None, page_size: int, annotation_files: tuple[Path, ...],
                class_descriptions: Path | None, class_names: tuple[str, ...], all_classes: bool,
                image_lists: tuple[Path, ...], processes: int | None, progress_mode: str, state_dir: Path | None) -> None:
    """A static HTML gallery of the images downloaded into OUT, with their boxes drawn,
    a page per image (boxes, labels, attribution) and the dataset's statistics.

    It works from disk (file://) with no server and no network: open DIR/index.html.
    Boxes are drawn in the frame of the written files, as the annotation exports are.
    """
    from oidownload.engine.progress import Progress
    from oidownload.gallery import build_gallery

    if all_classes and class_names:
        raise ConfigError("--all-classes and --class contradict each other")
    dest = local_dest(out, dest, "-o/--output")
    state = StateDir.open(out, state_dir)
    files, descriptions, classes = remembered_annotations(state, annotation_files, class_descriptions, class_names)
    progress = Progress(ProgressMode(progress_mode), LogFormat.TEXT, 5.0)
    res = build_gallery(
        state, dest, annotation_paths=files, class_descriptions=descriptions,
        classes=None if all_classes else classes, image_lists=list(image_lists) or None,
        page_size=page_size, processes=processes, progress=progress,
    )
    for note in res.notes:
        click.echo(f"oidownload: {note}", err=True)
    for image_id, why in res.failed[:10]:
        click.echo(f"oidownload: warning: {image_id}: {why}", err=True)
    if len(res.failed) > 10:
        click.echo(f"oidownload: warning: {len(res.failed) - 10} more images without a thumbnail", err=True)
    click.echo(
        f"{res.images} images, {res.boxes} boxes of {res.classes} classes, {res.labels} labels"
        + (f", {res.dropped} boxes outside a crop" if res.dropped else "") + f" -> {res.dest}",
        err=True,
    )
    click.echo(str(res.dest / "index.html"))


@main.command()
@opt("--version", "version", scope="metadata", type=click.Choice(["v3", "v6", "v7"]), default="v7",
     help="Open Images version.")
@opt("-o", "--output", "dest", scope="metadata", type=FOLDER, default="metadata",
     help="Folder for the files.")
@opt("--base-url", scope="metadata", default="https://storage.googleapis.com/openimages/",
     help="Where the files are served from.")
@opt("--only", scope="metadata", multiple=True,
     help="Only files whose name matches this glob, e.g. 'validation-*' (repeatable).")
@opt("--list", "list_only", scope="metadata", is_flag=True, default=False, help="List the version's files and exit.")
@opt("--max-size-mb", scope="metadata", type=Int(1, 1 << 20), default=8192,
     help="Largest file accepted when the server announces no size (a chunked answer).")
@boundary
def metadata(version: str, dest: Path, base_url: str, only: tuple[str, ...], list_only: bool, max_size_mb: int) -> None:
    """Download the official metadata files (image lists, boxes, labels, classes).

    Interrupted downloads resume from their .part file; every file's size is checked
    against what the server announced.
    """
    from oidownload.dataset.metadata import download_metadata, select_files

    check_folder(dest, "-o/--output")
    if list_only:
        for rel in select_files(version, only):
            click.echo(base_url.rstrip("/") + "/" + rel)
        return
    results = download_metadata(version, dest, base_url=base_url, only=only, bars=sys.stderr.isatty(),
                                max_bytes=max_size_mb << 20)
    for r in results:
        click.echo(f"{r.state:<14}{r.size:>14}  {r.path}")
        if r.note:
            click.echo(f"oidownload: warning: {r.path} not written: {r.note}", err=True)


@main.command()
@click.argument("out")
@opt("--json", "as_json", scope="status", is_flag=True, default=False, help="One JSON object instead of tables.")
@state_dir_option
@boundary
def status(out: str, as_json: bool, state_dir: Path | None) -> None:
    """Counts per status, bytes, rate and ETA across every journal in OUT.

    Works while runs are in progress (each cluster task is shown) and after they end.
    """
    import json

    from oidownload.core.records import STATUS_MEANING, checked_words
    from oidownload.engine.progress import human_bytes, human_seconds
    from oidownload.provenance.lock import lock_status
    from oidownload.state.report import out_status

    st = out_status(out, state_dir)
    lock = lock_status(out, state_dir)
    if as_json:
        click.echo(json.dumps({**st.as_json(), "lock": lock}))
        return
    click.echo(f"{out}: {st.total} images journaled, {human_bytes(sum(c.bytes for c in st.counts.values()))} fetched")
    click.echo(f"{'status':<15}{'count':>10}{'bytes':>12}  meaning")
    for name, c in st.counts.items():
        meaning = {s.value: m for s, m in STATUS_MEANING.items()}.get(name, "")
        click.echo(f"{name:<15}{c.n:>10}{human_bytes(c.bytes):>12}  {meaning}")
    if st.sources:
        click.echo("written: " + "; ".join(checked_words(st.sources, st.unchecked)))
    click.echo(f"{'shard':<12}{'state':<10}{'done':>10}{'planned':>10}{'rate/s':>9}{'ETA':>9}  host")
    for s in st.shards:
        planned = "?" if s.planned is None else str(s.planned)
        rate = "" if s.rate is None or s.state != "running" else f"{s.rate:.1f}"
        click.echo(f"{s.tag:<12}{s.state:<10}{s.done:>10}{planned:>10}{rate:>9}{human_seconds(s.eta) if s.eta is not None else '':>9}  {s.host} {s.pid or ''}")
        if s.hosts:
            click.echo(f"{'':<12}{s.hosts}")
    if any(s.state == "running" for s in st.shards):
        click.echo(f"total rate {st.rate:.1f} images/s, ETA {human_seconds(st.eta)}")
    if lock is not None:
        click.echo(f"lock: {lock}")


@main.command()
@click.argument("out")
@opt("-d", "--dest", scope="report", type=FOLDER,
     help="Folder for the CSVs [default: OUT/report].")
@state_dir_option
@boundary
def report(out: str, dest: Path | None, state_dir: Path | None) -> None:
    """Write success.csv and failure.csv: the input columns plus status, detail,
    http_status, attempts, source and location, for every journaled row in OUT; and
    conflicts.csv: rows skipped because an earlier row of their ImageID, with another
    OriginalURL or OriginalMD5, came first (the first row wins)."""
    from oidownload.state.report import write_report

    dest = local_dest(out, dest, "-d/--dest")
    check_folder(dest, "-d/--dest")
    res = write_report(out, dest, state_dir)
    say = say_to_stderr()
    for warning in res.warnings:
        say("report", warning, level="warning")
    click.echo(f"{res.ok} rows in {res.success}")
    click.echo(f"{res.failed} rows in {res.failure}")
    click.echo(f"{res.conflicted} rows in {res.conflicts}")
    from oidownload.provenance.lock import lock_path
    from oidownload.provenance.rebuild import META_KEY, write_csv
    from oidownload.state.reader import StateDir

    state = StateDir.open(out, state_dir)
    for old_lock in state.meta(META_KEY)[:1]:
        found = write_csv(res.success.parent / "from-lock.csv", Path(old_lock), lock_path(out, state.path))
        click.echo(f"{sum(found.values())} rows in {res.success.parent / 'from-lock.csv'} "
                   f"({', '.join(f'{n} {v}' for v, n in found.items())})")


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


def _verify_lock(out: str, lock_file: Path, processes: int | None, mode: ProgressMode, interval: float) -> None:
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
        sys.exit(ExitCode.SIGINT)
    finally:
        progress.close()
    for p in res.problems:
        where, why = (text.replace("\t", " ") for text in (p.where, p.why))
        click.echo(f"{p.kind}\t{p.image_id}\t{where}\t{why}")
    rate = res.checked / res.seconds if res.seconds > 0 else 0.0
    kinds = ", ".join(f"{res.count(k)} {k}" for k in ("missing", "extra", "different", "damaged"))
    click.echo(f"verify: {res.checked} images hashed against {lock_file} ({res.expected} in the lock) in "
               f"{res.seconds:.1f}s ({rate:.0f}/s): {kinds}", err=True)
    if res.problems:
        sys.exit(ExitCode.DAMAGED)


@main.command("lock")
@click.argument("out")
@state_dir_option
@boundary
def lock_cmd(out: str, state_dir: Path | None) -> None:
    """Write OUT's lock file (oidownload.lock.jsonl.gz) and Croissant card (croissant.json)
    again from its journals: for an output made before they existed, or after `verify`.

    Every download writes both at its end; this is the same, on demand, and it also
    reads back and hashes the images journaled before hashes were kept.
    """
    from oidownload.provenance.lock import write_lock

    res = write_lock(out, state_dir, hash_missing=True)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items()))
    click.echo(f"{res.path}: {res.lines} images ({counts or 'none'}) in {res.seconds:.1f}s")


@main.command(epilog=help_table(VERIFY_MEANING))
@click.argument("out")
@opt("--processes", scope="verify", type=Int(1, MAX_PROCESSES), show_default="one per usable CPU",
     help="Worker processes reading and decoding; the default counts the CPUs this process may use.")
@opt("--mark/--no-mark", scope="verify", default=True,
     help="Mark what is missing or damaged in the journal, so that the next download fetches exactly that again.")
@opt("--progress", "progress_mode", scope="verify", type=_enum(ProgressMode), default="auto",
     help="auto: a bar on a terminal, log lines otherwise.")
@opt("--progress-interval", scope="verify", type=Duration(), default="5",
     help="Seconds between progress log lines.")
@opt("--lock", "lock_file", scope="verify", type=click.Path(path_type=Path, dir_okay=False),
     help="Check OUT against this lock file instead of the journal: every image is hashed; missing, extra and "
          "different images are listed (no journal needed, nothing is marked).")
@state_dir_option
@boundary
def verify(out: str, processes: int | None, mark: bool, progress_mode: str, progress_interval: float,
           lock_file: Path | None, state_dir: Path | None) -> None:
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
        _verify_lock(out, lock_file, processes, ProgressMode(progress_mode), progress_interval)
        return
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
        sys.exit(ExitCode.SIGINT)
    finally:
        progress.close()
    rate = res.checked / res.seconds if res.seconds > 0 else 0.0
    click.echo(f"verify: {res.checked} images checked in {res.seconds:.1f}s ({rate:.0f}/s): "
               f"{res.checked - len(res.problems)} ok, {res.missing} missing, {res.damaged} damaged"
               + (f"; {res.originals} kept originals checked against OriginalMD5" if res.originals else ""), err=True)
    for death in res.deaths:
        click.echo(f"verify: {death} (out of memory?); it was replaced and its images checked again", err=True)
    if not res.problems:
        return
    if mark:
        click.echo(f"verify: {res.marked} rows marked damaged in the journal; run the same download again to fetch "
                   "exactly them", err=True)
    else:
        click.echo("verify: nothing marked (--no-mark)", err=True)
    sys.exit(ExitCode.DAMAGED)


@main.command()
@opt("-n", "--images", "n", scope="bench", type=Int(1, 1_000_000), default=500, help="Images per scenario.")
@opt("--scenario", "scenarios", scope="bench", multiple=True, type=click.Choice(["originals-fit640", "thumbnails-keep"]),
     help="Which to run (repeatable); default: both.")
@opt("--mix", scope="bench", type=click.Choice(["light", "openimages", "tiny"]), default="light",
     help="Originals' size mix: light (mean 1.3 MB), openimages (the real V3 mix, mean 2.1 MB), tiny.")
@opt("--latency-ms", scope="bench", type=Float(0, 60_000, lo_ok=True), default=0.0, help="Median latency the origin adds.")
@opt("--jitter", scope="bench", type=Float(0, 10, lo_ok=True), default=0.0, help="Lognormal sigma of the latency.")
@opt("--faults", scope="bench", default="", help="Fault rates, e.g. '404=0.01,503x2=0.01'; the kinds are FAULT_KINDS in oidownload.testing.origin; 'x2' fails only the first 2 requests of a URL.")
@opt("--processes", scope="bench", type=Int(1, MAX_PROCESSES), help="Passed to download.")
@opt("--concurrency", scope="bench", type=Int(1, MAX_CONCURRENCY), help="Passed to download.")
@opt("--serve", scope="bench", is_flag=True, default=False,
     help="Only serve the synthetic corpus (and write its images.csv) until Ctrl-C: a demo origin to download from.")
@opt("--manifest", scope="bench", type=FILE_OUT, default="bench-images.csv",
     help="With --serve: where to write the corpus's images.csv.")
@opt("--port", scope="bench", type=Int(0, 65535), default=0, help="With --serve: the port on 127.0.0.1 (0: any free one).")
@opt("--bandwidth-mbps", scope="bench", type=Float(0, 100_000),
     help="The origin's link: MB/s shared by all connections [default: no cap].")
@opt("--max-in-flight", scope="bench", type=Int(1, 100_000),
     help="With this many requests being served to one host, the origin refuses more (--overload) [default: no limit].")
@opt("--overload", scope="bench", type=click.Choice(["503", "429"]), default="503",
     help="How the origin refuses above --max-in-flight: 503 SlowDown (as S3) or 429 with Retry-After: 1.")
@opt("--hosts", scope="bench", type=Int(1, 254), default=1,
     help="Spread the images over this many hosts (127.0.0.1 .. 127.0.0.N), as Flickr does.")
@opt("--per-host", scope="bench", type=IntOrAuto(1, MAX_CONCURRENCY), help="Passed to download.")
@boundary
def bench(n: int, scenarios: tuple[str, ...], mix: str, latency_ms: float, jitter: float, faults: str,
          processes: int | None, concurrency: int | None, serve: bool, manifest: Path, port: int,
          bandwidth_mbps: float | None, max_in_flight: int | None, overload: str, hosts: int,
          per_host: int | None) -> None:
    """Measure the whole pipeline on this machine, against the built-in local origin.

    Starts the origin on 127.0.0.1, runs `oidownload download` on N synthetic images
    and prints one JSON line per scenario: images/s, MB/s, CPU ms per image (pool
    workers included) and peak memory. The first run generates and caches the images
    (a minute or two, with a progress bar; later runs start at once).

    With --serve it only serves the corpus until stopped, with its images.csv written
    to --manifest, for trying `oidownload download` against it by hand.
    """
    import dataclasses
    import json

    from oidownload.bench import DEFAULT_SCENARIOS, Load, run_scenario, serve_corpus

    bar = sys.stderr if sys.stderr.isatty() else None  # the first run's image generation
    if serve:
        check_new_file(manifest)
        serve_corpus(n, mix, latency_ms, jitter, faults, manifest, port, lambda m: click.echo(m, err=True), bar,
                     load=Load(bandwidth_mbps or 0.0, max_in_flight or 0, overload, hosts))
        return
    chosen = [s for s in DEFAULT_SCENARIOS if not scenarios or s.name in scenarios]
    for scn in chosen:
        scn = dataclasses.replace(scn, n=n, mix=mix, latency_ms=latency_ms, jitter=jitter, faults=faults,
                                  processes=processes, concurrency=concurrency,
                                  load=Load(bandwidth_mbps or 0.0, max_in_flight or 0, overload, hosts),
                                  extra_args=() if per_host is None else ("--per-host", str(per_host)))
        click.echo(f"bench: {scn.name}: {n} images ({mix} mix) ...", err=True)
        try:
            result = run_scenario(scn, log=lambda m: click.echo(m, err=True), bar=bar)
        except RuntimeError as exc:
            raise OidownloadError(str(exc)) from None
        click.echo(json.dumps(result))
        click.echo(
            f"bench: {scn.name}: {result['images_per_s']} images/s, {result['mb_per_s']} MB/s, "
            f"{result['cpu_ms_per_image']} ms CPU/image, peak RSS {result['peak_rss_mb']} MB "
            f"(tree {result['peak_tree_rss_mb']} MB)",
            err=True,
        )


if __name__ == "__main__":
    main()
