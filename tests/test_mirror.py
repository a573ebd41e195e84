"""The CVDF mirror as a source and a fallback, against the local origin (Flickr
stand-in) and a real S3 server (SeaweedFS) holding a public-read `open-images-dataset`
bucket of re-encoded copies; proxies honoured from the environment."""

from __future__ import annotations

import asyncio
import io
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from PIL import Image

from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault
from oidownload.testing.s3server import PUBLIC_BUCKET
from tests.conftest import run_cli


def _copy_of(original: bytes, side: int = 300) -> bytes:
    """A mirror-style copy: re-encoded and smaller, so it never matches OriginalMD5."""
    with Image.open(io.BytesIO(original)) as im:
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Forwarder:
    """A small HTTP server on 127.0.0.1 in its own thread. As a reverse proxy it passes
    GETs to `upstream`, flipping a byte of the bodies named in `tamper` (keeping their
    ETag: a stale ETag); as a forward proxy (upstream None) it fetches the absolute URL
    of each request. Counts requests per path either way."""

    def __init__(self, upstream: str | None = None, tamper: frozenset[str] = frozenset()) -> None:
        self.upstream = upstream
        self.tamper = tamper
        self.requests: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = str(request.url) if self.upstream is None else self.upstream + request.path_qs
        self.requests[request.path] += 1
        self.headers.append(dict(request.headers))
        passed = {k: v for k, v in request.headers.items() if k.lower() in ("user-agent", "x-team", "range")}
        async with ClientSession(auto_decompress=False, headers=passed, skip_auto_headers=["User-Agent"]) as s, \
                s.get(target, allow_redirects=False) as r:
            body = await r.read()
            headers = {k: v for k, v in r.headers.items() if k.lower() in ("etag", "content-type", "location", "retry-after")}
            if request.path in self.tamper:
                body = body[:-10] + bytes([body[-10] ^ 0xFF]) + body[-9:]
            return web.Response(status=r.status, body=body, headers=headers)

    def __enter__(self) -> Forwarder:
        self.thread.start()

        async def up() -> str:
            app = web.Application()
            app.router.add_route("GET", "/{tail:.*}", self.handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

        self.url = asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _journal(out: Path) -> dict[str, tuple[str, str, str | None, int]]:
    return {i: (r.status, r.detail, r.source, r.verified) for i, r in journals.outcomes(out).items()}


@pytest.fixture
def mirror(s3: Any) -> Iterator[Callable[[Corpus, list[str], str], None]]:
    """seed(corpus, ids, subset): signed PUTs of re-encoded copies into the public bucket."""
    import obstore

    store = s3.store(PUBLIC_BUCKET)
    put: list[str] = []

    def seed(corpus: Corpus, ids: list[str], subset: str = "train") -> None:
        for image_id in ids:
            obstore.put(store, f"{subset}/{image_id}.jpg", _copy_of(corpus.original(image_id)))
            put.append(f"{subset}/{image_id}.jpg")

    yield seed
    for key in put:
        obstore.delete(store, key)


def test_fallback_takes_the_mirror_copy_when_the_original_is_gone(
        tmp_path: Path, make_origin: StartOrigin, s3: Any, mirror: Callable[..., None]) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=81)
    ids = corpus.ids
    dead = {ids[0]: "404", ids[1]: "410", ids[2]: "placeholder", ids[3]: "wrongbytes", ids[4]: "404", ids[5]: "404"}
    for image_id, fault in dead.items():
        corpus.entries[image_id].fault = Fault(fault)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    in_mirror = [*ids[:4], ids[5], *ids[10:20]]  # ids[4] is dead and not in the mirror
    tampered = ids[5]
    mirror(corpus, in_mirror)
    out = tmp_path / "out"
    with Forwarder(f"{s3.endpoint}/{PUBLIC_BUCKET}", frozenset({f"/train/{tampered}.jpg"})) as front:
        args = ("download", manifest, "-o", out, "--fallback", "cvdf", "--mirror-url", front.url, "--resize", "200")
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr
        rows = _journal(out)
        for image_id in ids[:4]:  # dead originals the mirror has: its copy, and why
            status, detail, source, verified = rows[image_id]
            assert (status, source, verified) == ("ok", "cvdf", 1), rows[image_id]
            assert f"the original was {'unavailable' if dead[image_id] == 'placeholder' else 'http_4xx' if dead[image_id] in ('404', '410') else 'md5_mismatch'}" in detail
            with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
                assert max(im.size) <= 200
            assert front.requests[f"/train/{image_id}.jpg"] == 1
        status, detail, source, _ = rows[ids[4]]
        assert status == "not_in_mirror" and "the original was http_4xx" in detail and source == "cvdf"
        assert rows[tampered][0] == "md5_mismatch" and "the ETag" in rows[tampered][1]
        assert front.requests[f"/train/{tampered}.jpg"] == 2  # retried once: a torn transfer, then final
        assert not list(out.rglob(f"{tampered}.*"))
        for image_id in ids[6:]:  # alive: the verified original, never the mirror
            status, _, source, verified = rows[image_id]
            assert (status, source, verified) == ("ok", "original", 1)
            assert front.requests[f"/train/{image_id}.jpg"] == 0
        st = run_cli("status", out)
        assert "24 original(s) checked against OriginalMD5" in st.stdout, st.stdout
        assert "4 mirror copy(ies) checked against the MD5 in their ETag" in st.stdout, st.stdout
        rep = run_cli("report", out)
        assert rep.returncode == 0
        import csv

        with open(out / "report" / "success.csv", newline="") as f:
            sources = Counter(r["source"] for r in csv.DictReader(f))
        assert sources == {"cvdf": 4, "original": 24}

        before_origin, before_mirror = sum(origin.requests.values()), sum(front.requests.values())
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert sum(origin.requests.values()) == before_origin and sum(front.requests.values()) == before_mirror


def test_source_cvdf_downloads_from_the_mirror_only(tmp_path: Path, make_origin: StartOrigin, s3: Any,
                                                    mirror: Callable[..., None]) -> None:
    corpus = Corpus.generate(12, mix="tiny", seed=82)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    mirror(corpus, corpus.ids[:10])
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--source", "cvdf", "--mirror-url", f"{s3.endpoint}/{PUBLIC_BUCKET}",
                  "--resize", "640")
    assert res.returncode == 0, res.stderr
    rows = _journal(out)
    assert sum(origin.requests.values()) == 0
    for image_id in corpus.ids[:10]:
        status, detail, source, verified = rows[image_id]
        assert (status, source, verified) == ("ok", "cvdf", 1)
        assert "smaller than --resize 640" in detail  # the copy is 300 px: said, never upscaled
        with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
            assert max(im.size) <= 300
    assert all(rows[i][0] == "not_in_mirror" for i in corpus.ids[10:])


def test_a_mirror_that_refuses_everything_stops_the_run(tmp_path: Path, make_origin: StartOrigin, s3: Any) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=83)
    manifest = corpus.write_manifest(tmp_path / "images.csv", make_origin(corpus).base_url)
    s3.make_bucket("private-copies")  # anonymous reads are refused (403)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--source", "cvdf", "--concurrency", "2",
                  "--mirror-url", f"{s3.endpoint}/private-copies")
    assert res.returncode == 1, res.stderr
    assert f"{s3.endpoint}/private-copies" in res.stderr and "403" in res.stderr
    rows = _journal(out)
    assert rows and all(status == "mirror_refused" for status, *_ in rows.values())  # retryable, never final


def test_requests_go_through_the_proxy_from_the_environment(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(8, mix="tiny", seed=84)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    with Forwarder() as proxy:
        env = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
        res = run_cli("download", manifest, "-o", tmp_path / "out", "--header", "X-Team: vision",
                      "--user-agent", "lab-fetcher/2", env=env)
        assert res.returncode == 0, res.stderr
        assert sorted(proxy.requests) == sorted(f"/o/{i}_o.jpg" for i in corpus.ids)
        assert sum(origin.requests.values()) == 8
        assert all(agent == {"lab-fetcher/2"} for agent in origin.agents.values()), origin.agents  # as given
        assert all(h.get("X-Team") == "vision" for h in proxy.headers)
