"""Where an image comes from: one `Source` per --source value, in a registry. A source
turns a row into a `FetchPlan` (which URL, and what its body must be), says what the
body is checked against, and decides what a failed fetch leads to (its own status, a
stop, a second try, another source). The engine asks the plan's source and never
branches on which one it is.

    sources/flickr.py     original: the Flickr OriginalURL, checked by OriginalMD5;
                          `--fallback cvdf` goes to the mirror when it is gone for good
    sources/thumbnail.py  thumbnail: Thumbnail300KURL, nothing to check
    sources/auto.py       auto: the thumbnail when the row has one, else the original
    sources/cvdf.py       cvdf: the CVDF mirror, checked by the ETag

A new source is one new module with `@register`, and one import line at the end here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from oidownload.core import records
from oidownload.core.config import SourceConfig
from oidownload.core.errors import OidownloadError
from oidownload.core.records import Outcome, Row


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """One URL for one row, what its body must be, and the source that made it (which
    the engine asks about the body and about a failure)."""

    via: Source
    source: records.Source  # what the outcome records
    url: str
    expected_size: int | None = None  # checked against Content-Length before the body, then the body
    expected_md5: str | None = None  # base64, checked by the worker
    check_etag: bool = False  # fetched as stored; the ETag names the body's MD5 (when it is a plain one)


@dataclass(frozen=True, slots=True)
class Tried:
    """What came before an attempt at one row: when it started (the image's deadline
    counts from there), requests so far, the first source's failure when this is a
    fallback, and whether this plan was fetched a second time."""

    t0: float
    attempts: int = 0
    prior: Outcome | None = None
    refetched: bool = False


# What a body is checked against: the base64 MD5 (None: nothing), where that MD5 came
# from (for a mismatch's detail), and a note for an ok outcome.
Checks = tuple[str | None, str, str]


class Source(Protocol):
    """One way of fetching images, made per run from its SourceConfig. Subclasses get
    the defaults below: a plain source with nothing to say after the fetch."""

    name: str  # the --source value

    def plan(self, row: Row) -> FetchPlan | None:
        """The first fetch for a row; None when the row has no URL for this source."""
        ...

    def checks(self, plan: FetchPlan, etag: str | None) -> Checks:
        """A body came for `plan` (with this ETag): what the worker checks it against."""
        return plan.expected_md5, "OriginalMD5", ""

    def failed(self, outcome: Outcome) -> OidownloadError | None:
        """A fetch of this source's plan failed: its status may become the source's own.
        An error returned stops the run (the source refuses everything)."""
        return None

    def again(self, row: Row, plan: FetchPlan, outcome: Outcome, tried: Tried) -> tuple[FetchPlan, Tried] | None:
        """A final outcome of this source's plan: the next attempt at the row (a second
        try, another source), or None to record the outcome."""
        return None


_S = TypeVar("_S", bound=Callable[[SourceConfig], Source])
_SOURCES: dict[str, Callable[[SourceConfig], Source]] = {}


def register(name: str) -> Callable[[_S], _S]:
    """Class decorator: the source for `--source name`."""

    def add(factory: _S) -> _S:
        if name in _SOURCES:
            raise ValueError(f"two sources named {name!r}")
        _SOURCES[name] = factory
        return factory

    return add


def source_names() -> list[str]:
    return sorted(_SOURCES)


def open_source(cfg: SourceConfig, name: str | None = None) -> Source:
    """The source for the user's --source, or for `name` (a fallback)."""
    key = cfg.choice.value if name is None else name
    try:
        factory = _SOURCES[key]
    except KeyError:
        raise ValueError(f"no source named {key!r}; known: {', '.join(source_names())}") from None
    return factory(cfg)


# One line per source: importing a module registers it.
from oidownload.sources import auto, cvdf, flickr, thumbnail  # noqa: E402, F401
