"""One frozen `Config`, built once in cli.py; each stage is handed only its part.

Tests vary it with `dataclasses.replace`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

# --per-host auto: every host starts here (the polite number a fixed limit used to be)
# and may grow to the ceiling, which --concurrency also bounds.
AUTO_START = 16
AUTO_CEILING = 256

class SourceChoice(enum.StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"
    AUTO = "auto"
    CVDF = "cvdf"


class Fallback(enum.StrEnum):
    NONE = "none"
    CVDF = "cvdf"


class ResizeMode(enum.StrEnum):
    FIT = "fit"
    FILL = "fill"
    NONE = "none"


class OutputFormat(enum.StrEnum):
    JPEG = "jpeg"
    WEBP = "webp"
    PNG = "png"
    KEEP = "keep"


class Orientation(enum.StrEnum):
    RAW = "raw"
    UPRIGHT = "upright"


class OutputKind(enum.StrEnum):
    FILES = "files"
    WEBDATASET = "webdataset"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class ProgressMode(enum.StrEnum):
    AUTO = "auto"
    BAR = "bar"
    LOG = "log"
    NONE = "none"


# Browsers follow at most 20 redirects; a real image is never further away.
MAX_REDIRECTS = 20


@dataclass(frozen=True, slots=True)
class NetConfig:
    concurrency: int = 256
    per_host: int | None = None  # None: auto (limits.py), up to host_ceiling
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # Per attempt: a trickling server sends a byte before every read timeout, so only
    # a total deadline bounds it.
    total_timeout: float = 120.0
    # Across every attempt and backoff of one image: the run always ends.
    image_deadline: float = 600.0
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    # A Retry-After longer than this is not waited for in this run: the row ends as
    # http_429 (retryable) and the next run picks it up.
    retry_after_max: float = 120.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_redirects: int = 5
    # The project's name and version only: it is not published at any URL to name.
    # None: the default agent, which also carries the cluster task (engine/fetch.py).
    user_agent: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (--header)

    @property
    def host_ceiling(self) -> int:
        """The most requests in flight to one host: --per-host N, or auto's ceiling
        (which --concurrency also bounds)."""
        return self.per_host if self.per_host is not None else min(AUTO_CEILING, self.concurrency)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    resize: int | None = None
    resize_mode: ResizeMode = ResizeMode.FIT
    format: OutputFormat = OutputFormat.JPEG
    quality: int = 90
    orientation: Orientation = Orientation.RAW
    keep_original: bool = False
    # Extra MD5s (base64) of "photo unavailable" placeholder images.
    placeholder_md5s: frozenset[str] = frozenset()
    # What one image may take to decode, convert and resize, estimated from its header
    # before any pixel is decoded: a small file can hold a huge image (a 155 KB PNG of
    # 1 x 80,000,000 pixels), and a worker killed for memory would take the run with it.
    max_decode_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Where images come from (sources/): the choice, the mirror, and the fallback."""

    choice: SourceChoice = SourceChoice.ORIGINAL
    mirror_url: str = "https://open-images-dataset.s3.amazonaws.com"
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class SelectConfig:
    subsets: frozenset[str] = frozenset()
    limit: int | None = None
    retry_failed: bool = False
    ids: frozenset[str] | None = None
    ids_from: str = "--ids"  # where `ids` came from, in words, for an empty selection's warning
    # What a class selection came from, remembered in the journal for `annotations`.
    classes: frozenset[str] = frozenset()
    annotations: tuple[Path, ...] = ()
    class_descriptions: Path | None = None
    db: str | None = None
    # The selection flags as given (JSON), written into the lock file's header.
    options: str = ""
    from_lock: Path | None = None  # --from-lock: compared with this lock at the end


@dataclass(frozen=True, slots=True)
class RunConfig:
    # None: one per CPU this process may use (affinity and cgroup quota, cpus.py).
    processes: int | None = None
    # Bodies fetched but not yet processed; bounds memory when originals run to 15 MB.
    max_bytes_in_flight: int = 128 * 1024 * 1024
    grace: float = 10.0
    max_failure_rate: float | None = None
    max_runtime: float | None = None
    log_format: LogFormat = LogFormat.TEXT
    progress: ProgressMode = ProgressMode.AUTO
    progress_interval: float = 5.0
    # A split of the rows other than the one the state dir's journals have is refused
    # unless asked for: two splits running at once would fetch the same images twice.
    resplit: bool = False
    # Prometheus metrics (metrics.py): served on metrics_addr:metrics_port, and/or
    # rewritten into metrics_file; kept served metrics_linger seconds after the end.
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    metrics_file: Path | None = None
    metrics_linger: float = 0.0


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where results go (`out`: a folder or a URI) and where the journal lives."""

    out: str
    state_dir: Path
    kind: OutputKind = OutputKind.FILES
    shard_size: int = 10_000
    # Sync each image and its folder before the journal records it: survives a power
    # cut, at a cost per image (benchmarks/RESULTS.md).
    fsync: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    inputs: tuple[Path, ...]
    output: OutputConfig
    net: NetConfig = NetConfig()
    source: SourceConfig = SourceConfig()
    image: ImageConfig = ImageConfig()
    select: SelectConfig = SelectConfig()
    run: RunConfig = field(default_factory=RunConfig)
