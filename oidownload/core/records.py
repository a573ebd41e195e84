"""The records every stage shares: a validated input `Row`, a `BadRow`, and the one
`Outcome` each image ends as, with the `Status` taxonomy (which statuses are final).

Pure data: no I/O, importable from the pool workers and the reader alike.
"""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass


class Status(enum.StrEnum):
    """What became of one row. The order here is the order of summaries."""

    OK = "ok"
    HTTP_4XX = "http_4xx"
    HTTP_429 = "http_429"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TRUNCATED = "truncated"
    DNS = "dns"
    SIZE_MISMATCH = "size_mismatch"
    MD5_MISMATCH = "md5_mismatch"
    UNAVAILABLE = "unavailable"
    CORRUPT = "corrupt"
    TOO_LARGE = "too_large"
    BAD_REDIRECT = "bad_redirect"
    NO_URL = "no_url"
    NOT_IN_MIRROR = "not_in_mirror"
    MIRROR_REFUSED = "mirror_refused"
    BAD_ROW = "bad_row"
    WRITE_ERROR = "write_error"
    WORKER_DIED = "worker_died"
    DAMAGED = "damaged"
    # masks (issue 22): a mask's own statuses (its image keeps its own, usually ok)
    MASK_MISSING = "mask_missing"
    MASK_CRC = "mask_crc"


# A retryable status is a fault of the moment (the network, the server's load, our
# disk); everything else is an answer that asking again will not change.
RETRYABLE: frozenset[Status] = frozenset(
    {
        Status.HTTP_429,
        Status.HTTP_5XX,
        Status.TIMEOUT,
        Status.CONNECTION,
        Status.TRUNCATED,
        Status.DNS,
        Status.MIRROR_REFUSED,
        Status.WRITE_ERROR,
        Status.DAMAGED,
    }
)

# One line per status, for `--help`, `status` and the README's table.
STATUS_MEANING: dict[Status, str] = {
    Status.OK: "written (what was checked, per source, is said below)",
    Status.HTTP_4XX: "the server answered 4xx (404, 410, 403...): the image is gone",
    Status.HTTP_429: "the server kept answering 429 Too Many Requests",
    Status.HTTP_5XX: "the server kept answering 5xx",
    Status.TIMEOUT: "connect, read or total deadline passed",
    Status.CONNECTION: "connection refused or reset",
    Status.TRUNCATED: "the body ended early (before its Content-Length or its last chunk)",
    Status.DNS: "the host name did not resolve",
    Status.SIZE_MISMATCH: "the original's size is not OriginalSize",
    Status.MD5_MISMATCH: "the body's MD5 is not OriginalMD5 (or, for a mirror copy, its ETag)",
    Status.UNAVAILABLE: "Flickr's 'photo unavailable' placeholder, not the image",
    Status.CORRUPT: "the body is not a decodable image",
    Status.TOO_LARGE: "the body or the decoded image is over the cap",
    Status.BAD_REDIRECT: "too many redirects, or a redirect to a non-http(s) URL",
    Status.NO_URL: "the row has no URL for the chosen --source",
    Status.NOT_IN_MIRROR: "the CVDF mirror has no copy (404); with --fallback, the original's failure is in the detail",
    Status.MIRROR_REFUSED: "the mirror answered 403 Forbidden: not the image's fault, tried again next run",
    Status.BAD_ROW: "the input row is malformed (see detail for file:line)",
    Status.WRITE_ERROR: "the file could not be written",
    Status.WORKER_DIED: "the worker processing the image died, twice (the out-of-memory killer?)",
    Status.DAMAGED: "`verify`, or a download resuming a shard, found the written image missing or damaged: the next download fetches it again",
    Status.MASK_MISSING: "a mask (--masks) that its zip (or folder) does not hold",
    Status.MASK_CRC: "a mask whose bytes do not match the CRC-32 in its zip's directory",
}


# What a written image of each source was checked against, when it was checked.
_CHECKED_BY = {
    "original": ("original(s) checked against OriginalMD5 and OriginalSize",
                 "original(s) not checked (their rows carry no MD5)"),
    "cvdf": ("mirror copy(ies) checked against the MD5 in their ETag",
             "mirror copy(ies) not checked (their ETag is no MD5)"),
    "thumbnail": ("", "thumbnail(s), not checked (no hash is published for them)"),
    "unknown": ("", "found in the output when the journal was rebuilt (checked by `oidownload verify`)"),
}


def checked_words(sources: dict[str, int], unchecked: dict[str, int]) -> list[str]:
    """One phrase per (source, checked or not) of the written images: '40 original(s)
    checked against OriginalMD5 and OriginalSize', '10 thumbnail(s), not checked ...'."""
    words = []
    for src in sorted(sources, key=lambda s: (list(_CHECKED_BY).index(s) if s in _CHECKED_BY else 99, s)):
        total, loose = sources[src], min(unchecked.get(src, 0), sources[src])
        yes, no = _CHECKED_BY.get(src, ("", f"from {src}, not checked"))
        if total - loose and yes:
            words.append(f"{total - loose} {yes}")
        if loose or (total and not yes):
            words.append(f"{loose if yes else total} {no}")
    return words


def is_final(status: Status) -> bool:
    return status not in RETRYABLE


MAX_TEXT = 1000  # characters kept of any text that came from outside


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """Text from the network, a file name or a CSV made safe to store and show: lone
    surrogates (undecodable bytes kept by surrogateescape) and control characters
    become U+FFFD, and it is cut to `limit` characters."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    if text.isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c in "\t" else "\ufffd" for c in text)


class Source(enum.StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"
    CVDF = "cvdf"  # the Common Visual Data Foundation's mirror


@dataclass(slots=True)
class Row:
    """One validated image row, read-only by convention (not frozen: a frozen dataclass
    costs 2 us more per row, which the 9M-row lists notice). `rotation` is None when
    unknown or not in the input; `has_rotation_column` says which, because upright
    orientation must never apply both the column and the EXIF tag."""

    image_id: str
    subset: str
    original_url: str
    original_size: int
    original_md5: str
    thumbnail_url: str
    rotation: int | None
    has_rotation_column: bool
    file: str
    line: int
    fields: list[str]

    # Author and Title are published HTML-escaped (O&#x27;Neil); these are the text.
    @property
    def author(self) -> str:
        return html.unescape(self.fields[6])

    @property
    def title(self) -> str:
        return html.unescape(self.fields[7])


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that failed validation; it is journaled and the run goes on."""

    file: str
    line: int
    detail: str
    raw_id: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A row skipped because an earlier row of its ImageID came first (one outcome per
    ImageID: the first row wins), and that disagrees with it; kept for the report."""

    image_id: str
    file: str
    line: int
    detail: str


@dataclass(slots=True)
class Outcome:
    """The single record each row ends as. `nbytes` counts bytes fetched, `out_bytes`
    bytes written; `ext` names the written file's extension (empty when none).
    `location` is where the output holds the image (its sink decides the form);
    `staged` lists files the sink must still publish before the outcome is committed."""

    image_id: str
    status: Status
    detail: str = ""
    http_status: int | None = None
    nbytes: int = 0
    out_bytes: int = 0
    width: int | None = None
    height: int | None = None
    attempts: int = 0
    seconds: float = 0.0
    subset: str = ""
    ext: str = ""
    source: Source | None = None
    verified: bool = False
    file: str = ""
    line: int = 0
    errno: int | None = None
    # How the written frame relates to the stored pixels, so that boxes can follow:
    orientation: int = 1  # the EXIF-style code of the turn applied (1: none)
    crop: tuple[float, float, float, float] | None = None  # kept region, normalised
    location: str = ""
    staged: tuple[str, ...] = ()
    url: str = ""  # what was fetched
    sha256: str | None = None  # hex SHA-256 of the image bytes written (not of a kept original)
    # The row's OriginalMD5 and OriginalSize, kept for the lock (a rebuild from it checks them).
    original_md5: str | None = None
    original_size: int | None = None
    # masks (issue 22): the image's masks, written with it (empty without --masks)
    masks: tuple[MaskOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class MaskRef:
    """One mask asked for (--masks): its segmentation row's BoxID, class and MaskPath
    (the PNG's member name in its split's zip)."""

    box_id: str
    label: str
    mask_path: str


@dataclass(frozen=True, slots=True)
class MaskOutcome:
    """What became of one mask: `location` is where the output holds it (as an image's,
    in its sink's form); width and height are the written mask's, the image's frame."""

    box_id: str
    label: str
    status: Status
    detail: str = ""
    location: str = ""
    width: int | None = None
    height: int | None = None
    nbytes: int = 0  # the member's bytes as fetched (inflated)
