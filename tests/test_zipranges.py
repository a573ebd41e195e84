"""oidownload/zipranges.py against the real local origin: chosen members of mask zips built
here from generated PNGs, fetched by Range requests, counted in requests and bytes at the server."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from PIL import Image, ImageDraw

from oidownload.sources import zipranges as zr
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Origin

ZIP_PATH = "masks/train-masks-0.zip"
EOCD = 22


def mask_names(n: int, seed: int) -> list[str]:
    """MaskPath-like names (ImageID_LabelName_BoxID.png), sorted as in the real zips."""
    rng = random.Random(seed)
    labels = ["m0c9ph5", "m01g317", "m04yx4", "m0k4j", "m09j2d"]
    return sorted(f"{rng.getrandbits(64):016x}_{rng.choice(labels)}_{rng.getrandbits(32):08x}.png" for _ in range(n))


def mask_png(rng: random.Random) -> bytes:
    w, h = rng.randrange(40, 160), rng.randrange(40, 160)
    img = Image.new("L", (w, h))
    x, y = rng.randrange(w // 2), rng.randrange(h // 2)
    ImageDraw.Draw(img).ellipse((x, y, x + rng.randrange(4, w // 2), y + rng.randrange(4, h // 2)), fill=255)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def build_zip(members: dict[str, bytes], *, force_zip64: bool = False) -> bytes:
    """Every third member stored, the others deflated (the real mask zips deflate)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (name, data) in enumerate(members.items()):
            info = zipfile.ZipInfo(name, (2018, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if k % 3 == 0 else zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)
    return buf.getvalue()


def masks(n: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {name: mask_png(rng) for name in mask_names(n, seed)}


@pytest.fixture(scope="module")
def big() -> tuple[bytes, dict[str, bytes]]:
    """3000 masks: a ~230 KB central directory, more than one 64 KiB tail holds."""
    members = masks(3000, 1)
    return build_zip(members), members


class BytesReader:
    """The RangeReader protocol over bytes in memory: the zip logic needs no transport."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.validator = data, len(data), "v1"

    async def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]


def directory_of(data: bytes) -> zr.Directory:
    return asyncio.run(zr.parse_directory(BytesReader(data)))


def fetch(url_or_path: str | Path, names: Sequence[str], cache: Path | None = None, **kw: object) -> dict[str, zr.Member]:
    async def go() -> dict[str, zr.Member]:
        async with aiohttp.ClientSession() as session:
            return await zr.fetch_members(url_or_path, names, session=session, cache_dir=cache, **kw)  # type: ignore[arg-type]

    return asyncio.run(go())


def serve(make_origin: StartOrigin, data: bytes, **kw: object) -> tuple[Origin, str]:
    origin = make_origin(Corpus.generate(0, mix="tiny"), extra_files={ZIP_PATH: data}, **kw)
    return origin, f"{origin.base_url}/files/{ZIP_PATH}"


def member_bytes(data: bytes, names: Sequence[str]) -> int:
    """Σ (compressed size + local header) of the named members."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return sum(zf.getinfo(n).compress_size + 30 + len(n.encode()) + len(zf.getinfo(n).extra) for n in names)


def chosen(members: dict[str, bytes]) -> list[str]:
    names = list(members)
    # Two runs of neighbours (to be coalesced) and three loners far apart.
    return [names[10], names[11], names[12], names[700], names[1500], names[1501], names[2200], names[2999]]


def test_chosen_members_are_zipfiles_bytes_in_few_requests(tmp_path: Path, make_origin: StartOrigin,
                                                           big: tuple[bytes, dict[str, bytes]]) -> None:
    data, members = big
    origin, url = serve(make_origin, data)
    names = chosen(members)
    got = fetch(url, names, tmp_path / "state")

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert {n: m.data for n, m in got.items()} == {n: zf.read(n) for n in names}
    assert all(m.ok for m in got.values()) and list(got) == names
    d = directory_of(data)
    assert len(d) == 3000 and d.cd_size > zr.TAIL_BYTES
    spans, settled = zr.plan_ranges(d, names)
    assert not settled and len(spans) == 5  # the runs 10-12 and 1500-1501 are one request each
    path = f"/files/{ZIP_PATH}"
    assert origin.requests[path] == 2 + len(spans)  # the tail, the rest of the directory, the members
    assert origin.bytes_sent[path] <= d.cd_size + EOCD + member_bytes(data, names) + 16 * 1024 * len(names)


def test_the_cached_directory_is_reused_and_refetched_when_the_zip_changes(
        tmp_path: Path, make_origin: StartOrigin, big: tuple[bytes, dict[str, bytes]]) -> None:
    data, members = big
    origin, url = serve(make_origin, data)
    path, state, names = f"/files/{ZIP_PATH}", tmp_path / "state", chosen(members)
    spans = len(zr.plan_ranges(directory_of(data), names)[0])
    fetch(url, names, state)
    assert origin.requests[path] == 2 + spans and len(list(state.iterdir())) == 1

    origin.requests.clear()
    origin.bytes_sent.clear()
    again = fetch(url, names, state)
    assert all(m.ok for m in again.values())
    assert origin.requests[path] == 1 + spans  # a small check of size and ETag, then the members
    assert origin.bytes_sent[path] <= zr.CHECK_BYTES + member_bytes(data, names) + 16 * 1024 * len(names)

    # Another zip at the same URL, same names, other bytes: a new ETag, so the directory is read again.
    other_members = {n: mask_png(random.Random(i)) for i, n in enumerate(members)}
    other = build_zip(other_members)
    origin.extra_files[ZIP_PATH] = other
    origin.requests.clear()
    third = fetch(url, names, state)
    assert {n: m.data for n, m in third.items()} == {n: other_members[n] for n in names}
    assert origin.requests[path] == 1 + 2 + len(zr.plan_ranges(directory_of(other), names)[0])


def test_a_zip_that_changes_between_requests_is_its_own_error(make_origin: StartOrigin) -> None:
    members = masks(50, 2)
    origin, url = serve(make_origin, build_zip(members))

    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            # A short tail: the first members are outside it, so reading them asks the origin.
            reader = await zr.HttpRangeReader.open(session, url, tail_bytes=4096)
            directory = await zr.read_directory(reader, tail_bytes=4096)
            origin.extra_files[ZIP_PATH] = build_zip({**members, "extra.png": b"x" * 100})
            with pytest.raises(zr.ZipChanged, match="changed while being read"):
                await zr.read_members(reader, directory, list(members)[:3])

    asyncio.run(go())


def test_a_server_that_ignores_range_is_refused_without_reading_the_zip(make_origin: StartOrigin) -> None:
    members = masks(20, 3)
    members["0fffffffffffffff_m0k4j_ffffffff.png"] = random.Random(3).randbytes(6 * 1024 * 1024)
    data = build_zip(members)
    # 8 MB/s: the whole zip would take most of a second to send; the client must hang up at once.
    origin, url = serve(make_origin, data, bandwidth=8e6)
    origin.ignore_range = True
    t0 = time.monotonic()
    with pytest.raises(zr.ZipError, match="ignored the Range request") as err:
        fetch(url, list(members)[:2])
    assert time.monotonic() - t0 < 2 and err.value.http_status == 200
    time.sleep(0.2)
    path = f"/files/{ZIP_PATH}"
    assert origin.requests[path] == 1
    assert origin.bytes_sent[path] < len(data) // 4


def test_not_found_and_not_a_zip_are_errors(make_origin: StartOrigin) -> None:
    url = serve(make_origin, random.Random(4).randbytes(100_000))[1]
    with pytest.raises(zr.ZipError, match="not a zip") as err:
        fetch(url, ["a.png"])
    assert not isinstance(err.value, zr.ZipChanged)
    with pytest.raises(zr.ZipError, match="not found") as err:
        fetch(url.replace("train-masks-0", "train-masks-1"), ["a.png"])
    assert err.value.http_status == 404


def test_a_truncated_zip(make_origin: StartOrigin) -> None:
    members = masks(30, 5)
    data = build_zip(members)
    with pytest.raises(zr.ZipError, match="not a zip"):  # cut at the end: its directory is gone
        asyncio.run(zr.parse_directory(BytesReader(data[:-1000])))

    # Cut in the middle, the directory kept: members at or past the cut are truncated.
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    cd_start = struct.unpack_from("<L", data, len(data) - 6)[0]
    cut = infos[20].header_offset + 10
    cut_zip = data[:cut] + data[cd_start:-6] + struct.pack("<LH", cut, 0)
    url = serve(make_origin, cut_zip)[1]
    names = [i.filename for i in infos[17:23]]
    got = fetch(url, names)
    assert [m.status for m in got.values()] == ["ok"] * 3 + ["truncated"] * 3
    assert all(got[n].data == members[n] for n in names[:3])
    assert "past the members' end" in got[names[3]].detail


def test_a_corrupted_member_fails_its_crc_and_a_missing_one_is_missing(make_origin: StartOrigin) -> None:
    members = masks(30, 6)
    data = bytearray(build_zip(members))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[9]  # stored (every third)
    assert info.compress_type == zipfile.ZIP_STORED
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0xFF
    url = serve(make_origin, bytes(data))[1]
    names = [*list(members)[8:11], "0000000000000000_m0k4j_00000000.png"]
    got = fetch(url, names)
    assert [m.status for m in got.values()] == ["ok", "crc", "ok", "missing"]
    assert got[names[1]].detail.startswith("CRC-32") and got[names[3]].detail == "not in the zip"


def test_a_local_zip_and_a_folder_give_the_same_bytes(tmp_path: Path) -> None:
    members = masks(40, 7)
    zpath = tmp_path / "train-masks-0.zip"
    zpath.write_bytes(build_zip(members))
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "unpacked")
    (tmp_path / "secret.png").write_bytes(b"outside")
    names = [*list(members)[::7], "nothere.png"]
    from_zip = fetch(zpath, names, tmp_path / "state")
    from_folder = fetch(tmp_path / "unpacked", [*names, "../secret.png"])
    assert {n: m.data for n, m in from_zip.items()} == {n: m.data for n, m in from_folder.items() if n in names}
    assert from_zip["nothere.png"].status == from_folder["nothere.png"].status == "missing"
    assert from_folder["../secret.png"].status == "missing"  # a name cannot climb out of the folder
    assert fetch(zpath, names, tmp_path / "state") == from_zip  # again, from the cached directory


def test_zip64_parses(tmp_path: Path, make_origin: StartOrigin, monkeypatch: pytest.MonkeyPatch) -> None:
    members = masks(12, 8)
    # Low limits make zipfile write what a >4 GiB zip has: 0xFFFFFFFF sizes and offsets with
    # zip64 extra fields, a zip64 EOCD record and its locator; force_zip64 adds local ones.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 5)
    data = build_zip(members, force_zip64=True)
    monkeypatch.undo()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    d = directory_of(data)
    assert len(d) == 12
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert all(info.extra[:2] == b"\x01\x00" for info in zf.infolist())  # central zip64 fields
        for info in zf.infolist():
            e = d.entry(info.filename)
            assert e is not None and (e.offset, e.csize, e.usize, e.crc) == (
                info.header_offset, info.compress_size, info.file_size, info.CRC)
    url = serve(make_origin, data)[1]
    got = fetch(url, list(members)[2:5])
    assert {n: m.data for n, m in got.items()} == {n: members[n] for n in list(members)[2:5]}


def test_a_local_header_longer_than_the_central_one_takes_a_second_read(
        make_origin: StartOrigin, monkeypatch: pytest.MonkeyPatch) -> None:
    members = masks(10, 9)
    data = build_zip(members, force_zip64=True)  # a 20-byte zip64 extra in each local header only
    monkeypatch.setattr(zr, "HEADER_SLACK", 0)
    origin, url = serve(make_origin, data)
    name = list(members)[4]
    got = fetch(url, [name], tail_bytes=directory_of(data).cd_size + EOCD)  # a tail of no member bytes
    assert got[name].data == members[name]
    assert origin.requests[f"/files/{ZIP_PATH}"] == 1 + 2  # the tail, then the member in two reads


def test_a_member_over_the_cap_is_refused_unread(make_origin: StartOrigin) -> None:
    members = {**masks(5, 10), "0a1b2c3d4e5f6789_m0c9ph5_b0a1c2d3.png": bytes(2_000_000)}
    data = build_zip(members)  # the last member deflates 2 MB of zeros to about 2 KB
    origin, url = serve(make_origin, data)
    got = fetch(url, list(members), max_member_bytes=1_000_000, tail_bytes=directory_of(data).cd_size + EOCD)
    bomb = got["0a1b2c3d4e5f6789_m0c9ph5_b0a1c2d3.png"]
    assert bomb.status == "too_large" and "over the 1000000-byte cap" in bomb.detail
    assert sum(m.ok for m in got.values()) == 5
    assert origin.bytes_sent[f"/files/{ZIP_PATH}"] < len(data) - 1000  # its ~2 KB were not fetched


def test_the_origin_answers_each_kind_of_range(make_origin: StartOrigin) -> None:
    body = bytes(range(256)) * 4
    origin, url = serve(make_origin, body)

    async def get(spec: str) -> tuple[int, str, bytes, str]:
        async with aiohttp.ClientSession() as session, session.get(url, headers={"Range": spec}) as resp:
            return resp.status, resp.headers.get("Content-Range", ""), await resp.read(), resp.headers.get("ETag", "")

    async def go() -> None:
        assert (await get("bytes=10-19"))[:3] == (206, "bytes 10-19/1024", body[10:20])
        assert (await get("bytes=1000-"))[:3] == (206, "bytes 1000-1023/1024", body[1000:])
        assert (await get("bytes=-24"))[:3] == (206, "bytes 1000-1023/1024", body[1000:])
        assert (await get("bytes=-5000"))[:3] == (206, "bytes 0-1023/1024", body)
        assert (await get("bytes=1020-5000"))[:3] == (206, "bytes 1020-1023/1024", body[1020:])
        for unsatisfiable in ("bytes=1024-", "bytes=2000-3000", "bytes=-0", "bytes=5-2"):
            assert (await get(unsatisfiable))[:2] == (416, "bytes */1024"), unsatisfiable
        origin.ignore_range = True
        status, _, got, etag = await get("bytes=10-19")
        assert (status, got) == (200, body) and etag.startswith('"')

    asyncio.run(go())
    assert origin.requests[f"/files/{ZIP_PATH}"] == 10
    assert origin.bytes_sent[f"/files/{ZIP_PATH}"] == 10 + 24 + 24 + 1024 + 4 + 1024


def test_damaged_zips_give_statuses_or_a_zip_error_and_nothing_else() -> None:
    members = masks(12, 11)
    data = build_zip(members)
    rng = random.Random(11)
    seen: set[str] = set()
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 6)):  # mostly in the directory and the EOCD
            damaged[rng.randrange(data.find(b"PK\x01\x02") if rng.random() < 0.8 else 0, len(data))] = rng.randrange(256)
        reader = BytesReader(bytes(damaged))

        async def go(reader: BytesReader = reader) -> dict[str, zr.Member]:
            d = await zr.parse_directory(reader)
            return await zr.read_members(reader, d, [*members, *list(d.rows)[:20]])

        try:
            seen.update(m.status for m in asyncio.run(go()).values())
        except zr.ZipError:
            seen.add("ZipError")
    assert {"ok", "missing", "crc", "ZipError"} <= seen
