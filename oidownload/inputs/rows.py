"""The image-list schema: a CSV image list (V3 or V4+ header) → a stream of `Row` /
`BadRow`, in constant memory.

`read_header` checks a file's format before any download starts; `iter_rows` streams
its rows (text.py reads the bytes, csvrecords.py splits the records, urls.py judges the
URLs), asking a `RowFilter` about each raw ImageID before paying for a full parse, so a
resumed run skips millions of finished rows cheaply. Never imports aiohttp.
"""

from __future__ import annotations

import csv
import enum
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from oidownload.core.errors import InputError
from oidownload.core.ids import ID_RE, RESERVED_SUBSETS, SUBSET_RE
from oidownload.core.records import BadRow, Row
from oidownload.inputs.csvrecords import iter_records, parse_fields
from oidownload.inputs.text import first_line
from oidownload.inputs.urls import url_problem

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


_MD5_RE = re.compile(r"[A-Za-z0-9+/]{22}==")


_SIZE_RE = re.compile(r"[0-9]{1,15}")


class Format(enum.Enum):
    V3 = V3_COLUMNS
    V4 = V4_COLUMNS

    @property
    def has_rotation(self) -> bool:
        return self is Format.V4


class RowFilter:
    """Decides, from the raw ImageID alone, whether a row is skipped before parsing.
    The base keeps everything; inputs/listing.py composes shard, id-list and journal tests."""

    def skip(self, raw_id: str) -> bool:
        return False




def _expected() -> str:
    return (
        f"expected the Open Images V3 header ({','.join(V3_COLUMNS)}) "
        f"or the V4+ header with a 12th column, Rotation"
    )


def read_header(path: Path) -> Format:
    """The file's format, from its header line. Raises InputError naming the expected
    columns when the file is empty or the header is not one we know."""
    first = first_line(path)
    if not first.strip():
        raise InputError(f"{path}: the file is empty; {_expected()}")
    if re.search(r"[\x00-\x08\x0e-\x1f\ufffd]", first):
        # Not echoed: the bytes of a binary file would garble the terminal.
        raise InputError(f"{path}: unknown header (binary bytes, not shown): this is not a CSV text file; {_expected()}")
    try:
        header = tuple(h.strip() for h in parse_fields(first))
    except (csv.Error, StopIteration):
        raise InputError(f"{path}: the header line is not CSV; {_expected()}") from None
    for fmt in Format:
        if header == fmt.value:
            return fmt
    if "ImageID" in header and "LabelName" in header:
        kind = "a box" if "XMin" in header else "an image-label"
        raise InputError(f"{path}: this is {kind} annotation file, not an image list: pass it with --annotations, "
                         f"and give the image list (ImageID,Subset,OriginalURL,...) as the input")
    shown = ",".join(header)[:200]
    raise InputError(f"{path}: unknown header '{shown}'; {_expected()}")


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
    if not ID_RE.fullmatch(image_id):
        return f"ImageID {image_id[:40]!r} is not 16 hex digits"
    if not SUBSET_RE.fullmatch(subset) or subset in RESERVED_SUBSETS:
        return f"Subset {subset[:40]!r} is not a plain folder name"
    why = url_problem(url)
    if why is not None:
        return f"OriginalURL {url[:80]!r} {why}"
    why = url_problem(thumb) if thumb else None
    if why is not None:
        return f"Thumbnail300KURL {thumb[:80]!r} {why}"
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
