"""Text from an input: a file (plain or gzip), a pipe or `-` for stdin, read as UTF-8
(undecodable bytes counted and replaced) in lines of bounded length, so no input can
exhaust memory; a stream read twice (header, then rows) is replayed from a tape."""

from __future__ import annotations

import codecs
import gzip
import io
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, cast

from oidownload.core.errors import InputError

# Real rows are under 1 KB; a line longer than this is a bad row, read past without
# keeping it, so an endless line (`/dev/zero`) cannot exhaust memory.
MAX_LINE = 64 * 1024


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


GZIP_MAGIC = b"\x1f\x8b"


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
                gz = probe.read(2) == GZIP_MAGIC
            binary: io.BufferedIOBase = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 -- returned
        else:
            buffered = io.BufferedReader(tape.opened(), 1 << 16)
            gz = buffered.peek(2)[:2] == GZIP_MAGIC
            binary = gzip.GzipFile(fileobj=buffered, mode="rb") if gz else buffered
        return io.TextIOWrapper(cast(BinaryIO, binary), encoding="utf-8-sig", errors="oidownload-replace", newline="")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


TOO_LONG = f"the line is longer than {MAX_LINE} characters"


def bounded_lines(f: TextIO, limit: int = MAX_LINE) -> Iterator[str | None]:
    """The lines of f, each at most `limit` characters; None stands for a longer line,
    which is read past in pieces and never held whole."""
    readline = f.readline
    while line := readline(limit):
        if len(line) < limit or line[-1] in "\r\n":
            yield line
            continue
        while (rest := readline(limit)) and len(rest) == limit and rest[-1] not in "\r\n":
            pass
        yield None


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a small text file (class lists), bounded: an over-long line is an
    InputError naming it."""
    with open_text(path) as f:
        for n, line in enumerate(bounded_lines(f), 1):
            if line is None:
                raise InputError(f"{path}:{n}: {TOO_LONG}")
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
