"""The click group `main` and the one place a command's errors end (`boundary`): a
usage error exits 2 through click, a fatal error or an I/O error prints one line and
becomes its exit code. Commands return their exit code; only the group exits (see
`oidownload --help` and the README's table)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from oidownload import __version__
from oidownload.commands.options import envvar_name
from oidownload.configure import Say
from oidownload.core.config import LogFormat
from oidownload.core.errors import ConfigError, OidownloadError
from oidownload.core.exits import ExitCode, help_table
from oidownload.engine.accel import check as check_pillow
from oidownload.engine.accel import pillow_build
from oidownload.engine.progress import log_line

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = help_table()



# -- saying things on stderr, as text or JSON lines -------------------------------------




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


def closed_pipe() -> int:
    """The reader of stdout went away (`| head -1`): not an error, as for cat or grep.
    stdout is pointed at /dev/null first, or the interpreter's last flush would fail
    and print a complaint of its own."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return ExitCode.OK


def quiet_exit_on_closed_pipe() -> NoReturn:
    sys.exit(closed_pipe())


def boundary(f: Callable[..., int]) -> Callable[..., int]:
    """The one place a command's errors end: a usage error goes to click (exit 2), a
    fatal error or any I/O error prints one line and becomes its exit code, which the
    command returns as it returns its own."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        say = say_to_stderr(LogFormat(kwargs.get("log_format") or "text"))
        try:
            return f(*args, **kwargs)
        except BrokenPipeError:
            return closed_pipe()
        except ConfigError as exc:
            raise click.UsageError(_one_line(str(exc))) from None
        except OidownloadError as exc:
            say("fatal", _one_line(str(exc)), level="error", exit_code=exc.exit_code)
            return exc.exit_code
        except OSError as exc:
            say("fatal", describe_os_error(exc), level="error", exit_code=int(ExitCode.FATAL))
            return ExitCode.FATAL
        except KeyboardInterrupt:  # before a run's own handler is in place, or after it
            say("interrupted", "interrupted", level="error", exit_code=int(ExitCode.SIGINT))
            return ExitCode.SIGINT

    return wrapper


def python_warnings_as_json() -> None:
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
        click.get_current_context().exit(exc.exit_code)

