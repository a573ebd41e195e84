"""A real Azure Blob Storage server for the tests: Azurite (the Azure Storage
emulator, from the npm registry) on 127.0.0.1 with a free port, in memory, checking
SharedKey signatures with its published development account. Installed once into a
cache folder (`install`, run by .ci/run), started once per test session and stopped
by its pid at the end. Recipe: shared/INFRA.md."""

from __future__ import annotations

import base64
import email.utils
import hmac
import http.client
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oidownload.testing.procs import free_port, stop_group

VERSION = "3.35.0"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "oidownload" / "azurite"


def binary() -> str | None:
    """OIDOWNLOAD_AZURITE, or the copy `install` put in the cache, or one on PATH."""
    given = os.environ.get("OIDOWNLOAD_AZURITE")
    if given:
        return given if Path(given).exists() else None
    cached = cache_dir() / "node_modules" / ".bin" / "azurite-blob"
    return str(cached) if cached.exists() else shutil.which("azurite-blob")


def install() -> str:
    """npm install azurite into the cache (about 30 s, once)."""
    found = binary()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install nodejs npm)")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), f"azurite@{VERSION}"],
                   check=True, capture_output=True, timeout=600)
    found = binary()
    if found is None:
        raise RuntimeError(f"npm installed azurite, but {folder}/node_modules/.bin/azurite-blob is missing")
    return found



@dataclass
class Azurite:
    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def env(self) -> dict[str, str]:
        """The standard variables a user would set for this account."""
        return {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": KEY,
                "AZURE_STORAGE_ENDPOINT": self.endpoint}

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.endpoint};")

    def store(self, container: str) -> Any:
        from obstore.store import AzureStore

        return AzureStore(container, account_name=ACCOUNT, account_key=KEY, endpoint=self.endpoint,
                          client_options={"allow_http": True})

    def make_bucket(self, container: str) -> Any:
        """Creates the container (obstore cannot: a SharedKey PUT) and returns a store for it."""
        h = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        sts = ("PUT\n" + "\n" * 11 + "".join(f"{k}:{v}\n" for k, v in sorted(h.items()))
               + f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container")
        signature = base64.b64encode(hmac.digest(base64.b64decode(KEY), sts.encode(), "sha256")).decode()
        h["Authorization"] = f"SharedKey {ACCOUNT}:{signature}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("PUT", f"/{ACCOUNT}/{container}?restype=container", headers=h)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status not in (201, 409):
            raise RuntimeError(f"creating container {container}: {resp.status} {body[:300]!r}")
        return self.store(container)

    def keys(self, container: str, prefix: str = "") -> dict[str, int]:
        import obstore

        return {str(o["path"]): int(o["size"]) for batch in obstore.list(self.store(container), prefix or None)
                for o in batch}

    def stop(self) -> None:
        stop_group(self.proc)


def start(folder: Path) -> Azurite:
    exe = binary()
    assert exe is not None
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "azurite.log", "wb")  # noqa: SIM115 - the server outlives this function
    # --skipApiVersionCheck: newer SDKs send API versions this Azurite does not know yet.
    proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--disableTelemetry", "--skipApiVersionCheck", "--silent"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Azurite(port, proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited {proc.returncode}: {(folder / 'azurite.log').read_text()[-2000:]}")
        try:
            server.make_bucket("ready-check")
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
