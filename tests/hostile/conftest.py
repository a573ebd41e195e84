"""A hostile server on 127.0.0.1: raw asyncio TCP, so a test can answer with any bytes
at all (a status line with non-UTF-8 bytes, absurd headers, endless redirects, a body
that trickles or never ends), and count what was asked.

    def test_x(hostile: Hostile) -> None:
        hostile.route("/x.jpg", raw(b"HTTP/1.1 404 Not Found \\xff\\r\\nContent-Length: 0\\r\\n\\r\\n"))
        url = hostile.url("/x.jpg")
        ...
        assert hostile.requests["/x.jpg"] == 1
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oidownload.testing import journals
from tests.hostile.fakes3 import fake_s3  # noqa: F401 - a fixture for the tests here


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def raw(data: bytes, *, close: bool = True) -> Handler:
    """A handler that sends these exact bytes, then closes the connection."""

    async def send(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()
        if close:
            w.close()

    return send


def redirect(location: str, status: str = "302 Found") -> Handler:
    """A handler that redirects to this Location (sent as it is, in UTF-8, even if it
    is not a URL)."""
    return raw(response(status, {"Location": location}, encoding="utf-8"))


def chunked(body: bytes, *, chunk: int = 65536, delay: float = 0.0, stop_after: int | None = None) -> Handler:
    """A 200 with a chunked body (no Content-Length), `chunk` bytes at a time with
    `delay` seconds between chunks; with `stop_after`, the connection closes after
    that many bytes, before the last chunk."""

    async def send(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        end = len(body) if stop_after is None else stop_after
        for i in range(0, end, chunk):
            part = body[i : min(i + chunk, end)]
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
            if delay:
                await asyncio.sleep(delay)
        if stop_after is None:
            w.write(b"0\r\n\r\n")
            await w.drain()
        w.close()

    return send


def response(status: str = "200 OK", headers: dict[str, str] | None = None, body: bytes = b"",
             encoding: str = "latin-1") -> bytes:
    """An HTTP/1.1 answer, as bytes: extra headers as given, the head in `encoding`
    (utf-8 sends a header such as `Retry-After: ²` as a UTF-8 peer would)."""
    head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(encoding) + body


class Hostile:
    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.times: dict[str, list[float]] = collections.defaultdict(list)  # time.monotonic() of each request
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="hostile")

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                req = Request(method, path)
                while (h := await r.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    req.headers[k.strip().lower()] = v.strip()
                self.requests[path] += 1
                self.times[path].append(time.monotonic())
                handler = self.routes.get(path) or raw(response("404 Not Found"))
                await handler(req, w)
                if w.is_closing():
                    return
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    def start(self) -> Hostile:
        self._thread.start()

        async def up() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            if self._server is not None:
                self._server.close()
            # Handlers still trickling or stalling end with the test.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile().start()
    yield server
    server.stop()


def bad_rows(out: Path) -> dict[int, tuple[str, str]]:
    """line → (raw id, detail) of every bad row journaled under OUT (any input)."""
    return journals.bad_rows(out)
