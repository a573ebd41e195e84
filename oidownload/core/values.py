"""Option values checked without click: bounded integers and numbers, durations,
choices and paths. One rule for the command line (commands/options.py wraps each in a
click type) and the API; a bad value raises BadValue with the sentence click prints."""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DAY = 86400.0
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadValue(ValueError):
    """A value an option refuses; the message is the sentence after "Invalid value for '--x': "."""


def invalid(hint: str, message: str) -> str:
    """The whole usage-error sentence, as click words it (hint: "'--timeout'")."""
    return f"Invalid value for {hint}: {message}"


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


def span(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _describe(lo: float, hi: float, lo_open: bool) -> str:
    return f"{lo}{'<' if lo_open else '<='}x<={hi}"


@dataclass(frozen=True)
class IntIn:
    """An integer in [lo, hi]: every integer option has both bounds."""

    lo: int
    hi: int

    def convert(self, value: object) -> int | None:
        try:
            number: int = int(value)  # type: ignore[call-overload]
        except ValueError:
            raise BadValue(f"{value!r} is not a valid integer range.") from None
        if number < self.lo or number > self.hi:
            raise BadValue(f"{number} is not in the range {_describe(self.lo, self.hi, False)}.")
        return number


@dataclass(frozen=True)
class IntOrAutoIn(IntIn):
    """An integer in [lo, hi], or 'auto' (None)."""

    def convert(self, value: object) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        return super().convert(value)


@dataclass(frozen=True)
class FloatIn:
    """A finite number in (lo, hi], or [lo, hi] with lo_ok: NaN and infinity are refused."""

    lo: float
    hi: float
    lo_ok: bool = False

    def convert(self, value: object) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except ValueError:
            raise BadValue(f"{value!r} is not a valid float range.") from None
        if (number <= self.lo if not self.lo_ok else number < self.lo) or number > self.hi:
            raise BadValue(f"{number} is not in the range {_describe(self.lo, self.hi, not self.lo_ok)}.")
        if not math.isfinite(number):
            raise BadValue(f"{value!r} is not a finite number")
        return number


@dataclass(frozen=True)
class DurationIn:
    """Seconds, or a duration like 45m, 7.5h, 11h45m or 12:00:00; more than zero (or at
    least zero, with zero_ok) and at most `most`."""

    most: float = DAY
    zero_ok: bool = False

    def convert(self, value: object) -> float:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
        if seconds is None:
            raise BadValue(f"{value!r} is not a duration like 90, 45m, 11h45m or 12:00:00")
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero_ok):
            raise BadValue(f"{value!r} must be {'zero or ' if self.zero_ok else ''}more than zero seconds")
        if seconds > self.most:
            raise BadValue(f"{value!r} is more than {span(self.most)}, the most this option takes")
        return seconds


@dataclass(frozen=True)
class OneOf:
    """One of `choices`, as click's Choice takes it (case-insensitive unless said), or an
    alias of one (jpg for jpeg)."""

    choices: tuple[str, ...]
    case_sensitive: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)

    def _norm(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def convert(self, value: object) -> str:
        if isinstance(value, str):
            value = self.aliases.get(value.lower(), value)
        wanted = self._norm(str(value))
        for choice in self.choices:
            if self._norm(choice) == wanted:
                return choice
        shown = ", ".join(repr(self._norm(c)) for c in self.choices)
        raise BadValue(f"{value!r} is not {'one of ' if len(self.choices) != 1 else ''}{shown}.")


@dataclass(frozen=True)
class PathIn:
    """A path, as click's Path(path_type=Path) takes it: one that exists must be of the
    allowed kind and readable; one that does not is fine (the command says more)."""

    dir_okay: bool = True

    def convert(self, value: object) -> Path:
        text = os.fspath(value)  # type: ignore[call-overload]
        name = "Path" if self.dir_okay else "File"
        try:
            st = os.stat(text)
        except OSError:
            return Path(text)
        if not self.dir_okay and stat.S_ISDIR(st.st_mode):
            raise BadValue(f"{name} {os.fsdecode(text)!r} is a directory.")
        if not os.access(text, os.R_OK):
            raise BadValue(f"{name} {os.fsdecode(text)!r} is not readable.")
        return Path(text)


ValueKind = IntIn | FloatIn | DurationIn | OneOf | PathIn
