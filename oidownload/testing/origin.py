"""The local origin: an aiohttp app that serves a synthetic corpus the way Flickr
serves Open Images (originals, thumbnails, the 'photo unavailable' placeholder),
with latency and injectable faults; and the V3/V4 images.csv manifest for it.

Used by the tests, the benchmarks and `oidownload bench`. Binds 127.0.0.1 only.
Faults are chosen per ImageID (by table or by rate) or per URL (/f/<fault>/...):

    404 410 500 503 429 429date   status answers (503/429 carry Retry-After)
    reset truncate trickle stall hang   broken transfers
    wrongbytes wrongsize notimage oversized placeholder_direct   wrong bodies
    redirect_host placeholder redirect_loop redirect_scheme      redirects

A fault written `503x2` fails twice for that URL and then serves the image.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import csv
import hashlib
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from oidownload.testing import synth

FAULT_KINDS = (
    "404", "410", "500", "503", "429", "429date",
    "reset", "truncate", "trickle", "stall", "hang",
    "wrongbytes", "wrongsize", "notimage", "oversized", "placeholder_direct",
    "redirect_host", "placeholder", "redirect_loop", "redirect_scheme",
)
# Faults that change what the manifest must say for the row to be verifiable.
_BODY_FAULTS = {"notimage", "oversized"}
NOT_IMAGE = b"<!doctype html><html><body>Not found, but 200 anyway</body></html>\n"
OVERSIZED_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    times: int | None = None  # None: always; n: the first n requests of each URL

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, _, times = text.partition("x")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        return cls(kind, int(times) if times else None)

    def __str__(self) -> str:
        return self.kind if self.times is None else f"{self.kind}x{self.times}"


def parse_fault_rates(spec: str) -> list[tuple[Fault, float]]:
    """'404=0.01,503x2=0.02' → [(Fault, rate), ...]."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rate = part.partition("=")
        out.append((Fault.parse(name), float(rate)))
    return out


# The mixed-fault profile used by tests and benchmarks: transient faults that clear
# after one or two failures, and permanent ones, in Flickr-like proportions.
MIXED_FAULTS = (
    "404=0.010,410=0.004,503x1=0.006,500x2=0.004,429x1=0.004,reset x1=0.004,"
    "truncate x2=0.004,trickle x1=0.002,wrongbytes=0.003,wrongsize=0.002,placeholder=0.003,"
    "redirect_host=0.004"
).replace(" x", "x")


@dataclass(slots=True)
class Entry:
    image_id: str
    original: int  # template index
    thumbnail: int
    fault: Fault | None = None
    rotation: str = "0.0"
    subset: str = "train"
    has_thumbnail: bool = True


def _tail(image_id: str) -> bytes:
    # After the JPEG's EOI marker, where decoders stop reading: unique bytes, same pixels.
    return bytes.fromhex(image_id) * 2


@dataclass
class Corpus:
    originals: list[bytes]
    thumbnails: list[bytes]
    entries: dict[str, Entry] = field(default_factory=dict)
    _md5s: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._md5s = [hashlib.md5(t) for t in self.originals]

    @classmethod
    def generate(
        cls,
        n: int,
        *,
        mix: str = "tiny",
        thumbs: str | None = None,
        seed: int = 0,
        subset: str = "train",
        faults: Mapping[str, Fault] | None = None,
        fault_rates: Iterable[tuple[Fault, float]] = (),
        no_thumbnail_rate: float = 0.0,
        cache: Path | None = None,
        ids: Iterable[str] | None = None,
    ) -> Corpus:
        """n synthetic images (or one per given ImageID, e.g. real ids whose real
        annotations should apply), with faults by table or by rate."""
        thumbs = thumbs or ("tiny-thumbs" if mix.startswith("tiny") else "thumbnails")
        corpus = cls(synth.templates(synth.MIXES[mix], seed, cache), synth.templates(synth.MIXES[thumbs], seed, cache))
        rng = random.Random(seed)
        rates = list(fault_rates)
        chosen = list(ids) if ids is not None else [f"{rng.getrandbits(64):016x}" for _ in range(n)]
        for image_id in chosen:
            entry = Entry(image_id, rng.randrange(len(corpus.originals)), rng.randrange(len(corpus.thumbnails)), subset=subset)
            entry.has_thumbnail = rng.random() >= no_thumbnail_rate
            roll = rng.random()
            for fault, rate in rates:
                if roll < rate:
                    entry.fault = fault
                    break
                roll -= rate
            corpus.entries[image_id] = entry
        for image_id, fault in (faults or {}).items():
            corpus.entries[image_id].fault = fault
        return corpus

    @property
    def ids(self) -> list[str]:
        return list(self.entries)

    def original(self, image_id: str) -> bytes:
        e = self.entries[image_id]
        return self.originals[e.original] + _tail(image_id)

    def thumbnail(self, image_id: str) -> bytes:
        e = self.entries[image_id]
        return self.thumbnails[e.thumbnail] + _tail(image_id)

    def listed(self, image_id: str) -> tuple[int, str]:
        """(OriginalSize, OriginalMD5) as the manifest states them: the true image's,
        except for faults whose wrong body the row is meant to describe."""
        e = self.entries[image_id]
        kind = e.fault.kind if e.fault else None
        if kind == "notimage":
            body = NOT_IMAGE
            return len(body), base64.b64encode(hashlib.md5(body).digest()).decode()
        if kind == "oversized":
            return OVERSIZED_BYTES, base64.b64encode(hashlib.md5(b"\0" * OVERSIZED_BYTES).digest()).decode()
        h = self._md5s[e.original].copy()
        h.update(_tail(image_id))
        return len(self.originals[e.original]) + 16, base64.b64encode(h.digest()).decode()

    def write_manifest(self, path: Path, base_url: str | Sequence[str], *, rotation_column: bool = False,
                       ids: Iterable[str] | None = None) -> Path:
        """An Open Images images.csv (V3, or V4+ with Rotation) for the corpus; with
        several base URLs (one per host) each image goes to one of them, by its id."""
        bases = [base_url] if isinstance(base_url, str) else list(base_url)
        header = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                  "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL"]
        if rotation_column:
            header.append("Rotation")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for image_id in ids if ids is not None else self.entries:
                base = bases[int(image_id[-8:], 16) % len(bases)] if len(bases) > 1 else bases[0]
                w.writerow(self.manifest_row(image_id, base, rotation_column=rotation_column))
        return path

    def manifest_row(self, image_id: str, base_url: str, *, rotation_column: bool = False) -> list[str]:
        e = self.entries[image_id]
        size, md5 = self.listed(image_id)
        prefix = f"{base_url}/f/{e.fault}" if e.fault else base_url
        photo = int(image_id[:8], 16)
        row = [
            image_id, e.subset, f"{prefix}/o/{image_id}_o.jpg",
            f"https://www.flickr.com/photos/synthetic/{photo}", "https://creativecommons.org/licenses/by/2.0/",
            "https://www.flickr.com/people/synthetic/", "Synthetic O&#x27;Origin", f"Image {photo}, \"synthetic\"",
            str(size), md5, f"{prefix}/t/{image_id}_z.jpg" if e.has_thumbnail else "",
        ]
        if rotation_column:
            row.append(e.rotation)
        return row


def placeholder_bytes() -> bytes:
    return resources.files("oidownload").joinpath("data/photo_unavailable.png").read_bytes()


@dataclass
class Latency:
    median: float = 0.0  # seconds
    jitter: float = 0.0  # lognormal sigma

    def sample(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        return self.median * math.exp(rng.gauss(0.0, self.jitter)) if self.jitter else self.median


SLOWDOWN_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message></Error>\n"
)


class Flight:
    """Requests in flight to one host, over time: the most at once, and how long each
    count lasted (so a test can ask for the time above a level, or the time average).
    O(1) per request."""

    __slots__ = ("last", "now", "peak", "time_at")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.last = time.monotonic()
        self.time_at: collections.defaultdict[int, float] = collections.defaultdict(float)

    def change(self, by: int) -> None:
        t = time.monotonic()
        self.time_at[self.now] += t - self.last
        self.last = t
        self.now += by
        self.peak = max(self.peak, self.now)

    def seconds_above(self, level: int) -> float:
        return sum(s for n, s in self.time_at.items() if n > level)

    def mean(self) -> float:
        """The time-averaged count, over the time any request was in flight."""
        busy = sum(s for n, s in self.time_at.items() if n > 0)
        return sum(n * s for n, s in self.time_at.items()) / busy if busy else 0.0


class Link:
    """A link of `rate` bytes/s shared by every connection: each chunk waits for its
    turn on one virtual wire, first come, first served."""

    CHUNK = 32 * 1024

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0

    async def send(self, resp: web.StreamResponse, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        for i in range(0, len(body), self.CHUNK):
            chunk = body[i : i + self.CHUNK]
            now = loop.time()
            self.free_at = max(self.free_at, now) + len(chunk) / self.rate
            if self.free_at > now:
                await asyncio.sleep(self.free_at - now)
            await resp.write(chunk)


class Origin:
    """The app and its counters. `requests` counts requests per path (faults included),
    so tests can assert that a rerun sends nothing and a 404 is asked once.

    Optional behaviours of a real server under load: `bandwidth` (bytes/s shared by all
    connections, a link), `max_in_flight` (with that many image requests being served
    to one host, a new one is answered `overload`: 503 SlowDown, as S3 words it, or 429 with
    Retry-After), and `hosts` (it listens on 127.0.0.1 .. 127.0.0.<hosts>, one host
    each; `base_urls`). `flight` counts requests in flight per host (the Host header).
    """

    def __init__(self, corpus: Corpus, latency: Latency | None = None, trickle_delay: float = 0.2,
                 extra_files: Mapping[str, bytes] | None = None, *, bandwidth: float = 0.0,
                 max_in_flight: int = 0, overload: str = "503", hosts: int = 1) -> None:
        self.corpus = corpus
        self.latency = latency or Latency()
        self.link = Link(bandwidth) if bandwidth > 0 else None
        self.max_in_flight = max_in_flight
        if overload not in ("503", "429"):
            raise ValueError(f"overload must be 503 or 429, not {overload!r}")
        self.overload = overload
        self.overloaded = 0  # answers given because max_in_flight was reached
        self.hosts = hosts
        self.flight: collections.defaultdict[str, Flight] = collections.defaultdict(Flight)
        self.admitted: collections.Counter[str] = collections.Counter()  # in flight and not refused
        self.trickle_delay = trickle_delay
        self.extra_files = dict(extra_files or {})
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_sent: collections.Counter[str] = collections.Counter()  # body bytes, for /files/ only
        self.ignore_range = False  # /files/ answers a Range request 200 with the whole body
        # masks (issue 22): each /files/ answer's [start, end) by path, and whether a GET of
        # one waits the origin's latency as an image does (the benchmarks' mirror and masks)
        self.ranges_sent: collections.defaultdict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        self.files_latency = False
        self._etags: dict[str, tuple[bytes, str]] = {}
        self.served_ok: collections.Counter[str] = collections.Counter()
        self.times: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
        self.agents: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        # Values of every X-* request header seen (--header), by lower-case name.
        self.extra_headers: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self.rng = random.Random(1)
        self.port = 0
        self.placeholder = placeholder_bytes()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/o/{name}", self.serve)
        app.router.add_get("/t/{name}", self.serve)
        app.router.add_get("/f/{fault}/{kind}/{name}", self.serve)
        app.router.add_get("/loop/{n}", self.redirect_loop)
        app.router.add_get("/photo_unavailable.png", self.serve_placeholder)
        app.router.add_get("/files/{name:.+}", self.serve_file)  # also answers HEAD
        app.router.add_get("/stats", self.stats)
        return app

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_urls(self) -> list[str]:
        return [f"http://127.0.0.{k}:{self.port}" for k in range(1, self.hosts + 1)]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # handler_cancellation: a client that gives up on a stalled answer frees its
        # handler; shutdown_timeout: `hang` handlers must not hold up stop().
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)
        assert sockets, "the origin did not bind"
        self.port = int(sockets[0].getsockname()[1])
        for k in range(2, self.hosts + 1):  # the other loopback addresses, on the same port
            await web.TCPSite(self._runner, f"127.0.0.{k}", self.port, reuse_address=True).start()
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers -----------------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "requests": dict(self.requests), "total": sum(self.requests.values()),
            "agents": {p: sorted(a) for p, a in self.agents.items()},
        })

    async def serve_placeholder(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        return web.Response(body=self.placeholder, content_type="image/png")

    async def serve_file(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        data = self.extra_files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        headers = {"Content-Type": "application/octet-stream", "ETag": self._etag(request.match_info["name"], data)}
        if request.method == "HEAD":  # aiohttp leaves the body out of a HEAD answer
            return web.Response(body=data, headers=headers)
        if "Range" not in request.headers or self.ignore_range:
            if self.files_latency:
                await asyncio.sleep(self.latency.sample(self.rng))
            return await self._send_file(request, web.StreamResponse(headers=headers), data)
        # bytes=a-b, bytes=a- (a resume, as a static file server does) and bytes=-n (a suffix)
        try:
            rng = request.http_range
        except ValueError:
            rng = slice(len(data), None)
        start, end = rng.start or 0, len(data) if rng.stop is None else min(rng.stop, len(data))
        if start < 0 or request.headers["Range"].replace(" ", "") == "bytes=-0":
            start = max(0, len(data) + start) if start < 0 else len(data)
        if start >= end:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        if self.files_latency:
            await asyncio.sleep(self.latency.sample(self.rng))
        self.ranges_sent[request.path].append((start, end))
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return await self._send_file(request, web.StreamResponse(status=206, headers=headers), data[start:end])

    def _etag(self, name: str, data: bytes) -> str:
        # Hashed once per body, not per request: the MD5 of a 50 MB zip on every Range
        # request held the origin's loop for 100 ms each (benchmarks/masks.py).
        cached = self._etags.get(name)
        if cached is None or cached[0] is not data:
            cached = self._etags[name] = (data, f'"{hashlib.md5(data).hexdigest()}"')
        return cached[1]

    async def _send_file(self, request: web.Request, resp: web.StreamResponse, body: bytes) -> web.StreamResponse:
        resp.content_length = len(body)
        await resp.prepare(request)
        try:  # by chunks, so that `bytes_sent` shows where a client that hung up stopped it
            for i in range(0, len(body), Link.CHUNK):
                chunk = body[i : i + Link.CHUNK]
                await (self.link.send(resp, chunk) if self.link is not None else resp.write(chunk))
                self.bytes_sent[request.path] += len(chunk)
            await resp.write_eof()
        except ConnectionError:  # the client closed early, e.g. on a 200 to its Range request
            pass
        return resp

    async def redirect_loop(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/loop/{(n + 1) % 2}")

    async def serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        self.times[path].append(time.monotonic())
        self.agents[path].add(request.headers.get("User-Agent", ""))
        for key, value in request.headers.items():
            if key.lower().startswith("x-"):
                self.extra_headers[key.lower()].add(value)
        name = request.match_info["name"]
        kind = request.match_info.get("kind") or path.split("/")[1]
        image_id = name.split("_")[0]
        entry = self.corpus.entries.get(image_id)
        if entry is None or kind not in ("o", "t"):
            raise web.HTTPNotFound()
        flight = self.flight[request.host]
        flight.change(+1)
        try:
            if self.max_in_flight and self.admitted[request.host] >= self.max_in_flight:
                return await self._overloaded()
            self.admitted[request.host] += 1
            try:
                return await self._serve(request, path, name, kind, image_id)
            finally:
                self.admitted[request.host] -= 1
        finally:
            flight.change(-1)

    async def _overloaded(self) -> web.StreamResponse:
        # After the same latency (the server had to read the request), but not counted
        # against the limit: refusing is cheap, as it is for S3.
        self.overloaded += 1
        delay = self.latency.sample(self.rng)
        if delay:
            await asyncio.sleep(delay)
        if self.overload == "429":
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": "1"})
        return web.Response(status=503, reason="Slow Down", text=SLOWDOWN_XML, content_type="application/xml")

    async def _serve(self, request: web.Request, path: str, name: str, kind: str, image_id: str) -> web.StreamResponse:
        fault_text = request.match_info.get("fault")
        fault = Fault.parse(fault_text) if fault_text else None
        delay = self.latency.sample(self.rng)
        if delay:
            await asyncio.sleep(delay)
        body = self.corpus.original(image_id) if kind == "o" else self.corpus.thumbnail(image_id)
        if fault is not None and (fault.times is None or self.requests[path] <= fault.times):
            try:
                return await self._fault(request, fault, body, kind, name)
            except ConnectionError:  # the client hung up on a broken answer: as intended
                return web.Response(status=499)
        self.served_ok[path] += 1
        return await self._send(request, body, "image/jpeg")

    async def _send(self, request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        if self.link is not None:
            await self.link.send(resp, body)
        else:
            await resp.write(body)
        await resp.write_eof()
        return resp

    async def _fault(self, request: web.Request, fault: Fault, body: bytes, kind: str, name: str) -> web.StreamResponse:
        k = fault.kind
        if k in ("404", "410", "500"):
            return web.Response(status=int(k), text=f"{k}\n")
        if k == "503":
            return web.Response(status=503, text="busy\n", headers={"Retry-After": "1"})
        if k == "429":
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": "1"})
        if k == "429date":
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)})
        if k in ("reset", "truncate"):
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            transport = request.transport
            if transport is not None:
                if k == "reset":
                    sock = transport.get_extra_info("socket")
                    if sock is not None:  # SO_LINGER 0: close() sends RST, not FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
                else:
                    transport.close()
            return resp
        if k in ("trickle", "stall"):
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(body)
            await resp.prepare(request)
            if k == "stall":
                await asyncio.sleep(3600)
            for i in range(0, len(body), 512):
                await resp.write(body[i : i + 512])
                await asyncio.sleep(self.trickle_delay)
            await resp.write_eof()
            return resp
        if k == "hang":
            await asyncio.sleep(3600)
        if k == "wrongbytes":
            return await self._send(request, body[:-17] + bytes(17), "image/jpeg")
        if k == "wrongsize":
            return await self._send(request, body + b"\0" * 1000, "image/jpeg")
        if k == "notimage":
            return await self._send(request, NOT_IMAGE, "text/html")
        if k == "oversized":
            # No Content-Length: only the reader's cap can stop it.
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = bytes(65536)
            for _ in range(OVERSIZED_BYTES // len(chunk)):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        if k == "placeholder_direct":
            return await self._send(request, self.placeholder, "image/png")
        if k == "redirect_host":
            raise web.HTTPFound(f"http://localhost:{self.port}/{kind}/{name}")
        if k == "placeholder":
            raise web.HTTPFound("/photo_unavailable.png")
        if k == "redirect_loop":
            raise web.HTTPFound("/loop/0")
        if k == "redirect_scheme":
            raise web.HTTPFound(f"ftp://127.0.0.1/{name}")
        raise AssertionError(k)


class OriginThread:
    """Runs an Origin on its own event loop in a daemon thread (for tests and `bench`)."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.loop: asyncio.AbstractEventLoop
        try:
            import uvloop  # the origin competes with the client for the same cores: keep it cheap

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="origin")

    def __enter__(self) -> Origin:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.origin.start(), self.loop).result(30)
        return self.origin

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.origin.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
