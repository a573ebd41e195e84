"""CSV image lists (plain or .gz) → a stream of `Row` / `BadRow`, in constant memory.

`read_header` checks a file's format before any download starts; `iter_rows` streams
its rows, asking a `RowFilter` about each raw ImageID before paying for a full parse,
so a resumed run skips millions of finished rows cheaply. Never imports aiohttp.
"""

from __future__ import annotations

import codecs
import csv
import enum
import gzip
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from .errors import InputError
from .records import BadRow, Row

V3_COLUMNS: tuple[str, ...] = (
    "ImageID",
    "Subset",
    "OriginalURL",
    "OriginalLandingURL",
    "License",
    "AuthorProfileURL",
    "Author",
    "Title",
    "OriginalSize",
    "OriginalMD5",
    "Thumbnail300KURL",
)
V4_COLUMNS: tuple[str, ...] = (*V3_COLUMNS, "Rotation")

# A quoted field may span lines (a Title with a newline), but an unbalanced quote
# must not swallow the rest of the file: past this many lines the record is bad and
# reading restarts on the line after its first.
MAX_RECORD_LINES = 16

_ID_RE = re.compile(r"[0-9a-fA-F]{16}")
_SUBSET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_URL_RE = re.compile(r"(?i:https?)://[^/?#\s\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?")
_MD5_RE = re.compile(r"[A-Za-z0-9+/]{22}==")
_SIZE_RE = re.compile(r"[0-9]{1,15}")

# Subset names become folder names next to these, so they may not be used.
RESERVED_SUBSETS = frozenset({"original"})


class Format(enum.Enum):
    V3 = V3_COLUMNS
    V4 = V4_COLUMNS

    @property
    def has_rotation(self) -> bool:
        return self is Format.V4


class RowFilter:
    """Decides, from the raw ImageID alone, whether a row is skipped before parsing.
    The base keeps everything; the pipeline composes shard, id-list and journal tests."""

    def skip(self, raw_id: str) -> bool:
        return False


_decode_errors = 0


def _count_replace(err: UnicodeError) -> tuple[str, int]:
    global _decode_errors
    _decode_errors += 1
    assert isinstance(err, UnicodeDecodeError)
    return "\ufffd", err.end


codecs.register_error("oidownload-replace", _count_replace)


def decode_errors() -> int:
    """How many undecodable byte runs were replaced by U+FFFD so far in this process."""
    return _decode_errors


def open_text(path: Path) -> TextIO:
    """Opens a CSV as text, gunzipping by magic bytes rather than by name; a BOM is
    dropped and stray non-UTF-8 bytes become U+FFFD (counted) instead of stopping the run."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rt", encoding="utf-8-sig", errors="oidownload-replace", newline="")
        return open(path, encoding="utf-8-sig", errors="oidownload-replace", newline="")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _expected() -> str:
    return (
        f"expected the Open Images V3 header ({','.join(V3_COLUMNS)}) "
        f"or the V4+ header with a 12th column, Rotation"
    )


def _parse_fields(text: str) -> list[str]:
    return next(csv.reader((text,)))


def read_header(path: Path) -> Format:
    """The file's format, from its header line. Raises InputError naming the expected
    columns when the file is empty or the header is not one we know."""
    with open_text(path) as f:
        try:
            first = f.readline()
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{path}: cannot read the header: {exc}") from None
    if not first.strip():
        raise InputError(f"{path}: the file is empty; {_expected()}")
    try:
        header = tuple(h.strip() for h in _parse_fields(first))
    except (csv.Error, StopIteration):
        raise InputError(f"{path}: the header line is not CSV; {_expected()}") from None
    for fmt in Format:
        if header == fmt.value:
            return fmt
    shown = ",".join(header)[:200]
    raise InputError(f"{path}: unknown header '{shown}'; {_expected()}")


def _logical_records(lines: Iterable[str], first_line: int = 1) -> Iterator[tuple[int, str | None]]:
    """(first line number, record text), one per CSV record, joining lines while a
    quote is open; None for a record whose quote never closes within MAX_RECORD_LINES."""
    it = iter(lines)
    replay: deque[tuple[int, str]] = deque()
    n = first_line - 1
    while True:
        if replay:
            start, line = replay.popleft()
        else:
            try:
                line = next(it)
            except StopIteration:
                return
            n += 1
            start = n
        quotes = line.count('"')
        if not quotes & 1:
            yield start, line
            continue
        parts = [line]
        while quotes & 1 and len(parts) < MAX_RECORD_LINES:
            if replay:
                _, nxt = replay.popleft()
            else:
                try:
                    nxt = next(it)
                except StopIteration:
                    break
                n += 1
            parts.append(nxt)
            quotes += nxt.count('"')
        if not quotes & 1:
            yield start, "".join(parts)
        else:
            yield start, None
            replay.extendleft(reversed([(start + i, p) for i, p in enumerate(parts) if i]))


def parse_rotation(value: str) -> int | None:
    """Degrees counter-clockwise as 0/90/180/270; None for empty or nan (unknown).
    Raises ValueError for anything else."""
    v = value.strip().lower()
    if v in ("", "nan"):
        return None
    deg = float(v)
    if deg != deg or deg % 90:
        raise ValueError(value)
    return int(deg) % 360


def _problem(fields: list[str], fmt: Format) -> str | None:
    """What is wrong with a record, or None."""
    if len(fields) != len(fmt.value):
        return f"expected {len(fmt.value)} fields, found {len(fields)}"
    image_id, subset, url, size, md5, thumb = fields[0], fields[1], fields[2], fields[8], fields[9], fields[10]
    if not _ID_RE.fullmatch(image_id):
        return f"ImageID {image_id[:40]!r} is not 16 hex digits"
    if not _SUBSET_RE.fullmatch(subset) or subset in RESERVED_SUBSETS:
        return f"Subset {subset[:40]!r} is not a plain folder name"
    if not _URL_RE.fullmatch(url):
        return f"OriginalURL {url[:80]!r} is not an http(s) URL"
    if thumb and not _URL_RE.fullmatch(thumb):
        return f"Thumbnail300KURL {thumb[:80]!r} is not an http(s) URL"
    if not _SIZE_RE.fullmatch(size):
        return f"OriginalSize {size[:40]!r} is not a non-negative integer"
    if not _MD5_RE.fullmatch(md5):
        return f"OriginalMD5 {md5[:40]!r} is not 24-character base64"
    return None


def parse_row(fields: list[str], fmt: Format, file: str, line: int) -> Row | BadRow:
    """Validates one record's fields; every failure names the file, line, column and value."""
    problem = _problem(fields, fmt)
    rotation = None
    if problem is None and fmt.has_rotation:
        try:
            rotation = parse_rotation(fields[11])
        except ValueError:
            problem = f"Rotation {fields[11][:20]!r} is not 0, 90, 180, 270 or empty"
    if problem is not None:
        return BadRow(file, line, f"{file}:{line}: {problem}", fields[0] if fields else "", tuple(fields))
    image_id = fields[0]
    return Row(
        image_id if image_id.islower() or image_id.isdigit() else image_id.lower(),
        fields[1], fields[2], int(fields[8]), fields[9], fields[10], rotation, fmt.has_rotation,
        file, line, fields,
    )


def _fast_id(text: str) -> str | None:
    # Real ImageIDs are never quoted, so the id of most lines is a plain prefix.
    comma = text.find(",")
    if comma > 0 and text[0] != '"':
        return text[:comma]
    return None


def records(lines: Iterable[str], skip: Callable[[str], bool] | None = None,
            first_line: int = 2) -> Iterator[tuple[int, list[str] | str]]:
    """(line, fields) for each record of lines, or (line, why) for a record that is not
    CSV. Records whose raw id `skip` rejects are dropped before they are parsed."""
    for line, text in _logical_records(lines, first_line):
        if text is None:
            yield line, "a quoted field never closes"
            continue
        fast = _fast_id(text)
        if fast is not None and skip is not None and skip(fast):
            continue
        try:
            fields = _parse_fields(text)
        except (csv.Error, StopIteration) as exc:
            yield line, f"not CSV: {exc}"
            continue
        if not fields or fields == [""]:
            continue  # a blank line
        if fast is None and skip is not None and skip(fields[0]):
            continue
        yield line, fields


def iter_records(path: Path, skip: Callable[[str], bool] | None = None) -> Iterator[tuple[int, list[str] | str]]:
    """`records` of a file after its header. A truncated .gz raises InputError after
    the rows before the damage."""
    with open_text(path) as f:
        lines = iter(f)
        try:
            next(lines, None)  # the header, checked by read_header
            yield from records(lines, skip)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InputError(
                f"{path}: the compressed data is truncated or corrupt ({exc}); "
                "rows before that point were read, re-download the file to read the rest"
            ) from None
        except OSError as exc:
            raise InputError(f"{path}: read failed: {exc.strerror or exc}") from None


def iter_rows(
    path: Path,
    fmt: Format | None = None,
    row_filter: RowFilter | None = None,
    accept: Callable[[Row], bool] | None = None,
) -> Iterator[Row | BadRow]:
    """Streams one file's rows after its header. Rows whose raw id the filter skips are
    never parsed; `accept` is a last test on parsed rows (subset, class...)."""
    fmt = fmt or read_header(path)
    name = str(path)
    for line, fields in iter_records(path, row_filter.skip if row_filter else None):
        if isinstance(fields, str):
            yield BadRow(name, line, f"{name}:{line}: {fields}", "", ())
            continue
        row = parse_row(fields, fmt, name, line)
        if isinstance(row, BadRow) or accept is None or accept(row):
            yield row


def estimate_rows(path: Path) -> int:
    """About how many rows a file holds, for the progress bar's total, without reading
    it twice: its (uncompressed) size over the mean length of its first lines. A .gz
    records its uncompressed size (mod 4 GiB) in its last four bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            if gz:
                f.seek(-4, os.SEEK_END)
                size = int.from_bytes(f.read(4), "little")
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return 0  # the reader reports a broken file properly; this is only an estimate
    lines = head.count(b"\n")
    if lines < 2:
        return max(0, lines - 1)
    if len(head) >= size:
        return lines - 1 + (0 if head.endswith(b"\n") else 1)
    return max(0, round(size / (len(head) / lines)) - 1)
