"""click options from the option table (core/options.py) and the commands' own: the
environment variable of each, and the click types that check values by the table's
rules (core/values.py), so that the command line and the API refuse the same values
with the same words.

Environment variables are scoped by command: `download` reads OIDOWNLOAD_<OPTION>;
every other command reads OIDOWNLOAD_<COMMAND>_<OPTION>, except the options that mean
exactly what they mean for download (`select`'s selection options, `--state-dir`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from oidownload.core.options import DOWNLOAD_OPTIONS, SELECT_OUTPUT, SELECTION_OPTIONS, OptionSpec
from oidownload.core.values import (
    DAY,
    BadValue,
    DurationIn,
    FloatIn,
    IntIn,
    IntOrAutoIn,
    OneOf,
    PathIn,
    ValueKind,
)

F = TypeVar("F", bound=Callable[..., Any])

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


# -- click types over the table's rules: zero, negative and absurd values are usage errors --

# click's ParamType became generic in 8.2; subscript it for mypy only.
if TYPE_CHECKING:
    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType


def _fail(exc: BadValue, param: click.Parameter | None, ctx: click.Context | None) -> NoReturn:
    raise click.BadParameter(str(exc), ctx=ctx, param=param)


class Duration(_ParamType):
    """Seconds, or a duration like 45m, 7.5h, 11h45m or 12:00:00 (DurationIn)."""

    name = "duration"

    def __init__(self, most: float = DAY, *, zero_ok: bool = False) -> None:
        self.most = most
        self.zero_ok = zero_ok
        self.rule = DurationIn(most, zero_ok)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return self.rule.convert(value)
        except BadValue as exc:
            _fail(exc, param, ctx)


class Int(click.IntRange):
    """An integer in [lo, hi]: every integer option has both bounds (IntIn)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(lo, hi)
        self.rule: IntIn = IntIn(lo, hi)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.rule.convert(value)
        except BadValue as exc:
            _fail(exc, param, ctx)


class IntOrAuto(Int):
    """An integer in [lo, hi], or 'auto' (None)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(lo, hi)
        self.rule = IntOrAutoIn(lo, hi)


class Float(click.FloatRange):
    """A finite number in (lo, hi], or [lo, hi] with lo_ok: NaN and infinity are refused."""

    def __init__(self, lo: float, hi: float, *, lo_ok: bool = False) -> None:
        super().__init__(lo, hi, min_open=not lo_ok)
        self.rule = FloatIn(lo, hi, lo_ok=lo_ok)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.rule.convert(value)
        except BadValue as exc:
            _fail(exc, param, ctx)


class _Choice(click.Choice):  # type: ignore[type-arg]
    """One of the rule's choices (OneOf), also under the other usual spelling of a value
    (jpg for jpeg)."""

    def __init__(self, rule: OneOf) -> None:
        super().__init__(rule.choices, case_sensitive=rule.case_sensitive)
        self.rule = rule

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.rule.convert(value)
        except BadValue as exc:
            _fail(exc, param, ctx)


def choice_of(cls: type[Any]) -> click.Choice[str]:
    return _Choice(OneOf(tuple(e.value for e in cls)))


class _Path(click.Path):
    """A path (PathIn): one that exists must be of the allowed kind and readable."""

    def __init__(self, rule: PathIn) -> None:
        super().__init__(path_type=Path, dir_okay=rule.dir_okay)
        self.rule = rule

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.rule.convert(value)
        except BadValue as exc:
            _fail(exc, param, ctx)


# Paths we write to are checked by the command, not by click: a folder that is a file is
# the file system's state, not a usage error, and gets one line and exit 1.
FOLDER = _Path(PathIn())
FILE_OUT = _Path(PathIn())
FILE_IN = _Path(PathIn(dir_okay=False))


def click_type(rule: ValueKind | None) -> Any:
    """The click type that checks a value by `rule` (None: text, click's default)."""
    if rule is None:
        return None
    if isinstance(rule, IntOrAutoIn):
        return IntOrAuto(rule.lo, rule.hi)
    if isinstance(rule, IntIn):
        return Int(rule.lo, rule.hi)
    if isinstance(rule, FloatIn):
        return Float(rule.lo, rule.hi, lo_ok=rule.lo_ok)
    if isinstance(rule, DurationIn):
        return Duration(rule.most, zero_ok=rule.zero_ok)
    if isinstance(rule, OneOf):
        return _Choice(rule)
    return _Path(rule)


def spec_option(spec: OptionSpec) -> Callable[[F], F]:
    """The click option of one row of the table."""
    kwargs: dict[str, Any] = {"help": spec.help}
    kind = click_type(spec.value)
    if kind is not None:
        kwargs["type"] = kind
    if spec.flag:
        kwargs.update(is_flag=True, default=bool(spec.default))
    elif spec.default is not None:
        kwargs["default"] = spec.default
    if spec.multiple:
        kwargs["multiple"] = True
    if spec.required:
        kwargs["required"] = True
    if spec.show_default is not None:
        kwargs["show_default"] = spec.show_default
    return opt(*spec.flags, spec.dest, scope=spec.scope, **kwargs)


def _apply(f: F, decorators: Sequence[Callable[[Any], Any]]) -> F:
    for d in reversed(decorators):
        f = d(f)
    return f


def selection_options(f: F) -> F:
    """Which rows: shared by `download` and `select`."""
    return _apply(f, [spec_option(s) for s in SELECTION_OPTIONS])


def select_output(f: F) -> F:
    return spec_option(SELECT_OUTPUT)(f)


def download_options(f: F) -> F:
    return _apply(f, [
        # Not required by click: --from-lock can stand in for them (build_config says so).
        click.argument("inputs", nargs=-1, type=FOLDER),
        *(spec_option(s) for s in DOWNLOAD_OPTIONS),
    ])


def state_dir_option(f: F) -> F:
    """Shared with download: the same variable names the same folder."""
    return opt("--state-dir", type=FOLDER,
               help="The download's --state-dir, if it had one [default: OUT/.oidownload].")(f)


def explicit_params(ctx: click.Context) -> frozenset[str]:
    """The parameters given (on the command line or in the environment) rather than left
    at their defaults: --from-lock refuses those that disagree with it."""
    from click.core import ParameterSource

    return frozenset(name for name in ctx.params
                     if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT))
