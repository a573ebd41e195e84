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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest


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


def response(status: str = "200 OK", headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """A well-formed HTTP/1.1 answer, as bytes (extra headers as given)."""
    head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Hostile:
    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: collections.Counter[str] = collections.Counter()
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

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile().start()
    yield server
    server.stop()
