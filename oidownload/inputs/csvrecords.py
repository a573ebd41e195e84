"""Quote-balanced CSV records from bounded lines: one loop for the common lines, `records`
as the rule for the rest, and a skip test on the raw first field so that a resumed run
passes millions of finished rows before parsing them."""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from oidownload.core.errors import InputError
from oidownload.inputs.text import (
    GZIP_MAGIC,
    MAX_LINE,
    TOO_LONG,
    bounded_lines,
    is_stream,
    open_text,
)

# A quoted field may span lines (a Title with a newline), but an unbalanced quote
# must not swallow the rest of the file: past this many lines the record is bad and
# reading restarts on the line after its first.
MAX_RECORD_LINES = 16


def parse_fields(text: str) -> list[str]:
    return next(csv.reader((text,)))


def _logical_records(lines: Iterable[str | None], first_line: int = 1,
                     read: list[int] | None = None) -> Iterator[tuple[int, str, bool]]:
    """(first line number, record text or why it is bad, ok), one per CSV record,
    joining lines while a quote is open. A record whose quote does not close within
    MAX_RECORD_LINES (or before an over-long line, None in `lines`) is bad, and reading
    restarts on the line after its first; an over-long line is a bad record of its own.
    `read[0]`, when given, is kept at the number of the last line read."""
    it = iter(lines)
    replay: deque[tuple[int, str | None]] = deque()
    n = first_line - 1
    last = read if read is not None else [0]
    while True:
        if replay:
            start, line = replay.popleft()
        else:
            try:
                line = next(it)
            except StopIteration:
                return
            n += 1
            last[0] = start = n
        if line is None:
            yield start, TOO_LONG, False
            continue
        quotes = line.count('"')
        if not quotes & 1:
            yield start, line, True
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
                last[0] = n
            if nxt is None:
                replay.appendleft((start + len(parts), None))
                break
            parts.append(nxt)
            quotes += nxt.count('"')
        if not quotes & 1:
            yield start, "".join(parts), True
        else:
            yield start, "a quoted field never closes", False
            replay.extendleft(reversed([(start + i, p) for i, p in enumerate(parts) if i]))


def _fast_id(text: str) -> str | None:
    # Real ImageIDs are never quoted, so the id of most lines is a plain prefix.
    comma = text.find(",")
    if comma > 0 and text[0] != '"':
        return text[:comma]
    return None


def records(lines: Iterable[str | None], skip: Callable[[str], bool] | None = None,
            first_line: int = 2, read: list[int] | None = None) -> Iterator[tuple[int, list[str] | str]]:
    """(line, fields) for each record of lines, or (line, why) for a record that is not
    CSV (or an over-long line, None in `lines`: see `bounded_lines`). Records whose raw
    id `skip` rejects are dropped before they are parsed."""
    for line, text, ok in _logical_records(lines, first_line, read):
        if not ok:
            yield line, text
            continue
        fast = _fast_id(text)
        if fast is not None and skip is not None and skip(fast):
            continue
        fields = _fields(text, skip if fast is None else None)
        if fields is not None:
            yield line, fields


def _fields(text: str, skip: Callable[[str], bool] | None) -> list[str] | str | None:
    """A record's fields, or why it is not CSV; None for a blank line or a record whose
    parsed id `skip` drops (given when the raw id could not be read before parsing)."""
    try:
        fields = parse_fields(text)
    except (csv.Error, StopIteration) as exc:
        return f"not CSV: {exc}"
    if not fields or fields == [""]:
        return None
    if skip is not None and skip(fields[0]):
        return None
    return fields


def _file_records(f: TextIO, skip: Callable[[str], bool] | None,
                  read: list[int]) -> Iterator[tuple[int, list[str] | str]]:
    """`records(bounded_lines(f), skip, 2, read)`, the same records in the same order,
    in one loop for the lines every real list is made of: a resumed run skips millions
    of rows here, and the generator chain cost twice the skip itself. A line the
    loop does not handle (over-long, or a quote that stays open past its record's
    last line) hands it and the rest of the file to `records`, which is the rule."""
    readline = f.readline
    n = read[0]
    try:
        while line := readline(MAX_LINE):
            n += 1
            if len(line) == MAX_LINE and line[-1] not in "\r\n":
                pending: list[str | None] = [line]
                first = n
                break
            start = n
            if "\"" in line:
                quotes = line.count("\"")
                if quotes & 1:
                    # a record over several lines: joined here when it closes normally
                    parts = [line]
                    while quotes & 1 and len(parts) < MAX_RECORD_LINES:
                        nxt = readline(MAX_LINE)
                        if not nxt:
                            break
                        n += 1
                        parts.append(nxt)
                        if len(nxt) == MAX_LINE and nxt[-1] not in "\r\n":
                            break
                        quotes += nxt.count("\"")
                    if quotes & 1:  # never closed, or an over-long line came first
                        pending = list(parts)
                        first = start
                        break
                    line = "".join(parts)
            comma = line.find(",")
            fast = comma > 0 and line[0] != '"'
            if fast and skip is not None and skip(line[:comma]):
                continue
            fields = _fields(line, None if fast else skip)
            if fields is not None:
                yield start, fields
        else:
            read[0] = n
            return
    except BaseException:
        read[0] = n
        raise
    read[0] = n
    yield from records(then_lines(pending, f), skip, first, read)


def then_lines(pending: list[str | None], f: TextIO) -> Iterator[str | None]:
    """The lines `pending` (already read; the last may be the head of an over-long
    line), then the rest of f, bounded as `bounded_lines` bounds them."""
    last = pending[-1]
    yield from pending[:-1]
    if last is not None and len(last) == MAX_LINE and last[-1] not in "\r\n":
        while (rest := f.readline(MAX_LINE)) and len(rest) == MAX_LINE and rest[-1] not in "\r\n":
            pass
        yield None
    else:
        yield last
    yield from bounded_lines(f)


def iter_records(path: Path, skip: Callable[[str], bool] | None = None) -> Iterator[tuple[int, list[str] | str]]:
    """`records` of a file after its header, its lines bounded. A truncated .gz raises
    InputError after the rows before the damage, naming the last line read."""
    read = [1]  # the last line read, for the message when reading stops early
    with open_text(path) as f:
        try:
            next(bounded_lines(f), None)  # the header, checked by read_header
            yield from _file_records(f, skip, read)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InputError(
                f"{path}: reading stopped after line {read[0]}: the compressed data is truncated or corrupt ({exc}). "
                f"The rows up to line {read[0]} were read; re-download the file to read the rest"
            ) from None
        except OSError as exc:
            raise InputError(f"{path}: reading stopped after line {read[0]}: {exc.strerror or exc}") from None


# Under this size on disk an input is counted line by line before the bar starts (a
# fraction of a second), so its total is exact from the first frame.
COUNT_UNDER = 50 * 1024 * 1024


def count_rows(path: Path) -> int | None:
    """The rows of a regular file under COUNT_UNDER bytes on disk (gunzipped when it is
    a .gz): its lines after the header, the last one counted without its newline. None
    for a pipe (its bytes are the reader's), a bigger file or one that cannot be read."""
    if is_stream(path):
        return None
    try:
        if path.stat().st_size >= COUNT_UNDER:
            return None
        with open(path, "rb") as probe:
            gz = probe.read(2) == GZIP_MAGIC
        lines = 0
        last = b"\n"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError, zlib.error):
        return None
    return max(0, lines - 1 + (last != b"\n"))


def estimate_rows(path: Path) -> int:
    """About how many rows a file holds, for the progress bar's total, without reading
    it twice: its (uncompressed) size over the mean length of its first lines. A .gz
    records its uncompressed size (mod 4 GiB) in its last four bytes. A pipe is not
    read here (its bytes are the reader's): 0, unknown."""
    if is_stream(path):
        return 0
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
