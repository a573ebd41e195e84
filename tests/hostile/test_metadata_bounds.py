"""Issue 28 item 5, `metadata`'s bounds: a body that never ends stops (at the published
size, or --max-size-mb when none is published); a 206 from elsewhere than asked is never
appended; a huge archive of empty members is read one member at a time; two runs for
one file do not share its .part."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

from tests.conftest import run_cli
from tests.hostile.conftest import Hostile, Request, chunked, raw, response

NAME = "class-descriptions-boxable.csv"
ROUTE = f"/v5/{NAME}"


def _metadata(dest: Path, hostile: Hostile, *extra: object) -> list[object]:
    return ["metadata", "--version", "v6", "-o", dest, "--base-url", hostile.url("/"), "--only", NAME, *extra]


def _endless(status: str = "200 OK", headers: str = "") -> object:
    async def send(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(f"HTTP/1.1 {status}\r\n{headers}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        block = b"x" * 65536
        while not w.is_closing():
            w.write(b"%x\r\n%s\r\n" % (len(block), block))
            await w.drain()

    return send


def test_an_endless_chunked_body_stops_at_the_maximum(tmp_path: Path, hostile: Hostile) -> None:
    hostile.route(ROUTE, _endless())  # type: ignore[arg-type]
    dest = tmp_path / "meta"
    began = time.monotonic()
    res = run_cli(*_metadata(dest, hostile, "--max-size-mb", "2"), timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "announced no size" in res.stderr and "--max-size-mb" in res.stderr
    assert time.monotonic() - began < 30
    assert (dest / f"{NAME}.part").stat().st_size == 2 << 20 and not (dest / NAME).exists()


def test_a_body_longer_than_its_content_range_is_cut_back(tmp_path: Path, hostile: Hostile) -> None:
    dest = tmp_path / "meta"
    dest.mkdir()
    (dest / f"{NAME}.part").write_bytes(b"a" * 100)
    hostile.route(ROUTE, _endless("206 Partial Content", "Content-Range: bytes 100-999/1000\r\n"))  # type: ignore[arg-type]
    res = run_cli(*_metadata(dest, hostile), timeout=60)
    assert res.returncode == 1 and "more than the 1000 bytes it announced" in res.stderr, res.stderr
    assert (dest / f"{NAME}.part").read_bytes() == b"a" * 100


def test_a_range_answer_from_elsewhere_is_never_appended(tmp_path: Path, hostile: Hostile) -> None:
    whole = bytes(range(256)) * 4
    dest = tmp_path / "meta"
    dest.mkdir()
    (dest / f"{NAME}.part").write_bytes(whole[:100])
    hostile.route(ROUTE, raw(response("206 Partial Content", {"Content-Range": "bytes 0-1023/1024"}, whole)))
    for _ in range(2):  # the old code doubled the .part on every run
        res = run_cli(*_metadata(dest, hostile))
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "asked for bytes from 100" in res.stderr and "bytes 0-1023/1024" in res.stderr
        assert (dest / f"{NAME}.part").read_bytes() == whole[:100]
    assert not (dest / NAME).exists()


def test_two_runs_for_one_file_do_not_share_its_part(tmp_path: Path, hostile: Hostile) -> None:
    body = bytes(range(256)) * 800
    hostile.route(ROUTE, chunked(body, chunk=8192, delay=0.1))  # about 2.5 s
    dest = tmp_path / "meta"
    first = subprocess.Popen([sys.executable, "-m", "oidownload", *map(str, _metadata(dest, hostile))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        part = dest / f"{NAME}.part"
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli(*_metadata(dest, hostile))
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        assert "another `oidownload metadata` is fetching" in second.stderr
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    assert (dest / NAME).read_bytes() == body


def test_an_archive_of_many_empty_members_is_read_one_at_a_time(tmp_path: Path) -> None:
    from oidownload.dataset.metadata import unpack

    archive = tmp_path / "classes_2017_11.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("2017_11/class-descriptions.csv")
        info.size = 12
        tar.addfile(info, io.BytesIO(b"/m/01,Thing\n"))
        for n in range(30_000):
            tar.addfile(tarfile.TarInfo(f"2017_11/junk/{n}"))
    dest = tmp_path / "meta"
    tracemalloc.start()
    try:
        got = unpack(archive, dest, ("class-descriptions.csv",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.name, r.state) for r in got] == [("class-descriptions.csv", "unpacked")]
    assert (dest / "class-descriptions.csv").read_bytes() == b"/m/01,Thing\n"
    # Listing the 30,000 headers first took about 20 MB; one at a time, what one holds.
    assert peak < 4 << 20, peak


def test_a_part_the_server_calls_whole_is_fetched_again(tmp_path: Path, hostile: Hostile) -> None:
    whole = bytes(range(256)) * 4

    async def send(req: Request, w: asyncio.StreamWriter) -> None:
        if "range" in req.headers:
            w.write(response("416 Range Not Satisfiable", {"Content-Range": f"bytes */{len(whole)}"}))
        else:
            w.write(response(body=whole))
        await w.drain()
        w.close()

    hostile.route(ROUTE, send)
    dest = tmp_path / "meta"
    dest.mkdir()
    (dest / f"{NAME}.part").write_bytes(b"z" * 2000)
    res = run_cli(*_metadata(dest, hostile))
    assert res.returncode == 0, res.stderr
    assert (dest / NAME).read_bytes() == whole and not (dest / f"{NAME}.part").exists()
    assert hostile.requests[ROUTE] == 2
