"""`-o s3://bucket/prefix`: either layout in S3, or in anything that speaks its
protocol, through obstore (the optional extra `oidownload[s3]`). Credentials, region
and endpoint come from the standard variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL); an http://
endpoint (a local or on-premises server) works.

    files:       each image is staged in the state dir by its worker, uploaded under the
                 byte budget, committed when the upload succeeded; then its staged copy goes
    webdataset:  shards are built in the state dir (tar.py) and uploaded when closed

The bucket is checked (credentials, existence, a write) before any download.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oidownload.core.config import OutputConfig, OutputKind
from oidownload.core.errors import ConfigError, OutputError
from oidownload.core.ids import SUBSET, WRITTEN_ID
from oidownload.core.records import Outcome, Row, Status, clean_text
from oidownload.core.shard import Shard
from oidownload.sinks import Blobs, Release, Sink, Synced
from oidownload.sinks.staging import StagingTarget, clear_staging, member_suffix, staging_dir
from oidownload.sinks.stores import client_options, retry_config, store_for

if TYPE_CHECKING:
    from obstore.store import S3Config

_FILE_KEY_RE = re.compile(rf"(?:(original)/)?({SUBSET})/([0-9a-f]{{3}})/({WRITTEN_ID})\.([a-z0-9]{{1,5}})")
# Uploads at once; each is a whole image or a shard part, so a few dozen fill a link.
MAX_UPLOADS = 32
SHARD_PARTS_AT_ONCE = 4
# This many failed uploads in a row (after the client's own retries) is not a bad
# image: the bucket or the credentials went away. Stop rather than fail every row.
FAILURES_BEFORE_STOP = 10


@dataclass(frozen=True, slots=True)
class S3Uri:
    bucket: str  # or an Azure container: the store's top level
    prefix: str  # without leading or trailing '/'
    scheme: str = "s3"  # an entry of stores.STORES

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{self.bucket}"

    def describe(self, key: str) -> str:
        return f"{self}/{key}" if key else str(self)


def parse_uri(out: str) -> S3Uri:
    scheme, _, rest = out.partition("://")
    store = store_for(scheme, out)
    bucket, _, prefix = rest.partition("/")
    if not store.name_re.fullmatch(bucket):
        raise ConfigError(f"-o {out}: {bucket!r} is not a {store.scheme}:// {store.noun} name")
    prefix = prefix.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise ConfigError(f"-o {out}: the prefix has an empty, '.' or '..' part")
    return S3Uri(bucket, prefix, store.scheme)


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:
        raise ConfigError("s3://, az:// and gs:// need the optional extra: pip install 'oidownload[s3]'") from None
    return obstore


def make_store(uri: S3Uri, grace: float | None = None) -> Any:
    """An obstore S3Store for the bucket and prefix, configured from the environment
    (another store's scheme: its entry in stores.py). Its timeouts follow the run's
    --grace (stores.client_options)."""
    _obstore()
    if uri.scheme != "s3":
        return store_for(uri.scheme, str(uri)).make(uri, grace)
    from obstore.store import S3Store

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    config: S3Config = {}
    if endpoint and not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
        config["region"] = "us-east-1"  # S3-compatible servers rarely care; signing needs one
    return S3Store(uri.bucket, prefix=uri.prefix or None, config=config or None,
                   client_options=client_options(endpoint, grace), retry_config=retry_config(grace))


_KINDS = {
    "PermissionDeniedError": "permission denied", "UnauthenticatedError": "not authenticated",
    "NotFoundError": "not found", "AlreadyExistsError": "already exists",
}


def reason(exc: BaseException) -> str:
    """A one-line reason from an obstore error, whose message carries a request dump:
    its kind, the HTTP status and the S3 error code, or its first clause."""
    text = str(exc)
    parts = [_KINDS.get(type(exc).__name__, "")]
    status = re.search(r"status code: (\d{3}[A-Za-z ]*)", text)
    code = re.search(r"<Code>([^<]{1,80})</Code>", text)
    if status:
        parts.append(status.group(1).strip())
    if code:
        parts.append(code.group(1))
    if not status and not code:
        parts.append(text.strip().splitlines()[0].split(" - ")[0] if text.strip() else type(exc).__name__)
    return clean_text(", ".join(p for p in parts if p), 300)


class S3Blobs:
    def __init__(self, uri: S3Uri, store: Any = None, grace: float | None = None) -> None:
        self.uri = uri
        self.store = store if store is not None else make_store(uri, grace)
        self.ob = _obstore()

    def read(self, key: str) -> bytes:
        try:
            return bytes(self.ob.get(self.store, key).bytes())
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise OSError(f"{self.uri.describe(key)}: {reason(exc)}") from None

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        try:
            return bytes(self.ob.get_range(self.store, key, start=offset, length=size))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise OSError(f"{self.uri.describe(key)}: {reason(exc)}") from None

    def exists(self, key: str) -> bool:
        try:
            self.ob.head(self.store, key)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise OSError(f"{self.uri.describe(key)}: {reason(exc)}") from None

    def _listing(self, folder: str) -> dict[str, Any]:
        try:
            return dict(self.ob.list_with_delimiter(self.store, folder.strip("/") or None))
        except Exception as exc:
            raise OSError(f"cannot list {self.uri.describe(folder)}: {reason(exc)}") from None

    def files(self, folder: str) -> Iterator[tuple[str, int]]:
        for obj in self._listing(folder)["objects"]:
            yield str(obj["path"]).rsplit("/", 1)[-1], int(obj["size"])

    def folders(self, folder: str) -> list[str]:
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self._listing(folder)["common_prefixes"])

    def walk(self, folder: str) -> Iterator[tuple[str, int]]:
        try:
            for batch in self.ob.list(self.store, folder.strip("/") or None, chunk_size=1000):
                for obj in batch:
                    yield str(obj["path"]), int(obj["size"])
        except Exception as exc:
            raise OSError(f"cannot list {self.uri.describe(folder)}: {reason(exc)}") from None

    def describe(self, key: str) -> str:
        return self.uri.describe(key)

    def local_path(self, key: str) -> Path | None:
        return None

    def check_writable(self) -> None:
        """A small write and delete: bad credentials, a missing bucket or a refused
        write stop the run here, before any download."""
        key = f".oidownload-check-{secrets.token_hex(6)}"
        try:
            # A listing first: some servers create a missing bucket on the first write.
            self.ob.list_with_delimiter(self.store, None)
            self.ob.put(self.store, key, b"oidownload write check\n")
            self.ob.delete(self.store, key)
        except Exception as exc:
            store = store_for(self.uri.scheme, str(self.uri))
            raise OutputError(f"cannot write to {self.uri} ({store.noun} {self.uri.bucket!r}): {reason(exc)}. "
                              f"{store.hint}") from None

    def put_file(self, key: str, path: Path) -> None:
        # A closed shard goes up in 5 MB parts; obstore's default of 12 parts at once put
        # 60 MB in the main process for no gain over 4 (measured on loopback).
        self.ob.put(self.store, key, path, max_concurrency=SHARD_PARTS_AT_ONCE)

    async def put_file_async(self, key: str, path: Path, parts_at_once: int | None = None) -> None:
        # Awaited, not run in a thread: a cancel (the run's time is up) ends the wait at
        # once, where a thread blocked in a request would hold the process at its exit.
        if parts_at_once is None:
            await self.ob.put_async(self.store, key, path)
        else:
            await self.ob.put_async(self.store, key, path, max_concurrency=parts_at_once)


class S3Shards:
    """tar.py's ShardStore for a bucket: shards are built in the state dir and uploaded
    whole (multipart for large ones); the index goes first, so a shard in the bucket
    always has its index."""

    remote = True

    def __init__(self, blobs: S3Blobs, local: Path) -> None:
        self.s3 = blobs
        self.blobs: Blobs = blobs
        self.local = local

    def folder(self, subset: str) -> Path:
        path = self.local / subset
        path.mkdir(parents=True, exist_ok=True)
        return path

    def part_folders(self) -> list[Path]:
        if not self.local.is_dir():
            return []
        return [Path(e.path) for e in os.scandir(self.local) if e.is_dir(follow_symlinks=False)]

    def publish(self, subset: str, name: str) -> None:
        from oidownload.sinks.tar import INDEX_SUFFIX, index_part_name

        folder = self.local / subset
        try:
            self.s3.put_file(f"{subset}/{name}{INDEX_SUFFIX}", folder / index_part_name(name))
            self.s3.put_file(f"{subset}/{name}", folder / name)
        except Exception as exc:
            raise OutputError(f"cannot upload {self.blobs.describe(f'{subset}/{name}')}: {reason(exc)}") from None

    async def publish_async(self, subset: str, name: str) -> None:
        from oidownload.sinks.tar import INDEX_SUFFIX, index_part_name

        folder = self.local / subset
        try:
            await self.s3.put_file_async(f"{subset}/{name}{INDEX_SUFFIX}", folder / index_part_name(name),
                                         SHARD_PARTS_AT_ONCE)
            await self.s3.put_file_async(f"{subset}/{name}", folder / name, SHARD_PARTS_AT_ONCE)
        except Exception as exc:
            raise OutputError(f"cannot upload {self.blobs.describe(f'{subset}/{name}')}: {reason(exc)}") from None

    def check(self) -> None:
        self.s3.check_writable()

    def lock(self, task: int) -> int | None:
        return None  # a bucket holds no lock; the shards are built in the state dir

    def put(self, key: str, data: bytes) -> None:
        try:
            self.s3.ob.put(self.s3.store, key, data)
        except Exception as exc:
            raise OutputError(f"cannot upload {self.blobs.describe(key)}: {reason(exc)}") from None


class S3FilesSink(Sink):
    kind = OutputKind.FILES

    def __init__(self, output: OutputConfig, shard: Shard, blobs: S3Blobs) -> None:
        self.blobs = blobs
        self.staging = staging_dir(output.state_dir, shard.tag)
        self.target = StagingTarget(str(self.staging), output.fsync)
        self.uploading: set[asyncio.Task[None]] = set()
        self.done: list[Outcome] = []
        self.in_a_row = 0
        self.last_failure = ""
        self.slots: asyncio.Semaphore | None = None

    def describe(self) -> str:
        return f"files in {self.blobs.uri}"

    def prepare(self) -> None:
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.staging}: {exc.strerror or exc}") from None
        self.blobs.check_writable()

    def recover(self, state: Mapping[str, str], owns: Callable[[str], bool], crashed: bool) -> Synced:
        clear_staging(self.staging)
        return Synced()

    def rebuild(self, owns: Callable[[str], bool]) -> Iterator[Outcome]:
        for key, size in self.blobs.walk(""):
            m = _FILE_KEY_RE.fullmatch(key)
            if m is None or m.group(1) or m.group(3) != m.group(4)[:3] or not owns(m.group(4)):
                continue
            subset, image_id, ext = m.group(2), m.group(4), m.group(5)
            yield Outcome(image_id, Status.OK, "found in the bucket when the journal was rebuilt",
                          out_bytes=size, subset=subset, ext=ext, location=key)

    def start(self) -> None:
        self.slots = asyncio.Semaphore(MAX_UPLOADS)

    def publish(self, outcome: Outcome, row: Row | None, release: Release) -> None:
        task = asyncio.get_running_loop().create_task(self._upload(outcome, release))
        self.uploading.add(task)
        task.add_done_callback(self.uploading.discard)

    async def _upload(self, outcome: Outcome, release: Release) -> None:
        from oidownload.sinks.files import relative_path

        assert self.slots is not None
        staged = outcome.staged
        try:
            async with self.slots:
                for path in reversed(staged):  # the kept original first, as files.py does
                    key = relative_path(outcome.subset, outcome.image_id, member_suffix(path))
                    await self.blobs.put_file_async(key, Path(path))
            outcome.location = relative_path(outcome.subset, outcome.image_id, member_suffix(staged[0]))
            self.in_a_row = 0
        except Exception as exc:
            self.in_a_row += 1
            self.last_failure = reason(exc)
            outcome.status, outcome.detail = Status.WRITE_ERROR, f"upload to {self.blobs.uri} failed: {self.last_failure}"
            outcome.location = ""
        finally:
            release()
            for path in staged:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            outcome.staged = ()
        self.done.append(outcome)

    async def sync(self) -> Synced:
        synced = Synced(self.done)
        self.done = []
        if self.in_a_row >= FAILURES_BEFORE_STOP:
            self.in_a_row = 0
            synced.error = OutputError(f"{FAILURES_BEFORE_STOP} uploads to {self.blobs.uri} failed in a row, "
                                       f"the last with: {self.last_failure}")
        return synced

    async def close(self, *, complete: bool) -> Synced:
        if self.uploading:
            await asyncio.gather(*list(self.uploading), return_exceptions=True)
        clear_staging(self.staging)
        return Synced(self.done)

    def abandon(self) -> int:
        # A cancelled upload journals nothing: its image is fetched again next run.
        for task in list(self.uploading):
            task.cancel()
        return len(self.uploading)
