"""One frozen `Config`, built once (build.py) for the CLI and the API; each stage is
handed only its part. The defaults are the option table's (core/options.py).

Tests vary it with `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from oidownload.core.choices import Fallback as Fallback
from oidownload.core.choices import LogFormat as LogFormat
from oidownload.core.choices import Orientation as Orientation
from oidownload.core.choices import OutputFormat as OutputFormat
from oidownload.core.choices import OutputKind as OutputKind
from oidownload.core.choices import ProgressMode as ProgressMode
from oidownload.core.choices import ResizeMode as ResizeMode
from oidownload.core.choices import SourceChoice as SourceChoice
from oidownload.core.options import AUTO_CEILING as AUTO_CEILING
from oidownload.core.options import AUTO_START as AUTO_START
from oidownload.core.options import DEFAULT_QUALITY, default
from oidownload.core.options import MAX_REDIRECTS as MAX_REDIRECTS
from oidownload.core.records import MaskRef, Outcome

MB = 1024 * 1024
# The table's choices as Config holds them.
_RESIZE_MODE = ResizeMode(default("resize_mode"))
_FMT = OutputFormat(default("fmt"))
_ORIENTATION = Orientation(default("orientation"))
_SOURCE = SourceChoice(default("source"))
_LOG_FORMAT = LogFormat(default("log_format"))
_PROGRESS_MODE = ProgressMode(default("progress_mode"))
_OUTPUT_FORMAT = OutputKind(default("output_format"))


@dataclass(frozen=True, slots=True)
class NetConfig:
    concurrency: int = default("concurrency")
    per_host: int | None = default("per_host")  # None: auto (limits.py), up to host_ceiling
    connect_timeout: float = default("connect_timeout")
    read_timeout: float = default("read_timeout")
    # Per attempt: a trickling server sends a byte before every read timeout, so only
    # a total deadline bounds it.
    total_timeout: float = default("timeout")
    # Across every attempt and backoff of one image: the run always ends.
    image_deadline: float = default("deadline")
    retries: int = default("retries")
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    # A Retry-After longer than this is not waited for in this run: the row ends as
    # http_429 (retryable) and the next run picks it up.
    retry_after_max: float = 120.0
    max_body_bytes: int = int(default("max_body_mb") * MB)
    max_redirects: int = default("max_redirects")
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
    resize_mode: ResizeMode = _RESIZE_MODE
    format: OutputFormat = _FMT
    quality: int = DEFAULT_QUALITY
    orientation: Orientation = _ORIENTATION
    keep_original: bool = False
    # Extra MD5s (base64) of "photo unavailable" placeholder images.
    placeholder_md5s: frozenset[str] = frozenset()
    # What one image may take to decode, convert and resize, estimated from its header
    # before any pixel is decoded: a small file can hold a huge image (a 155 KB PNG of
    # 1 x 80,000,000 pixels), and a worker killed for memory would take the run with it.
    max_decode_bytes: int = int(default("max_decode_mb") * MB)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Where images come from (sources/): the choice, the mirror, and the fallback."""

    choice: SourceChoice = _SOURCE
    mirror_url: str = default("mirror_url")
    fallback: bool = Fallback(default("fallback")) is Fallback.CVDF


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
    max_bytes_in_flight: int = int(default("max_bytes_in_flight_mb") * MB)
    grace: float = default("grace")
    max_failure_rate: float | None = None
    max_runtime: float | None = None
    log_format: LogFormat = _LOG_FORMAT
    progress: ProgressMode = _PROGRESS_MODE
    progress_interval: float = default("progress_interval")
    # A split of the rows other than the one the state dir's journals have is refused
    # unless asked for: two splits running at once would fetch the same images twice.
    resplit: bool = False
    # Prometheus metrics (metrics.py): served on metrics_addr:metrics_port, and/or
    # rewritten into metrics_file; kept served metrics_linger seconds after the end.
    metrics_port: int | None = None
    metrics_addr: str = default("metrics_addr")
    metrics_file: Path | None = None
    metrics_linger: float = 0.0


class SampleFields(Protocol):
    """What a webdataset sample carries beside its image (issue 23): the captions, and
    the relationships and points moved into the frame the outcome was written in. The
    dataset layer implements it (dataset/samplefields.py); the sink only asks, as sinks
    may not import that layer. It is declared here, at the bottom, because the output's
    config hands it over: the engine passes it through without knowing what it holds."""

    def fields(self, outcome: Outcome) -> dict[str, Any]:
        """The keys this sample's `<ImageID>.json` gains (none: an empty dict)."""
        ...

    def text(self, outcome: Outcome) -> bytes | None:
        """This sample's `<ImageID>.txt` member, if it has one."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where results go (`out`: a folder or a URI) and where the journal lives."""

    out: str
    state_dir: Path
    kind: OutputKind = _OUTPUT_FORMAT
    shard_size: int = default("shard_size")
    # Sync each image and its folder before the journal records it: survives a power
    # cut, at a cost per image (benchmarks/RESULTS.md).
    fsync: bool = default("fsync")
    # narratives, relationships and points (issue 23): opens what the webdataset sink
    # adds to each sample (sinks/texts.py); a value until the sink opens it, so a Config
    # holds no open file. None when the selection's annotations hold none of them.
    sample_fields: Callable[[], SampleFields] | None = None


# masks (issue 22)
@dataclass(frozen=True, slots=True)
class MaskConfig:
    """--masks: the masks wanted, by lower-case ImageID (from the segmentation rows of
    the selection), and where each (split, first hex digit) zip is: a URL, a local zip,
    or a folder of unpacked PNGs. Empty `wanted`: no mask work at all."""

    wanted: Mapping[str, tuple[MaskRef, ...]] = field(default_factory=dict)
    zips: Mapping[tuple[str, str], str] = field(default_factory=dict)
    url: str = ""  # --masks-url, for messages

    @property
    def enabled(self) -> bool:
        return bool(self.wanted)


@dataclass(frozen=True, slots=True)
class Config:
    inputs: tuple[Path, ...]
    output: OutputConfig
    net: NetConfig = NetConfig()
    source: SourceConfig = SourceConfig()
    image: ImageConfig = ImageConfig()
    select: SelectConfig = SelectConfig()
    run: RunConfig = field(default_factory=RunConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)  # masks (issue 22)
