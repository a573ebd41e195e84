"""One frozen `Config`, built once in cli.py; each stage is handed only its part.

Tests vary it with `dataclasses.replace`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path


class SourceChoice(enum.StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"
    AUTO = "auto"


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
    concurrency: int = 64
    per_host: int = 16
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
    user_agent: str = "oidownload/0.1 (+https://github.com/oidownload/oidownload)"


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


@dataclass(frozen=True, slots=True)
class SelectConfig:
    subsets: frozenset[str] = frozenset()
    limit: int | None = None
    source: SourceChoice = SourceChoice.ORIGINAL
    retry_failed: bool = False
    ids: frozenset[str] | None = None
    # What a class selection came from, remembered in the journal for `annotations`.
    classes: frozenset[str] = frozenset()
    annotations: tuple[Path, ...] = ()
    class_descriptions: Path | None = None


@dataclass(frozen=True, slots=True)
class RunConfig:
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Bodies fetched but not yet processed; bounds memory when originals run to 15 MB.
    max_bytes_in_flight: int = 128 * 1024 * 1024
    grace: float = 10.0
    max_failure_rate: float | None = None
    max_runtime: float | None = None
    log_format: LogFormat = LogFormat.TEXT
    progress: ProgressMode = ProgressMode.AUTO
    progress_interval: float = 5.0


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
    image: ImageConfig = ImageConfig()
    select: SelectConfig = SelectConfig()
    run: RunConfig = field(default_factory=RunConfig)
