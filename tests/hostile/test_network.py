"""Hostile servers: Retry-After that would park a host for days (or crash the parser),
redirect limits at 0, 1 and their maximum, redirects to URLs that only look valid,
chunked bodies and lying sizes against the byte budget, and truncated bodies whose
detail must say what happened. Good rows come from the local origin, on another host
name ("localhost"), and must never be starved by the hostile host (127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import time
from pathlib import Path

import pytest

from oidownload.core.config import MAX_REDIRECTS
from oidownload.core.exits import ExitCode
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Origin
from tests.conftest import journal_rows, run_cli
from tests.hostile.conftest import Hostile, Request, bad_rows, chunked, raw, redirect, response
from tests.hostile.test_inputs import UNUSABLE_URLS, _lines, _with

QUICK = ["--progress", "none", "--timeout", "10"]


def _manifest(tmp_path: Path, good: list[str], hostile: list[str], name: str = "images.csv") -> Path:
    """Good lines and hostile lines interleaved, under one header."""
    header, *rest = good
    mixed: list[str] = []
    for i in range(max(len(rest), len(hostile))):
        mixed += rest[i : i + 1] + hostile[i : i + 1]
    path = tmp_path / name
    path.write_text(header + "".join(mixed), encoding="utf-8")
    return path


def _good(tmp_path: Path, make_origin: StartOrigin, n: int, seed: int) -> tuple[Corpus, list[str], Origin]:
    corpus = Corpus.generate(n, mix="tiny", seed=seed)
    origin = make_origin(corpus)
    base = origin.base_url.replace("127.0.0.1", "localhost")  # another host than the hostile one
    return corpus, _lines(corpus.write_manifest(tmp_path / "good.csv", base)), origin


def _row(template: str, n: int, url: str, size: int = 1000) -> str:
    return _with(template, ImageID=f"{0xbad000 + n:016x}", OriginalURL=url, OriginalSize=str(size))


RETRY_AFTERS = {
    "429 Too Many Requests": ["999999", "Fri, 31 Dec 9999 23:59:59 GMT", "1" + "0" * 23, "\u00b2", "90"],
    "503 Service Unavailable": ["999999", "\u00b2"],
}


def test_a_long_retry_after_never_holds_the_run_past_the_deadline(
        tmp_path: Path, make_origin: StartOrigin, hostile: Hostile) -> None:
    corpus, good, _ = _good(tmp_path, make_origin, 40, seed=51)
    rows: list[str] = []
    for status, values in RETRY_AFTERS.items():
        for value in values:
            for _ in range(3):
                path = f"/ra/{len(rows)}.jpg"
                hostile.route(path, raw(response(status, {"Retry-After": value}, encoding="utf-8")))
                rows.append(_row(good[1], len(rows), hostile.url(path)))
    manifest = _manifest(tmp_path, good, rows)

    t0 = time.monotonic()
    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, "--deadline", "3", "--concurrency", "4",
                  timeout=120)
    elapsed = time.monotonic() - t0

    assert res.returncode == ExitCode.INCOMPLETE, res.stderr  # the held host's rows: run again
    assert "Traceback" not in res.stderr
    assert elapsed < 60  # a hold of days, or of 90 s, would be waited for
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}  # the other host went on
    statuses = {journal[f"{0xbad000 + n:016x}"][0] for n in range(len(rows))}
    assert statuses <= {"http_429", "http_5xx"}  # retryable: the next run asks again
    # Once the host asked for a pause past every deadline, its rows are not asked at all.
    assert sum(hostile.requests.values()) < len(rows) // 2


@pytest.mark.parametrize("limit", [0, 1, MAX_REDIRECTS])
def test_max_redirects_means_exactly_n(tmp_path: Path, make_origin: StartOrigin, hostile: Hostile,
                                       limit: int) -> None:
    """--max-redirects N follows N redirects and refuses the next; 0 follows none."""
    corpus, good, _ = _good(tmp_path, make_origin, 4, seed=52)
    image = corpus.ids[0]
    body = corpus.original(image)
    rows = []
    for chain in (limit, limit + 1):
        hops = [f"/chain{chain}/{k}" for k in range(chain + 1)]
        for here, there in itertools.pairwise(hops):
            hostile.route(here, redirect(there))
        hostile.route(hops[-1], raw(response("200 OK", {"Content-Type": "image/jpeg"}, body)))
        rows.append(_with(good[1], ImageID=f"{0xc0000 + chain:016x}", OriginalURL=hostile.url(hops[0]),
                          OriginalSize=str(len(body)), OriginalMD5=corpus.listed(image)[1]))
    hostile.route("/loop", redirect("/loop"))
    rows.append(_row(good[1], 0, hostile.url("/loop")))
    manifest = _manifest(tmp_path, good, rows)

    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, "--max-redirects", str(limit), timeout=120)

    assert res.returncode == 0, res.stderr
    journal = journal_rows(tmp_path / "out")
    assert journal[f"{0xc0000 + limit:016x}"][0] == "ok"
    over = journal[f"{0xc0000 + limit + 1:016x}"]
    assert over[0] == "bad_redirect" and f"more than {limit} redirects" in over[1], over
    assert journal[f"{0xbad000:016x}"][0] == "bad_redirect"
    assert hostile.requests["/loop"] == limit + 1  # the first request and `limit` follows
    assert sum(n for p, n in hostile.requests.items() if p.startswith(f"/chain{limit + 1}/")) == limit + 1
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}


def test_max_redirects_above_its_maximum_is_a_usage_error(tmp_path: Path) -> None:
    res = run_cli("download", tmp_path / "x.csv", "-o", tmp_path / "out", "--max-redirects", str(MAX_REDIRECTS + 1))
    assert res.returncode == 2 and "--max-redirects" in res.stderr


def test_redirects_to_unusable_urls_end_as_bad_redirect(tmp_path: Path, make_origin: StartOrigin,
                                                        hostile: Hostile) -> None:
    corpus, good, _ = _good(tmp_path, make_origin, 20, seed=53)
    rows = []
    for n, url in enumerate([*UNUSABLE_URLS, "//a..b.example/x.jpg", "//127.0.0.1:0/x.jpg", "http://127.1:80/x.jpg",
                             "ftp://127.0.0.1/x"]):
        hostile.route(f"/to/{n}", redirect(url))
        rows.append(_row(good[1], n, hostile.url(f"/to/{n}")))
    manifest = _manifest(tmp_path, good, rows)

    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, timeout=120)

    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}
    assert {journal[f"{0xbad000 + n:016x}"][0] for n in range(len(rows))} == {"bad_redirect"}
    assert bad_rows(tmp_path / "out") == {}


class Streams:
    """Chunked bodies of `size` bytes, counting how many are being sent past `mark`
    bytes at once: more than the kernel's socket buffers hold, so only a client that
    is reading them gets them there."""

    def __init__(self, size: int, mark: int) -> None:
        self.size, self.mark = size, mark
        self.past = 0
        self.most_past = 0

    async def __call__(self, req: Request, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        chunk = bytes(256 * 1024)
        sent, counted = 0, False
        try:
            while sent < self.size:
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await w.drain()
                sent += len(chunk)
                if sent > self.mark and not counted:
                    counted = True
                    self.past += 1
                    self.most_past = max(self.most_past, self.past)
            w.write(b"0\r\n\r\n")
            await w.drain()
        finally:
            if counted:
                self.past -= 1
            w.close()


def test_chunked_bodies_are_charged_to_the_byte_budget_as_they_grow(
        tmp_path: Path, make_origin: StartOrigin, hostile: Hostile) -> None:
    """Six 48 MB bodies without Content-Length, from rows that claim 1000 bytes, with a
    1 MB budget: they used to be read all at once (6 x 48 MB in flight)."""
    corpus, good, _ = _good(tmp_path, make_origin, 6, seed=54)
    streams = Streams(48 << 20, 24 << 20)
    rows = []
    for n in range(6):
        hostile.route(f"/big/{n}", streams)
        rows.append(_row(good[1], n, hostile.url(f"/big/{n}")))
    manifest = _manifest(tmp_path, good, rows)

    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, "--max-bytes-in-flight-mb", "1",
                  "--concurrency", "6", "--per-host", "6", "--processes", "1", timeout=180)

    assert res.returncode == 0, res.stderr
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}
    assert {journal[f"{0xbad000 + n:016x}"][0] for n in range(6)} == {"size_mismatch"}  # stopped past their OriginalSize
    assert sum(hostile.requests.values()) == 6
    assert streams.most_past <= 2, streams.most_past  # one body over the budget at a time (two at a handover)


def test_a_lying_original_size_does_not_stall_the_other_rows(
        tmp_path: Path, make_origin: StartOrigin, hostile: Hostile) -> None:
    """OriginalSize 999999999999999 and a body that trickles without Content-Length:
    its reservation is capped by --max-body-mb, so the rows after it go on meanwhile."""
    corpus, good, origin = _good(tmp_path, make_origin, 30, seed=55)
    async def trickle(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(300):
                w.write(b"40\r\n" + bytes(64) + b"\r\n")
                await w.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        finally:
            w.close()

    hostile.route("/slow.jpg", trickle)
    header, *rest = good
    manifest = tmp_path / "images.csv"
    lying = _row(good[1], 0, hostile.url("/slow.jpg"), size=999_999_999_999_999)
    manifest.write_text(header + lying + "".join(rest), encoding="utf-8")

    res = run_cli("download", manifest, "-o", tmp_path / "out", "--progress", "none", "--timeout", "12",
                  "--retries", "0", "--concurrency", "4", timeout=120)

    assert res.returncode == ExitCode.INCOMPLETE, res.stderr  # the trickle timed out: retryable
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}
    assert journal[f"{0xbad000:016x}"][0] == "timeout"
    asked = [t for times in origin.times.values() for t in times]
    assert len(asked) == 30
    # A reservation of the whole budget held every row behind the trickle for its
    # 12 s; 30 tiny images need well under half of that, even on a busy machine.
    assert max(asked) - hostile.times["/slow.jpg"][0] < 6.0


def test_failure_details_say_what_happened_to_the_body(tmp_path: Path, make_origin: StartOrigin,
                                                        hostile: Hostile) -> None:
    corpus, good, _ = _good(tmp_path, make_origin, 4, seed=56)
    hostile.route("/short.jpg", raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + bytes(400)))
    hostile.route("/cut.jpg", chunked(bytes(5000), chunk=100, stop_after=300))
    rows = [_row(good[1], 0, hostile.url("/short.jpg")), _row(good[1], 1, hostile.url("/cut.jpg"), size=5000)]
    manifest = _manifest(tmp_path, good, rows)

    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, "--retries", "1", timeout=120)

    assert res.returncode == ExitCode.INCOMPLETE, res.stderr  # truncated is retryable
    journal = journal_rows(tmp_path / "out")
    assert journal[f"{0xbad000:016x}"] == ("truncated", "body ended after 400 of 1000 bytes", 2)
    assert journal[f"{0xbad001:016x}"] == ("truncated", "body ended after 300 bytes, before its last chunk", 2)
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}


def test_limit_options_at_0_and_1(tmp_path: Path, make_origin: StartOrigin, hostile: Hostile) -> None:
    """--retries N asks N+1 times; --max-body-mb 1 takes a body of exactly 1 MiB and
    refuses one byte more, with or without Content-Length; 0 is a usage error where it
    would mean nothing (--max-redirects has its own test, up to its maximum)."""
    corpus, good, _ = _good(tmp_path, make_origin, 2, seed=57)
    image = corpus.ids[0]
    mib = corpus.original(image).ljust(1 << 20, b"\0")  # a JPEG decoder ignores the padding
    md5 = base64.b64encode(hashlib.md5(mib).digest()).decode()
    hostile.route("/mib", raw(response("200 OK", {"Content-Type": "image/jpeg"}, mib)))
    hostile.route("/mib-chunked", chunked(mib))
    hostile.route("/over", raw(response("200 OK", {"Content-Type": "image/jpeg"}, mib + b"\0")))
    hostile.route("/over-chunked", chunked(mib + b"\0"))
    rows = [_with(good[1], ImageID=f"{0xe000 + n:016x}", OriginalURL=hostile.url(path),
                  OriginalSize=str(len(mib) + (path.startswith("/over"))), OriginalMD5=md5)
            for n, path in enumerate(["/mib", "/mib-chunked", "/over", "/over-chunked"])]
    manifest = _manifest(tmp_path, good, rows)
    res = run_cli("download", manifest, "-o", tmp_path / "body", *QUICK, "--max-body-mb", "1", "--format", "keep")
    assert res.returncode == 0, res.stderr
    journal = journal_rows(tmp_path / "body")
    assert [journal[f"{0xe000 + n:016x}"][0] for n in range(4)] == ["ok", "ok", "too_large", "too_large"]
    assert (tmp_path / "body" / "train" / "000" / f"{0xe000:016x}.jpg").read_bytes() == mib

    for retries in (0, 1):
        path = f"/busy{retries}"
        hostile.route(path, raw(response("503 Service Unavailable")))
        manifest = _manifest(tmp_path, good, [_row(good[1], retries, hostile.url(path))], name=f"r{retries}.csv")
        res = run_cli("download", manifest, "-o", tmp_path / f"retries{retries}", *QUICK, "--retries", str(retries))
        assert res.returncode == ExitCode.INCOMPLETE, res.stderr
        assert journal_rows(tmp_path / f"retries{retries}")[f"{0xbad000 + retries:016x}"][:1] == ("http_5xx",)
        assert hostile.requests[path] == retries + 1

    for option in ("--max-body-mb", "--max-bytes-in-flight-mb", "--per-host", "--concurrency"):
        res = run_cli("download", manifest, "-o", tmp_path / "zero", option, "0")
        assert res.returncode == 2 and option in res.stderr, (option, res.stderr)


@pytest.mark.parametrize("mirror", ["http://127.0.0.1:99999", "http://a..b.example/bucket", "ftp://mirror.example",
                                    "http://mirror.example/?x=1"])
def test_a_mirror_url_is_held_to_the_input_rule(tmp_path: Path, mirror: str) -> None:
    """It used to pass a looser pattern, and then fail every row at fetch time."""
    res = run_cli("download", tmp_path / "x.csv", "-o", tmp_path / "out", "--source", "cvdf", "--mirror-url", mirror)
    assert res.returncode == 2 and "--mirror-url" in res.stderr, res.stderr


def test_a_mirror_copy_served_gzip_encoded_is_checked_as_stored(tmp_path: Path, synth_cache: Path,
                                                                hostile: Hostile) -> None:
    """Issue 28: an object stored gzip-encoded is served with Content-Encoding gzip, and
    its ETag is the MD5 of the stored (gzip) bytes. aiohttp decoded it before the MD5
    was compared: every right copy ended md5_mismatch."""
    import gzip
    import io

    from PIL import Image

    corpus = Corpus.generate(4, mix="tiny", seed=2803)
    manifest = corpus.write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")  # the originals: never asked
    for image_id in corpus.ids:
        stored = gzip.compress(corpus.original(image_id))
        etag = hashlib.md5(stored).hexdigest()
        hostile.route(f"/train/{image_id}.jpg", raw(response(
            "200 OK", {"Content-Type": "image/jpeg", "Content-Encoding": "gzip", "ETag": f'"{etag}"'}, stored)))
    bad = corpus.ids[0]  # a torn copy still fails its ETag
    torn = bytearray(gzip.compress(corpus.original(bad)))
    etag = hashlib.md5(torn).hexdigest()
    torn[-12] ^= 0xFF
    hostile.route(f"/train/{bad}.jpg", raw(response(
        "200 OK", {"Content-Type": "image/jpeg", "Content-Encoding": "gzip", "ETag": f'"{etag}"'}, bytes(torn))))
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--source", "cvdf", "--mirror-url", hostile.url(""),
                  "--resize", "64", *QUICK)
    rows = journal_rows(out)
    for image_id in corpus.ids[1:]:
        assert rows[image_id][0] == "ok", rows[image_id]
        with Image.open(io.BytesIO((out / "train" / image_id[:3] / f"{image_id}.jpg").read_bytes())) as im:
            assert max(im.size) == 64
    assert rows[bad][0] == "md5_mismatch", rows[bad]
    assert res.returncode == 0, res.stderr
