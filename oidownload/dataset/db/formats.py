"""What a file to load is, from its header (or, for the header-less class file, from its
first row), and its data lines → row tuples for one table, with every malformed line
reported as (line, why) instead.

    images     V3 (11 columns) or V4+ (12, with Rotation) image lists
    labels, boxes, ...   the annotation kinds, by kinds.detect (their tables: kinds.py)
    classes    MID,name (no header in V3; LabelName,DisplayName in V6/V7)
    hierarchy  bbox_labels_600_hierarchy.json
    mid_list   classes*.txt: one MID a line (nothing to load)
"""

from __future__ import annotations

import array
import csv
import enum
import itertools
import math
import re
import sys
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from oidownload.core.ids import id_to_int, is_image_id
from oidownload.core.records import BadRow
from oidownload.dataset.classes import MID_RE
from oidownload.dataset.db.schema import IMAGES
from oidownload.dataset.kinds import BOXES, LABELS, AnnotationKind, Column
from oidownload.dataset.kinds import detect as detect_kind
from oidownload.inputs.csvrecords import records
from oidownload.inputs.rows import Format, parse_row
from oidownload.inputs.text import MAX_LINE

Converted = tuple[Any, ...]
# verification, crowdsource-verification, machine, xclick, activemil...: a short word.
_SOURCE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TOO_LONG = f"the line is longer than {MAX_LINE} characters"


class FileKind(enum.StrEnum):
    """The files `db load` takes besides annotations (whose kinds are kinds.KINDS)."""

    IMAGES = "images"
    CLASSES = "classes"
    HIERARCHY = "hierarchy"
    MID_LIST = "mid_list"


@dataclass(frozen=True)
class Detected:
    kind: FileKind | AnnotationKind[Any]
    columns: tuple[str, ...]  # the header; for a header-less class file, ()

    @property
    def kind_name(self) -> str:
        """loaded_files.kind: images, classes, hierarchy, mid_list, or the annotation kind's name."""
        return self.kind.value if isinstance(self.kind, FileKind) else self.kind.name


def detect(name: str, first_line: str) -> Detected | None:
    """The kind of a CSV from its first line; None when it is none we know."""
    try:
        fields = [f.strip() for f in next(csv.reader([first_line]), [])]
    except csv.Error:
        return None
    header = tuple(fields)
    if header in (Format.V3.value, Format.V4.value):
        return Detected(FileKind.IMAGES, header)
    kinds = detect_kind(header)
    if len(kinds) == 1:
        return Detected(kinds[0], header)
    if header == ("LabelName", "DisplayName"):
        return Detected(FileKind.CLASSES, header)
    if len(fields) == 2 and MID_RE.fullmatch(fields[0]):
        return Detected(FileKind.CLASSES, ())  # V3's class-descriptions.csv: no header
    if len(fields) == 1 and MID_RE.fullmatch(fields[0]) and name.endswith(".txt"):
        return Detected(FileKind.MID_LIST, ())
    return None


def table_columns(kind: FileKind | AnnotationKind[Any], header: tuple[str, ...]) -> tuple[Column, ...]:
    """The table columns a file fills: every one its header has (the rest stay NULL)."""
    table = IMAGES if kind is FileKind.IMAGES else cast(AnnotationKind[Any], kind).columns
    return tuple(c for c in table if c.csv in header)


def _real(v: str) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(v)
    return x


_FLAGS = {"": None, "0": 0, "1": 1, "-1": -1}  # -1: unknown; anything else overflowed SQLite or a SMALLINT


def _flag(v: str) -> int | None:
    try:
        return _FLAGS[v.strip()]
    except KeyError:
        raise ValueError(v) from None


def _converter(col: Column) -> Callable[[str], Any]:
    if col.type == "real":
        return (lambda v: _real(v) if v else None) if col.nullable else _real
    if col.type == "flag":
        return _flag
    return str


def _image_id(v: str) -> int:
    if not is_image_id(v):
        raise ValueError(f"ImageID {v[:40]!r} is not 16 hex digits")
    return id_to_int(v)


@dataclass
class Tally:
    """What a producer saw: rows yielded and rows refused (each passed to `bad`)."""

    rows: int = 0
    bad: int = 0


Bad = Callable[[int, str], None]  # (line, why), for each refused row


def _text_problem(fields: list[str], i_source: int | None, i_mid: int) -> str | None:
    """Why a label's or box's Source or LabelName cannot be stored, or None: both are
    short words (a MID of 600 KB once broke PostgreSQL's index on mid for good)."""
    if i_source is not None and not _SOURCE_RE.fullmatch(fields[i_source]):
        return f"Source {fields[i_source][:40]!r} is not a short word"
    if not MID_RE.fullmatch(fields[i_mid]):
        return f"LabelName {fields[i_mid][:40]!r} is not a MID such as /m/0k4j"
    return None


def annotation_rows(lines: Iterable[str | None], kind: AnnotationKind[Any], header: tuple[str, ...], file_id: int,
                    known_mids: Container[str] | None, bad: Bad, tally: Tally) -> Iterator[Converted]:
    """Labels or boxes as row tuples. Lines without a quote (all real ones) are split by
    hand, several times faster than the csv module; a quoted line goes through csv."""
    cols = table_columns(kind, header)
    index = [header.index(c.csv) for c in cols]
    convs = [_converter(c) for c in cols]
    # masks (issue 22): segmentation rows have no Source; their LabelName is checked alone
    i_id, i_mid = header.index("ImageID"), header.index("LabelName")
    i_source = header.index("Source") if "Source" in header else None
    n = len(header)
    rest = list(zip(index, convs, strict=True))[1:]
    check_mid = known_mids if kind is BOXES else None
    line_no = 1
    for line in lines:
        line_no += 1
        fields = _fields(line, n, line_no, bad, tally)
        if fields is None:
            continue
        try:
            row = (_image_id(fields[i_id]), *(conv(fields[i]) for i, conv in rest), file_id)
        except ValueError as exc:
            tally.bad += 1
            bad(line_no, _why(exc, fields, index, cols))
            continue
        problem = _text_problem(fields, i_source, i_mid)
        if problem is not None:
            tally.bad += 1
            bad(line_no, problem)
            continue
        if check_mid is not None and fields[i_mid] not in check_mid:
            tally.bad += 1
            bad(line_no, f"LabelName {fields[i_mid][:40]!r} is not a known class")
            continue
        tally.rows += 1
        yield row


def _fields(line: str | None, n: int, line_no: int, bad: Bad, tally: Tally) -> list[str] | None:
    if line is None:  # over-long: read past, never held (rows.bounded_lines)
        tally.bad += 1
        bad(line_no, TOO_LONG)
        return None
    if '"' in line:
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration) as exc:
            tally.bad += 1
            bad(line_no, f"not CSV: {exc}")
            return None
    else:
        fields = line.rstrip("\r\n").split(",")
    if len(fields) != n:
        if fields != [""]:  # a blank line is nothing
            tally.bad += 1
            bad(line_no, f"expected {n} fields, found {len(fields)}")
        return None
    return fields


STANDARD_LABELS = LABELS.signature
# Lines per block of label_rows: about 3 MB of text.
BLOCK = 65536
_NOT_PLAIN = ('"', "\\", "\t", "\r")  # quoting, or bytes COPY's text format would need escaped


# Sources and MIDs already found good: a file names a few thousand of each, so most
# blocks need no pattern run at all.
_good_sources: set[str] = set()
_good_mids: set[str] = set()


def _all_good(values: list[str], good: set[str], pattern: re.Pattern[str]) -> bool:
    new = set(values) - good
    if not all(map(pattern.fullmatch, new)):
        return False
    if len(good) + len(new) > 1 << 16:
        good.clear()
    good.update(new)
    return True


def _plain_block(chunk: list[str | None], file_id: int, copy_text: bool) -> Any:
    """The rows of a block of label lines, checked and converted by whole-block string
    operations (no Python code runs per row); None when any line is not plain."""
    n = len(chunk)
    try:
        block = "".join(chunk)  # type: ignore[arg-type]
    except TypeError:
        return None  # an over-long line (None): the general path reports it
    lines = cast(list[str], chunk)
    if not block.endswith("\n") or any(c in block for c in _NOT_PLAIN):
        return None
    if list(map(str.count, lines, itertools.repeat(","))).count(3) != n:
        return None  # every line has exactly four fields
    fields = block.replace("\n", ",").split(",")
    ids, sources, mids, confs = (fields[k:4 * n:4] for k in range(4))
    if list(map(len, ids)).count(16) != n:
        return None
    if not _all_good(sources, _good_sources, _SOURCE_RE) or not _all_good(mids, _good_mids, MID_RE):
        return None
    try:
        raw = bytes.fromhex("".join(ids))  # big-endian: one int64 per id after a byte swap
        floats = list(map(float, confs))
    except ValueError:
        return None
    text = "".join(confs)
    if len(raw) != 8 * n or not all(map(math.isfinite, floats)) or not text.isascii() or "_" in text:
        return None  # PostgreSQL reads a Confidence as Python does only without these
    values = array.array("q")
    values.frombytes(raw)
    if sys.byteorder == "little":
        values.byteswap()
    if not copy_text:
        flat: list[Any] = [file_id] * (5 * n)  # the rows side by side, for bulk_flat
        flat[0::5], flat[1::5], flat[2::5], flat[3::5] = values, sources, mids, floats
        return flat
    tab = itertools.repeat("\t")
    return "".join(map("".join, zip(map(str, values), tab, sources, tab, mids, itertools.repeat(f"\t{file_id}\t"),
                                    confs, itertools.repeat("\n"))))


def label_rows(lines: Iterator[str | None], file_id: int, bad: Bad, tally: Tally, *, copy_text: bool) -> Iterator[Any]:
    """The hot path, for label files in the standard column order (79M rows in V3 train),
    a block of lines at a time (_plain_block). Yields, per block, a flat list of the
    rows' values (Database.bulk_flat), or with copy_text a string of PostgreSQL COPY text
    in LABEL_COPY_COLUMNS order. A block with anything unusual goes line by line through
    the general path."""
    first_line = 2
    while chunk := list(itertools.islice(lines, BLOCK)):
        plain = _plain_block(chunk, file_id, copy_text)
        if plain is not None:
            tally.rows += len(chunk)
            yield plain
        else:
            rows = [row for i, line in enumerate(chunk) for row in annotation_rows(
                [line], LABELS, STANDARD_LABELS, file_id, None, _at(bad, first_line + i), tally)]
            if copy_text:
                yield "".join("\t".join(_copy_field(x) for x in (v, src, mid, fid, c)) + "\n"
                              for v, src, mid, c, fid in rows)
            else:
                yield list(itertools.chain.from_iterable(rows))
        first_line += len(chunk)


# The column order of label_rows' COPY text: Confidence last, as in the file.
LABEL_COPY_COLUMNS = ("image_id", "source", "mid", "file_id", "confidence")


def _at(bad: Bad, line_no: int) -> Bad:
    return lambda _, why: bad(line_no, why)


def _copy_field(v: Any) -> str:
    if v is None:
        return "\\N"
    text = str(v)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _why(exc: ValueError, fields: list[str], index: list[int], cols: tuple[Column, ...]) -> str:
    if str(exc).startswith("ImageID"):
        return str(exc)
    for i, col in zip(index, cols, strict=True):
        try:
            _converter(col)(fields[i]) if col.type != "id" else None
        except ValueError:
            return f"{col.csv} {fields[i][:40]!r} is not {'0, 1, -1 or empty' if col.type == 'flag' else 'a number'}"
    return str(exc)[:80]


def image_rows(lines: Iterable[str | None], header: tuple[str, ...], file_id: int, name: str, bad: Bad,
               tally: Tally) -> Iterator[Converted]:
    """Image lists, checked as the downloader checks them (rows.parse_row): a row the
    download would call bad_row is refused here too."""
    fmt = Format.V4 if len(header) == len(Format.V4.value) else Format.V3
    for line, fields in records(lines):
        if isinstance(fields, str):
            tally.bad += 1
            bad(line, fields)
            continue
        row = parse_row(fields, fmt, name, line)
        if isinstance(row, BadRow):
            tally.bad += 1
            bad(line, row.detail.split(": ", 1)[-1])
            continue
        if "\0" in "".join(fields):
            tally.bad += 1
            bad(line, _nul(fmt.value, fields))
            continue
        f = row.fields
        tally.rows += 1
        yield (id_to_int(f[0]), *f[1:8], row.original_size, f[9], f[10], row.rotation, file_id)


def _nul(columns: tuple[str, ...], fields: list[str]) -> str:
    # PostgreSQL cannot store a NUL in text at all; SQLite would keep it, silently cut
    # short by most readers. Either way the row is refused in both.
    column = next((c for c, f in zip(columns, fields, strict=False) if "\0" in f), "a field")
    return f"{column} holds a NUL byte"


def class_rows(lines: Iterable[str | None], has_header: bool, file_id: int, bad: Bad,
               tally: Tally) -> Iterator[Converted]:
    """MID,DisplayName rows, read as the download reads image lists (rows.records): a
    quote that never closes is one bad row, and the lines after it are read again."""
    for line, fields in records(lines, first_line=2 if has_header else 1):
        if isinstance(fields, str):
            tally.bad += 1
            bad(line, fields)
            continue
        if len(fields) != 2 or not MID_RE.fullmatch(fields[0].strip()):
            tally.bad += 1
            bad(line, f"expected MID,DisplayName, found {','.join(fields)[:80]!r}")
            continue
        if "\0" in fields[1]:
            tally.bad += 1
            bad(line, _nul(("LabelName", "DisplayName"), fields))
            continue
        tally.rows += 1
        yield (fields[0].strip(), fields[1], file_id)
