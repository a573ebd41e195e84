"""What a file to load is, from its header (or, for the header-less class file, from its
first row), and its data lines → row tuples for one table, with every malformed line
reported as (line, why) instead.

    images     V3 (11 columns) or V4+ (12, with Rotation) image lists
    labels     ImageID,Source,LabelName,Confidence
    boxes      labels' columns + XMin,XMax,YMin,YMax [+ attributes] [+ XClick points]
    classes    MID,name (no header in V3; LabelName,DisplayName in V6/V7)
    hierarchy  bbox_labels_600_hierarchy.json
    mid_list   classes*.txt: one MID a line (nothing to load)
"""

from __future__ import annotations

import csv
import enum
import math
import re
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..classes import MID_RE
from ..journal import id_to_int
from ..records import BadRow
from ..rows import Format, parse_row, records
from .schema import BOXES, IMAGES, LABELS, Column

Converted = tuple[Any, ...]
Outcome = tuple[int, Converted | str]  # (line, row) or (line, why)
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


class Kind(enum.StrEnum):
    IMAGES = "images"
    LABELS = "labels"
    BOXES = "boxes"
    CLASSES = "classes"
    HIERARCHY = "hierarchy"
    MID_LIST = "mid_list"


@dataclass(frozen=True)
class Detected:
    kind: Kind
    columns: tuple[str, ...]  # the header; for a header-less class file, ()


_LABEL_COLS = ("ImageID", "Source", "LabelName", "Confidence")
_BOX_COLS = (*_LABEL_COLS, "XMin", "XMax", "YMin", "YMax")


def detect(name: str, first_line: str) -> Detected | None:
    """The kind of a CSV from its first line; None when it is none we know."""
    try:
        fields = [f.strip() for f in next(csv.reader([first_line]), [])]
    except csv.Error:
        return None
    header = tuple(fields)
    if header in (Format.V3.value, Format.V4.value):
        return Detected(Kind.IMAGES, header)
    if all(c in header for c in _BOX_COLS):
        return Detected(Kind.BOXES, header)
    if header and set(header) == set(_LABEL_COLS):
        return Detected(Kind.LABELS, header)
    if header == ("LabelName", "DisplayName"):
        return Detected(Kind.CLASSES, header)
    if len(fields) == 2 and MID_RE.fullmatch(fields[0]):
        return Detected(Kind.CLASSES, ())  # V3's class-descriptions.csv: no header
    if len(fields) == 1 and MID_RE.fullmatch(fields[0]) and name.endswith(".txt"):
        return Detected(Kind.MID_LIST, ())
    return None


def table_columns(kind: Kind, header: tuple[str, ...]) -> tuple[Column, ...]:
    """The table columns a file fills: every one its header has (the rest stay NULL)."""
    table = {Kind.IMAGES: IMAGES, Kind.LABELS: LABELS, Kind.BOXES: BOXES}[kind]
    return tuple(c for c in table if c.csv in header)


def _real(v: str) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(v)
    return x


def _flag(v: str) -> int | None:
    return int(v) if v else None


def _converter(col: Column) -> Callable[[str], Any]:
    if col.type == "real":
        return (lambda v: _real(v) if v else None) if col.nullable else _real
    if col.type == "flag":
        return _flag
    return str


def _image_id(v: str) -> int:
    if not _HEX16.fullmatch(v):
        raise ValueError(f"ImageID {v[:40]!r} is not 16 hex digits")
    return id_to_int(v)


def annotation_rows(lines: Iterable[str], kind: Kind, header: tuple[str, ...], file_id: int,
                    known_mids: Container[str] | None) -> Iterator[Outcome]:
    """Labels or boxes. Lines without a quote (all real ones) are split by hand, which is
    several times faster than the csv module; a quoted line goes through csv."""
    cols = table_columns(kind, header)
    index = [header.index(c.csv) for c in cols]
    convs = [_converter(c) for c in cols]
    i_id, i_mid = header.index("ImageID"), header.index("LabelName")
    n = len(header)
    rest = list(zip(index, convs, strict=True))[1:]
    simple = kind is Kind.LABELS and index == [0, 1, 2, 3]
    check_mid = known_mids if kind is Kind.BOXES else None
    line_no = 1
    for line in lines:
        line_no += 1
        if '"' in line:
            try:
                fields = next(csv.reader([line]))
            except (csv.Error, StopIteration) as exc:
                yield line_no, f"not CSV: {exc}"
                continue
        else:
            fields = line.rstrip("\r\n").split(",")
        if len(fields) != n:
            if fields == [""]:
                continue  # a blank line
            yield line_no, f"expected {n} fields, found {len(fields)}"
            continue
        try:
            image_id = _image_id(fields[i_id])
            if simple:
                row: Converted = (image_id, fields[1], fields[2], _real(fields[3]), file_id)
            else:
                row = (image_id, *(conv(fields[i]) for i, conv in rest), file_id)
        except ValueError as exc:
            yield line_no, _why(exc, fields, index, cols)
            continue
        if check_mid is not None and fields[i_mid] not in check_mid:
            yield line_no, f"LabelName {fields[i_mid][:40]!r} is not a known class"
            continue
        yield line_no, row


def _why(exc: ValueError, fields: list[str], index: list[int], cols: tuple[Column, ...]) -> str:
    if str(exc).startswith("ImageID"):
        return str(exc)
    for i, col in zip(index, cols, strict=True):
        try:
            _converter(col)(fields[i]) if col.type != "id" else None
        except ValueError:
            return f"{col.csv} {fields[i][:40]!r} is not a number"
    return str(exc)[:80]


def image_rows(lines: Iterable[str], header: tuple[str, ...], file_id: int, name: str) -> Iterator[Outcome]:
    """Image lists, checked as the downloader checks them (rows.parse_row): a row the
    download would call bad_row is reported here too."""
    fmt = Format.V4 if len(header) == len(Format.V4.value) else Format.V3
    for line, fields in records(lines):
        if isinstance(fields, str):
            yield line, fields
            continue
        row = parse_row(fields, fmt, name, line)
        if isinstance(row, BadRow):
            yield line, row.detail.split(": ", 1)[-1]
            continue
        f = row.fields
        yield line, (id_to_int(f[0]), *f[1:8], row.original_size, f[9], f[10], row.rotation, file_id)


def class_rows(lines: Iterable[str], has_header: bool, file_id: int) -> Iterator[Outcome]:
    reader = csv.reader(lines)
    for fields in reader:
        line = reader.line_num + (1 if has_header else 0)
        if not fields:
            continue
        if len(fields) != 2 or not MID_RE.fullmatch(fields[0].strip()):
            yield line, f"expected MID,DisplayName, found {','.join(fields)[:80]!r}"
            continue
        yield line, (fields[0].strip(), fields[1], file_id)
