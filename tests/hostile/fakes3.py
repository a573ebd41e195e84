"""A small S3 server on 127.0.0.1 that misbehaves on request: path-style buckets, no
signature check, objects kept in memory. Enough of the protocol for `-o s3://`
(list, put, delete, get; multipart for shards), plus the two faults of issue 28:

    fake.fail = lambda key: "SlowDown"   # a 503 with that S3 code, every time, for these keys
    fake.hang = lambda key: True         # requests for these keys are accepted, never answered

Used through the standard variables, as a user would point at any S3 server:
`env=fake.env`."""

from __future__ import annotations

import asyncio
import html
import re
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from aiohttp import web

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}  # "bucket/key" → bytes
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.fail: Callable[[str], str | None] = lambda key: None
        self.hang: Callable[[str], bool] = lambda key: False
        self.hung = 0  # requests held without an answer
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fakes3")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fakesecret", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_REGION": "us-east-1"}

    def keys(self, bucket: str) -> list[str]:
        return sorted(k.partition("/")[2] for k in self.objects if k.startswith(bucket + "/"))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        bucket, _, key = request.path.lstrip("/").partition("/")
        if self.hang(key):
            self.hung += 1
            await asyncio.Event().wait()  # accepted, never answered
        full = f"{bucket}/{key}"
        code = self.fail(key) if key else None
        if code is not None:
            await request.read()
            return web.Response(status=503, content_type="application/xml",
                                text=f"<Error><Code>{code}</Code><Message>slow down</Message></Error>")
        q = request.query
        if request.method == "POST" and not key and "delete" in q:
            gone = re.findall(r"<Key>([^<]*)</Key>", (await request.read()).decode())
            for k in gone:
                self.objects.pop(f"{bucket}/{html.unescape(k)}", None)
            return web.Response(content_type="application/xml", text=(
                f'<DeleteResult xmlns="{_NS}">' + "".join(f"<Deleted><Key>{k}</Key></Deleted>" for k in gone)
                + "</DeleteResult>"))
        if request.method == "GET" and not key:
            return self._list(bucket, q.get("prefix", ""))
        if request.method == "POST" and "uploads" in q:
            upload = uuid.uuid4().hex
            self.uploads[upload] = {}
            return web.Response(content_type="application/xml", text=(
                f'<InitiateMultipartUploadResult xmlns="{_NS}"><Bucket>{bucket}</Bucket><Key>{key}</Key>'
                f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>"))
        if request.method == "PUT" and "uploadId" in q:
            self.uploads[q["uploadId"]][int(q["partNumber"])] = await request.read()
            return web.Response(headers={"ETag": f'"{uuid.uuid4().hex}"'})
        if request.method == "POST" and "uploadId" in q:
            await request.read()
            parts = self.uploads.pop(q["uploadId"])
            self.objects[full] = b"".join(parts[n] for n in sorted(parts))
            return web.Response(content_type="application/xml", text=(
                f'<CompleteMultipartUploadResult xmlns="{_NS}"><Bucket>{bucket}</Bucket><Key>{key}</Key>'
                f'<ETag>"{uuid.uuid4().hex}"</ETag></CompleteMultipartUploadResult>'))
        if request.method == "PUT":
            self.objects[full] = await request.read()
            return web.Response(headers={"ETag": f'"{uuid.uuid4().hex}"'})
        if request.method == "DELETE":
            self.objects.pop(full, None)
            return web.Response(status=204)
        if request.method in ("GET", "HEAD"):
            data = self.objects.get(full)
            if data is None:
                return web.Response(status=404, content_type="application/xml",
                                    text="<Error><Code>NoSuchKey</Code></Error>")
            return web.Response(body=data, headers={"ETag": '"0"', "Last-Modified": "Mon, 07 Dec 2026 00:00:00 GMT"})
        return web.Response(status=405)

    def _list(self, bucket: str, prefix: str) -> web.Response:
        contents = "".join(
            f"<Contents><Key>{k}</Key><Size>{len(v)}</Size><LastModified>2026-12-07T00:00:00.000Z</LastModified>"
            f'<ETag>"0"</ETag></Contents>'
            for full, v in sorted(self.objects.items())
            if (k := full.partition("/")[2]).startswith(prefix) and full.startswith(bucket + "/"))
        return web.Response(content_type="application/xml", text=(
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{_NS}"><Name>{bucket}</Name>'
            f"<Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"))

    def start(self) -> FakeS3:
        self._thread.start()

        async def up() -> None:
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            # Requests held without an answer end with the test.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake_s3() -> Iterator[FakeS3]:
    server = FakeS3().start()
    yield server
    server.stop()
