"""CSV image lists (plain or gzip, files, pipes or `-` for stdin) → a stream of `Row` /
`BadRow`, in constant memory: lines are bounded, so no input can exhaust memory.

`read_header` checks a file's format before any download starts; `iter_rows` streams
its rows, asking a `RowFilter` about each raw ImageID before paying for a full parse,
so a resumed run skips millions of finished rows cheaply. Never imports aiohttp.
"""

from __future__ import annotations

import codecs
import csv
import enum
import gzip
import io
import ipaddress
import os
import re
import stat
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, cast

from yarl import URL

from oidownload.core.errors import InputError
from oidownload.core.ids import ID_RE, RESERVED_SUBSETS, SUBSET_RE
from oidownload.core.records import BadRow, Row

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
# Real rows are under 1 KB; a line longer than this is a bad row, read past without
# keeping it, so an endless line (`/dev/zero`) cannot exhaust memory.
MAX_LINE = 64 * 1024

# No whitespace or control characters anywhere; what else a URL must be is url_problem's.
_URL_RE = re.compile(r"(?i:https?)://[^/?#\s\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?")
# The usual shape, decided without a full parse: a plain ASCII host and an optional
# port. Anything else (IDN, IP literals, user info) is parsed by yarl.
_PLAIN_URL_RE = re.compile(r"(?i:https?)://([A-Za-z0-9._-]+(?::[0-9]{1,5})?)(?:[/?#][^\s\x00-\x1f\x7f]*)?")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # letters, digits, '-' and '_'; 1-63
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_BRACKETED_RE = re.compile(r"\[[^\[\]]+\](?::[0-9]*)?")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")  # canonical: no leading zeros
# host[:port] already found good: a list names a few dozen, so most rows need no check.
_good_authorities: set[str] = set()
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


STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
# How much of a pipe is kept so that it can be read again from its start: enough for
# the header check (and gzip's first read) before the rows are streamed.
REPLAY_BYTES = 1 << 20


class _Tape:
    """A pipe, stdin or a device, opened once per process. The first REPLAY_BYTES read
    from it are kept, so it can be opened again from the start until a reader goes past
    them; after that, opening it again is an InputError (it can only be read once)."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.raw = open(fd, "rb", buffering=0, closefd=fd != 0)  # noqa: SIM115 -- held for the process
        self.head = bytearray()
        self.consumed = 0
        self.spilled = False

    def opened(self) -> _TapeReader:
        if self.spilled:
            raise InputError(f"{self.name}: a pipe can be read only once, and it was read already; "
                             "save it to a file to read it twice (--seed, or the same pipe given twice)")
        return _TapeReader(self)


class _TapeReader(io.RawIOBase):
    """One pass over a _Tape, from its start."""

    def __init__(self, tape: _Tape) -> None:
        self.tape = tape
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        t = self.tape
        if self.pos < t.consumed:  # replaying the kept head
            data: bytes | bytearray = t.head[self.pos : self.pos + len(buf)]
        else:
            data = t.raw.read(len(buf)) or b""
            t.consumed += len(data)
            if not t.spilled:
                if t.consumed <= REPLAY_BYTES:
                    t.head += data
                else:
                    t.spilled, t.head = True, bytearray()
        n = len(data)
        buf[:n] = data
        self.pos += n
        return n


_tapes: dict[str, _Tape] = {}


def _tape(path: Path) -> _Tape | None:
    """The tape of a path that is not a regular file (a pipe such as `<(zcat f.gz)`,
    stdin as `-`, a device), or None for a regular file, which is simply reopened."""
    name = str(path)
    tape = _tapes.get(name)
    if tape is not None:
        return tape
    if name == STDIN:
        tape = _Tape("stdin", 0)
    elif stat.S_ISREG(os.stat(path).st_mode) or os.path.isdir(path):
        return None
    else:
        tape = _Tape(name, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    _tapes[name] = tape
    return tape


def is_stream(path: Path) -> bool:
    """True for an input that must not be read ahead of the reader (a pipe, stdin, a device)."""
    try:
        return str(path) == STDIN or not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def input_name(path: Path | str) -> str:
    """An input as a message names it: stdin is not a file called `-`, and a pipe
    (`<(...)` shows as /dev/fd/63) is said to be one."""
    if str(path) == STDIN:
        return "standard input"
    return f"the pipe {path}" if is_stream(Path(path)) or str(path).startswith("/dev/fd/") else str(path)


def open_text(path: Path) -> TextIO:
    """Opens a CSV as text, gunzipping by magic bytes rather than by name (a pipe too);
    a BOM is dropped and stray non-UTF-8 bytes become U+FFFD (counted) instead of
    stopping the run. Lines are not bounded here: read them with `bounded_lines`."""
    try:
        tape = _tape(path)
        if tape is None:
            with open(path, "rb") as probe:
                gz = probe.read(2) == _GZIP_MAGIC
            binary: io.BufferedIOBase = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 -- returned
        else:
            buffered = io.BufferedReader(tape.opened(), 1 << 16)
            gz = buffered.peek(2)[:2] == _GZIP_MAGIC
            binary = gzip.GzipFile(fileobj=buffered, mode="rb") if gz else buffered
        return io.TextIOWrapper(cast(BinaryIO, binary), encoding="utf-8-sig", errors="oidownload-replace", newline="")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


_TOO_LONG = f"the line is longer than {MAX_LINE} characters"


def bounded_lines(f: TextIO) -> Iterator[str | None]:
    """The lines of f, each at most MAX_LINE characters; None stands for a longer line,
    which is read past in pieces and never held whole."""
    readline = f.readline
    while line := readline(MAX_LINE):
        if len(line) < MAX_LINE or line[-1] in "\r\n":
            yield line
            continue
        while (rest := readline(MAX_LINE)) and len(rest) == MAX_LINE and rest[-1] not in "\r\n":
            pass
        yield None


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a small text file (class lists), bounded: an over-long line is an
    InputError naming it."""
    with open_text(path) as f:
        for n, line in enumerate(bounded_lines(f), 1):
            if line is None:
                raise InputError(f"{path}:{n}: {_TOO_LONG}")
            yield line


def first_line(path: Path) -> str:
    """The first line of a file (its header), bounded; InputError when it cannot be read
    or is longer than MAX_LINE (not a CSV header: `/dev/zero`, a binary file)."""
    with open_text(path) as f:
        try:
            first = f.readline(MAX_LINE)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{path}: cannot read the header: {exc}") from None
    if len(first) == MAX_LINE and first[-1] not in "\r\n":
        raise InputError(f"{path}: the first line is longer than {MAX_LINE} characters: this is not a CSV file")
    return first


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
    first = first_line(path)
    if not first.strip():
        raise InputError(f"{path}: the file is empty; {_expected()}")
    if re.search(r"[\x00-\x08\x0e-\x1f\ufffd]", first):
        # Not echoed: the bytes of a binary file would garble the terminal.
        raise InputError(f"{path}: unknown header (binary bytes, not shown): this is not a CSV text file; {_expected()}")
    try:
        header = tuple(h.strip() for h in _parse_fields(first))
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
            yield start, _TOO_LONG, False
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


def _host_problem(host: str) -> str | None:
    """Why an ASCII (IDNA-encoded) host cannot be connected to, or None."""
    if host.replace(".", "").isdigit():
        # Digits and dots are an IPv4 address or nothing: aiohttp refuses the legacy
        # forms (127.1, 0177.0.0.1, 2130706433) that the resolver would still accept.
        return None if _IPV4_RE.fullmatch(host) else f"has host {host[:80]!r}, which is not a canonical IPv4 address"
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        return f"has host {host[:80]!r}, which is not a valid host name"
    return None


def url_problem(url: str) -> str | None:
    """Why a URL cannot be fetched, or None: it must be http(s), parse as aiohttp will
    parse it (yarl), with a port in 1-65535 and a host that is an IP address or a valid
    (IDNA-encodable) host name. The common shape is decided by a pattern alone."""
    plain = _PLAIN_URL_RE.fullmatch(url)
    if plain is not None:
        authority = plain.group(1)
        if authority in _good_authorities:
            return None
        host, _, port = authority.partition(":")
        if (not port or 0 < int(port) <= 65535) and "xn--" not in host.lower() and _host_problem(host) is None:
            if len(_good_authorities) > 4096:
                _good_authorities.clear()
            _good_authorities.add(authority)
            return None
    if not _URL_RE.fullmatch(url):
        return "is not an http(s) URL"
    # Brackets enclose an IPv6 literal and nothing else: some yarl versions read the
    # '::1' out of 'x[::1]'.
    hostport = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0].rpartition("@")[2]
    if ("[" in hostport or "]" in hostport) and not _BRACKETED_RE.fullmatch(hostport):
        return "has brackets around something other than the whole host"
    try:
        parsed = URL(url)
        host = parsed.raw_host  # IDNA-encoded (yarl raises on what cannot be)
        port = parsed.explicit_port
        _ = parsed.host  # decodes punycode labels: raises on a bad xn-- label
    except (ValueError, UnicodeError) as exc:
        return f"is not a valid URL ({exc})"
    if not host:
        return "has no host"
    if port is not None and not 0 < port <= 65535:
        return f"has port {port}, outside 1-65535"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return _host_problem(host)


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
        fields = _parse_fields(text)
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
    yield from records(_then(pending, f), skip, first, read)


def _then(pending: list[str | None], f: TextIO) -> Iterator[str | None]:
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
            gz = probe.read(2) == _GZIP_MAGIC
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
