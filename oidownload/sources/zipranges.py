"""Chosen members of a big remote zip (the Open Images mask zips), read by HTTP Range
requests: the central directory from the zip's tail (cached on disk per URL), then only
the wanted members' bytes, near neighbours in one request, each inflated and CRC-checked.

The zip logic reads through a RangeReader (HTTP, or a local file), so it knows no
transport. A problem with one member is that member's status; a problem with the whole
zip is a ZipError (ZipChanged when it changed while being read: read its directory again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, Protocol

import aiohttp

from oidownload.core.errors import InputError

TAIL_BYTES = 64 * 1024  # the first, suffix request: the EOCD and most zips' whole directory
CHECK_BYTES = 1024  # the first request when a cached directory only needs its size and ETag checked
MAX_GAP = 16 * 1024  # members this close share one request: the gap costs less than a round trip
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # one coalesced request is held in memory whole
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a mask PNG is well under 1 MB; far more is a zip bomb
MAX_MEMBERS = 2_000_000  # a mask zip holds about 175,000; a directory claiming more is hostile
MAX_DIRECTORY_BYTES = 256 * 1024 * 1024  # a 175,000-member directory is about 15 MB
# The local extra field may be longer than the central one (timestamps, zip64 sizes): asking
# for this much more usually saves a second request for the member's last bytes.
HEADER_SLACK = 64

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_LOC64 = struct.Struct("<4sLQL")  # zip64 EOCD locator, 20 bytes, just before the EOCD
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 EOCD record, 56 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry, 46 bytes + name, extra, comment
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes + name, extra
_FULL32 = 0xFFFFFFFF


class ZipError(InputError):
    """The zip as a whole cannot be read: not found, not a zip, or the server ignores Range."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ZipChanged(ZipError):
    """The zip changed since its directory was read (another ETag or size): read it again."""


class MemberStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"  # not in the zip (or the folder)
    CRC = "crc"  # inflated, but its CRC-32 is not the directory's
    TRUNCATED = "truncated"  # the zip is shorter than the directory says
    CORRUPT = "corrupt"  # no local header where the directory says, bad deflate data, wrong size
    TOO_LARGE = "too_large"  # over max_member_bytes: refused unread
    UNSUPPORTED = "unsupported"  # encrypted, or compressed by other than stored/deflate


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    status: MemberStatus
    data: bytes = b""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is MemberStatus.OK


class Entry(NamedTuple):
    offset: int  # of the local file header
    csize: int
    usize: int
    crc: int
    method: int  # 0 stored, 8 deflate
    flags: int
    header: int  # 30 + name + extra lengths, as the central entry has them: a guess at the local header


_CODES = "QQQIHHI"  # Entry's fields as array type codes


def _columns() -> tuple[array[int], ...]:
    return tuple(array(code) for code in _CODES)


@dataclass(slots=True)
class Directory:
    """A zip's central directory, compact: name → row, and one array of machine ints per
    Entry field (about 200 bytes a member, names included; a ZipInfo is several times that)."""

    size: int  # of the whole zip
    validator: str  # its ETag (or Last-Modified, or size-mtime for a local file); "" if none
    data_end: int  # members' bytes lie before this: where the central directory starts
    cd_size: int
    rows: dict[str, int] = field(default_factory=dict)
    columns: tuple[array[int], ...] = field(default_factory=_columns)

    def __len__(self) -> int:
        return len(self.rows)

    def entry(self, name: str) -> Entry | None:
        i = self.rows.get(name)
        return None if i is None else Entry._make(c[i] for c in self.columns)


class RangeReader(Protocol):
    """Bytes of one file by position. `read` returns bytes [start, end), fewer only where
    the file ends first; it raises ZipChanged when the file is no longer `size`/`validator`."""

    @property
    def size(self) -> int: ...

    @property
    def validator(self) -> str: ...

    async def read(self, start: int, end: int) -> bytes: ...


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class HttpRangeReader:
    """A remote file read by Range requests on the caller's session (its timeouts, proxy and
    headers apply; its transport errors propagate). Make it with `open`: the first request, a
    suffix one, learns the size and ETag, and its bytes serve later reads of the tail."""

    def __init__(self, session: aiohttp.ClientSession, url: str, proxy: str | None = None) -> None:
        self.session = session
        self.url = url
        self.proxy = proxy  # the run's proxy rule for this URL (engine/fetch.py proxy_for)
        self.size = -1
        self.validator = ""
        self._tail_start = 0
        self._tail = b""

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, url: str, tail_bytes: int = TAIL_BYTES,
                   proxy: str | None = None) -> HttpRangeReader:
        reader = cls(session, url, proxy)
        start, reader._tail = await reader._get(f"-{max(1, tail_bytes)}", None)
        reader._tail_start = start
        return reader

    async def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        if start >= self._tail_start:
            return self._tail[start - self._tail_start : end - self._tail_start]
        return (await self._get(f"{start}-{end - 1}", start))[1]

    async def _get(self, spec: str, start: int | None) -> tuple[int, bytes]:
        """(where the answer starts, its body) of one Range request, checked before its body is read."""
        headers = {"Range": f"bytes={spec}", "Accept-Encoding": "identity"}
        async with self.session.get(self.url, headers=headers, proxy=self.proxy) as resp:
            try:
                if resp.status != 206:
                    raise self._refusal(resp)
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
                if m is None:
                    raise ZipError(f"{self.url}: a 206 answer without a usable Content-Range "
                                   f"({resp.headers.get('Content-Range')!r})")
                first, last, total = map(int, m.groups())
                validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
                if start is None:  # the first request: it tells what the file is
                    self.size, self.validator = total, validator
                    if last + 1 != total:
                        raise ZipError(f"{self.url}: asked for its last bytes, the server answered {m[0]!r}")
                elif total != self.size or (self.validator and validator != self.validator):
                    raise ZipChanged(f"{self.url} changed while being read ({self.size} bytes, "
                                     f"{self.validator or 'no ETag'} before; {total} bytes, "
                                     f"{validator or 'no ETag'} now): read its directory again")
                elif first != start or last < first:
                    raise ZipError(f"{self.url}: asked for bytes {spec}, the server answered {m[0]!r}")
                return first, await _body(resp, last + 1 - first, self.url)
            except BaseException:
                resp.close()  # never read on: the body may be the whole multi-GB zip
                raise

    def _refusal(self, resp: aiohttp.ClientResponse) -> ZipError:
        s = resp.status
        if s == 200:
            return ZipError(f"{self.url}: the server ignored the Range request and began sending the whole "
                            f"file ({resp.content_length or 'unknown'} bytes); closed unread, as reading members "
                            "needs Range support", s)
        if s in (404, 410):
            return ZipError(f"{self.url}: not found (HTTP {s})", s)
        if s == 416:
            m = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", "").strip())
            if self.size >= 0 and m is not None and int(m[1]) != self.size:
                return ZipChanged(f"{self.url} is now {m[1]} bytes, not {self.size}: read its directory again", s)
            return ZipError(f"{self.url}: HTTP 416 (range not satisfiable): the file is empty or shorter than "
                            "its directory says", s)
        return ZipError(f"{self.url}: HTTP {s} {resp.reason or ''}".strip(), s)


async def _body(resp: aiohttp.ClientResponse, want: int, url: str) -> bytes:
    """At most `want` bytes: a body longer than its Content-Range is refused, not buffered."""
    chunks: list[bytes] = []
    got = 0
    while got <= want:
        chunk = await resp.content.read(want + 1 - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got > want:
        raise ZipError(f"{url}: the answer is longer than its Content-Range says ({want} bytes)")
    return b"".join(chunks)


class FileRangeReader:
    """A local zip, read by seek. Its validator is its size and mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        st = os.stat(path)
        self.size = st.st_size
        self.validator = f"{st.st_size}-{st.st_mtime_ns}"

    async def read(self, start: int, end: int) -> bytes:
        return await asyncio.to_thread(self._read, start, end)

    def _read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if f"{st.st_size}-{st.st_mtime_ns}" != self.validator:
                raise ZipChanged(f"{self.path} changed while being read: read its directory again")
            f.seek(start)
            return f.read(max(0, min(end, self.size) - start))


# -- the central directory -----------------------------------------------------------------
async def read_directory(reader: RangeReader, *, cache_dir: Path | None = None, key: str = "",
                         tail_bytes: int = TAIL_BYTES, max_members: int = MAX_MEMBERS) -> Directory:
    """The zip's central directory: the copy cached in cache_dir for `key` (its URL or path)
    when it was made at the same size and validator, else parsed (and cached)."""
    cache = cache_path(cache_dir, key) if cache_dir is not None and key else None
    if cache is not None and reader.validator:  # no ETag: a same-sized new zip would pass unseen
        cached = await asyncio.to_thread(_load, cache, key)
        if cached is not None and (cached.size, cached.validator) == (reader.size, reader.validator):
            return cached
    directory = await parse_directory(reader, tail_bytes=tail_bytes, max_members=max_members)
    if cache is not None:
        await asyncio.to_thread(_save, cache, key, directory)
    return directory


async def parse_directory(reader: RangeReader, *, tail_bytes: int = TAIL_BYTES,
                          max_members: int = MAX_MEMBERS) -> Directory:
    size = reader.size
    tail_start = max(0, size - tail_bytes)
    tail = await reader.read(tail_start, size)

    async def span(start: int, end: int) -> bytes:  # from the tail, reading only what it lacks
        if start >= tail_start:
            return tail[start - tail_start : end - tail_start]
        return await reader.read(start, min(end, tail_start)) + tail[: max(0, end - tail_start)]

    pos = _find_eocd(tail)
    if pos < 0:
        raise ZipError(f"not a zip: no end of central directory record in its last {len(tail)} bytes")
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    cd_end = tail_start + pos
    if cd_end >= _LOC64.size and (loc := await span(cd_end - _LOC64.size, cd_end))[:4] == b"PK\x06\x07":
        rec_at = _LOC64.unpack(loc)[2]
        rec = await span(rec_at, rec_at + _EOCD64.size) if rec_at + _EOCD64.size <= cd_end - _LOC64.size else b""
        if rec[:4] != b"PK\x06\x06":
            raise ZipError(f"not a zip: its zip64 locator points to no zip64 record (at {rec_at})")
        _, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset = _EOCD64.unpack(rec)
        cd_end = rec_at
    if disk or cd_disk:
        raise ZipError("a zip split over several files (disks) is not supported")
    if cd_offset + cd_size > cd_end or cd_size > MAX_DIRECTORY_BYTES or count > max_members:
        raise ZipError(f"not a zip, or a hostile one: its directory claims {count} members in {cd_size} bytes "
                       f"at {cd_offset}, in a {size}-byte file (limits: {max_members}, {MAX_DIRECTORY_BYTES})")
    shift = cd_end - cd_size - cd_offset  # bytes before the zip proper (a self-extractor's stub)
    cd = await span(cd_end - cd_size, cd_end)
    directory = Directory(size, reader.validator, cd_end - cd_size, cd_size)
    await asyncio.to_thread(_parse_entries, memoryview(cd), count, shift, directory)
    return directory


def _find_eocd(tail: bytes) -> int:
    """Where the last EOCD record whose comment fits in `tail` starts; -1 if none does."""
    pos = len(tail)
    while (pos := tail.rfind(b"PK\x05\x06", 0, pos)) >= 0:
        if pos + _EOCD.size <= len(tail) and pos + _EOCD.size + _EOCD.unpack_from(tail, pos)[-1] <= len(tail):
            return pos
    return -1


def _parse_entries(cd: memoryview, count: int, shift: int, out: Directory) -> None:
    cols, rows, pos = out.columns, out.rows, 0
    for k in range(count):
        fields = _CENTRAL.unpack_from(cd, pos) if pos + _CENTRAL.size <= len(cd) else (b"",)
        if fields[0] != b"PK\x01\x02":
            raise ZipError(f"not a zip: central directory entry {k} of {count} is missing or damaged")
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, offset) = fields
        name_at, extra_at, next_at = pos + 46, pos + 46 + nlen, pos + 46 + nlen + xlen + clen
        if next_at > len(cd):
            raise ZipError(f"not a zip: central directory entry {k} runs past the directory's end")
        if _FULL32 in (csize, usize, offset):
            usize, csize, offset = _zip64_fields(bytes(cd[extra_at : extra_at + xlen]), usize, csize, offset)
        raw = bytes(cd[name_at:extra_at])
        # Bit 11: the name is UTF-8; otherwise cp437, as zipfile reads it.
        name = raw.decode("utf-8", "replace") if flags & 0x800 else raw.decode("cp437")
        values = (min(offset + shift, out.size), csize, usize, crc, method, flags, 30 + nlen + xlen)
        i = rows.setdefault(name, len(cols[0]))
        for col, v in zip(cols, values, strict=True):
            if i == len(col):
                col.append(v)
            else:  # a later duplicate name wins, as in zipfile
                col[i] = v
        pos = next_at


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """(usize, csize, offset) with each 0xFFFFFFFF replaced from the zip64 extra field (0x0001)."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            wide = list(struct.unpack_from(f"<{min(n, len(extra) - i - 4) // 8}Q", extra, i + 4))
            if [usize, csize, offset].count(_FULL32) > len(wide):
                raise ZipError("not a zip: a zip64 extra field is too short")
            u, c, o = (wide.pop(0) if v == _FULL32 else v for v in (usize, csize, offset))
            return u, c, o
        i += 4 + n
    return usize, csize, offset


# -- the on-disk cache: one zlib-compressed file per key, loaded in one pass ---------------
_MAGIC = b"oidownload-zipdir 1\n"


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"zipdir-{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"


def _save(path: Path, key: str, d: Directory) -> None:
    names = list(d.rows)  # in row order: a new name gets the next row, a duplicate keeps its own
    meta = json.dumps({"key": key, "size": d.size, "validator": d.validator, "data_end": d.data_end,
                       "cd_size": d.cd_size, "count": len(names), "byteorder": sys.byteorder}).encode()
    parts: list[bytes | array[int]] = [struct.pack("<I", len(meta)), meta, array("I", map(len, names)),
                                       *d.columns, "".join(names).encode("utf-8", "surrogatepass")]
    path.parent.mkdir(parents=True, exist_ok=True)
    packer = zlib.compressobj(1)  # by parts: no second copy of a 15 MB directory in memory
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".zipdir-", delete=False) as f:
        f.writelines([_MAGIC, *(packer.compress(part) for part in parts), packer.flush()])
    os.replace(f.name, path)  # a reader sees the old file or the new one, never half of one


def _load(path: Path, key: str) -> Directory | None:
    """The cached directory for `key`; None when there is none or it is damaged."""
    try:
        raw = path.read_bytes()
        if not raw.startswith(_MAGIC):
            return None
        blob = zlib.decompress(raw[len(_MAGIC) :])
        (mlen,) = struct.unpack_from("<I", blob)
        meta = json.loads(blob[4 : 4 + mlen])
        if meta["key"] != key or meta["byteorder"] != sys.byteorder:
            return None
        n, pos = int(meta["count"]), 4 + mlen
        d = Directory(int(meta["size"]), str(meta["validator"]), int(meta["data_end"]), int(meta["cd_size"]))
        lengths, *columns = (array(code) for code in "I" + _CODES)
        for a in (lengths, *columns):
            a.frombytes(blob[pos : pos + n * a.itemsize])
            pos += n * a.itemsize
        d.columns = tuple(columns)
        if any(len(a) != n for a in (lengths, *columns)):
            return None
        text, at = blob[pos:].decode("utf-8", "surrogatepass"), 0
        for i, ln in enumerate(lengths):
            d.rows[text[at : at + ln]] = i
            at += ln
        return d if len(d.rows) == n else None
    except (OSError, zlib.error, ValueError, KeyError, TypeError, struct.error):
        return None


# -- the members ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Span:
    """One Range request: [start, end) covers these members (by offset)."""

    start: int
    end: int
    members: tuple[str, ...]


def plan_ranges(directory: Directory, names: Iterable[str], *, max_gap: int = MAX_GAP,
                max_request_bytes: int = MAX_REQUEST_BYTES,
                max_member_bytes: int = MAX_MEMBER_BYTES) -> tuple[list[Span], dict[str, Member]]:
    """The requests that fetch `names`, and the members settled without any (missing,
    refused). Members at most max_gap apart share a request."""
    settled: dict[str, Member] = {}
    wanted: list[tuple[int, int, str]] = []
    for name in dict.fromkeys(names):
        e = directory.entry(name)
        refusal = Member(name, MemberStatus.MISSING, detail="not in the zip") if e is None else _refused(name, e, directory, max_member_bytes)
        if refusal is not None:
            settled[name] = refusal
        elif e is not None:
            wanted.append((e.offset, min(e.offset + e.header + HEADER_SLACK + e.csize, directory.data_end), name))
    groups: list[tuple[int, int, list[str]]] = []
    for start, end, name in sorted(wanted):
        if groups and start - groups[-1][1] <= max_gap and max(end, groups[-1][1]) - groups[-1][0] <= max_request_bytes:
            groups[-1] = (groups[-1][0], max(end, groups[-1][1]), [*groups[-1][2], name])
        else:
            groups.append((start, end, [name]))
    return [Span(s, e, tuple(m)) for s, e, m in groups], settled


def _refused(name: str, e: Entry, d: Directory, cap: int) -> Member | None:
    if e.flags & 1:
        return Member(name, MemberStatus.UNSUPPORTED, detail="encrypted")
    if e.method not in (0, 8):
        return Member(name, MemberStatus.UNSUPPORTED, detail=f"compression method {e.method} (only stored and deflate)")
    if max(e.usize, e.csize) > cap:
        return Member(name, MemberStatus.TOO_LARGE, detail=f"{e.usize} bytes ({e.csize} compressed), over the {cap}-byte cap")
    if e.offset + _LOCAL.size + e.csize > d.data_end:
        return Member(name, MemberStatus.TRUNCATED,
                      detail=f"the directory puts its {e.csize} bytes at {e.offset}, past the members' end ({d.data_end})")
    return None


async def read_members(reader: RangeReader, directory: Directory, names: Iterable[str], *,
                       max_gap: int = MAX_GAP, max_request_bytes: int = MAX_REQUEST_BYTES,
                       max_member_bytes: int = MAX_MEMBER_BYTES, concurrency: int = 4) -> dict[str, Member]:
    """name → Member for each of `names`, in their order. Raises only for the whole zip."""
    if (reader.size, reader.validator) != (directory.size, directory.validator):
        raise ZipChanged(f"the zip is not the one its directory was read from ({reader.size} bytes, "
                         f"{reader.validator or 'no ETag'}; the directory: {directory.size}, "
                         f"{directory.validator or 'no ETag'}): read its directory again")
    order = list(dict.fromkeys(names))
    spans, results = plan_ranges(directory, order, max_gap=max_gap, max_request_bytes=max_request_bytes,
                                 max_member_bytes=max_member_bytes)
    gate = asyncio.Semaphore(concurrency)

    async def fetch(span: Span) -> None:
        async with gate:
            body = await reader.read(span.start, span.end)
        for name, e in zip(span.members, map(directory.entry, span.members), strict=True):
            assert e is not None  # planned from the directory
            results[name] = await _member(reader, directory.data_end, name, e, span.start, body)

    tasks = [asyncio.create_task(fetch(s)) for s in spans]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return {name: results[name] for name in order}


async def _member(reader: RangeReader, data_end: int, name: str, e: Entry, base: int, body: bytes) -> Member:
    """One member from `body`, the bytes fetched from `base` on."""
    head = body[e.offset - base : e.offset - base + _LOCAL.size]
    if len(head) < _LOCAL.size:
        return Member(name, MemberStatus.TRUNCATED, detail=f"the zip ends inside its local header (at {e.offset})")
    sig, *_, nlen, xlen = _LOCAL.unpack(head)
    if sig != b"PK\x03\x04":
        return Member(name, MemberStatus.CORRUPT, detail=f"no local file header at {e.offset}, where the directory puts it")
    data_at = e.offset + _LOCAL.size + nlen + xlen
    if data_at + e.csize > data_end:
        return Member(name, MemberStatus.TRUNCATED, detail=f"its data would run past the members' end ({data_end})")
    data = body[data_at - base : data_at - base + e.csize]
    if len(data) < e.csize:  # its local extra field is longer than the central one, by more than the slack
        data += await reader.read(data_at + len(data), data_at + e.csize)
    if len(data) < e.csize:
        return Member(name, MemberStatus.TRUNCATED, detail=f"got {len(data)} of its {e.csize} bytes")
    return _inflate(name, e, data)


def _inflate(name: str, e: Entry, data: bytes) -> Member:
    out = data
    if e.method == 8:
        inflater = zlib.decompressobj(-15)
        try:
            # max_length: a member whose directory entry lies about its size still stops here.
            out = inflater.decompress(data, e.usize + 1)
        except zlib.error as exc:
            return Member(name, MemberStatus.CORRUPT, detail=f"bad deflate data ({exc})")
        if len(out) <= e.usize and not inflater.eof:
            return Member(name, MemberStatus.CORRUPT, detail="its deflate stream ends early")
    if len(out) != e.usize:
        got = f"more than {e.usize}" if len(out) > e.usize else str(len(out))
        return Member(name, MemberStatus.CORRUPT, detail=f"{got} bytes inflated, the directory says {e.usize}")
    crc = zlib.crc32(out)
    if crc != e.crc:
        return Member(name, MemberStatus.CRC, detail=f"CRC-32 {crc:08x}, the directory says {e.crc:08x}")
    return Member(name, MemberStatus.OK, out)


def read_folder(folder: Path, names: Iterable[str], *, max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, Member]:
    """name → Member from a folder of unpacked members (no CRC to check: read as they are)."""
    root = folder.resolve()
    out: dict[str, Member] = {}
    for name in dict.fromkeys(names):
        path = (root / name).resolve()
        try:
            if not path.is_relative_to(root) or not path.is_file():  # a name may not climb out of the folder
                raise FileNotFoundError(name)
            size = path.stat().st_size
            out[name] = (Member(name, MemberStatus.TOO_LARGE, detail=f"{size} bytes, over the {max_member_bytes}-byte cap")
                         if size > max_member_bytes else Member(name, MemberStatus.OK, path.read_bytes()))
        except OSError:
            out[name] = Member(name, MemberStatus.MISSING, detail=f"not in {folder}")
    return out


async def fetch_members(source: str | Path, names: Iterable[str], *, session: aiohttp.ClientSession | None = None,
                        cache_dir: Path | None = None, tail_bytes: int = TAIL_BYTES, max_gap: int = MAX_GAP,
                        max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, Member]:
    """name → Member from an http(s) zip (through `session`; its directory cached in
    cache_dir and read again once if the zip changes meanwhile), a local .zip, or a folder."""
    order = list(dict.fromkeys(names))
    if isinstance(source, str) and re.match(r"https?://", source, re.IGNORECASE):
        if session is None:
            raise ValueError("reading a zip over HTTP needs the caller's aiohttp session")
        return await _fetch_http(session, source, order, cache_dir, tail_bytes, max_gap, max_member_bytes)
    path = Path(source)
    if path.is_dir():
        return await asyncio.to_thread(read_folder, path, order, max_member_bytes=max_member_bytes)
    if not path.is_file():
        raise ZipError(f"{path}: no such zip file or folder")
    reader = FileRangeReader(path)
    directory = await read_directory(reader, cache_dir=cache_dir, key=str(path.resolve()), tail_bytes=tail_bytes)
    return await read_members(reader, directory, order, max_gap=max_gap, max_member_bytes=max_member_bytes)


async def _fetch_http(session: aiohttp.ClientSession, url: str, names: list[str], cache_dir: Path | None,
                      tail_bytes: int, max_gap: int, max_member_bytes: int) -> dict[str, Member]:
    async def attempt() -> dict[str, Member]:
        # With a cached directory, the first request only has to show the size and ETag.
        cached = cache_dir is not None and cache_path(cache_dir, url).is_file()
        reader = await HttpRangeReader.open(session, url, CHECK_BYTES if cached else tail_bytes)
        directory = await read_directory(reader, cache_dir=cache_dir, key=url, tail_bytes=tail_bytes)
        return await read_members(reader, directory, names, max_gap=max_gap, max_member_bytes=max_member_bytes)

    try:
        return await attempt()
    except ZipChanged:  # replaced while we read it: once more, from its new tail
        return await attempt()
