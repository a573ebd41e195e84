"""The options of `download` (and the selection `select` shares) as one table of plain
data: flags, the parameter each sets, its value rule, default, help and environment
scope. The single source of defaults and bounds: commands/options.py builds the click
options from it, core/config.py takes its defaults from it, and `parse_options` checks
an API call by it (no click). `DownloadOptions` types `oidownload.download`'s keywords."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from oidownload.core.choices import (
    Fallback,
    LogFormat,
    Orientation,
    OutputFormat,
    OutputKind,
    ProgressMode,
    ResizeMode,
    SourceChoice,
)
from oidownload.core.errors import ConfigError
from oidownload.core.values import (
    DAY,
    BadValue,
    DurationIn,
    FloatIn,
    IntIn,
    IntOrAutoIn,
    OneOf,
    PathIn,
    ValueKind,
    invalid,
)

# --per-host auto: every host starts here (the polite number a fixed limit used to be)
# and may grow to the ceiling, which --concurrency also bounds.
AUTO_START = 16
AUTO_CEILING = 256
# Browsers follow at most 20 redirects; a real image is never further away.
MAX_REDIRECTS = 20
MAX_CONCURRENCY = 4096
MAX_PROCESSES = 1024
MAX_SHARDS = 1_000_000
# --quality has no default in the table, so that one given with png (which has none)
# can be told apart; this is the quality used when it is left out.
DEFAULT_QUALITY = 90

# Paths we write to are checked by the command, not by the option: a folder that is a
# file is the file system's state, not a usage error, and gets one line and exit 1.
PATH = PathIn()
FILE = PathIn(dir_okay=False)


def enum_choice(cls: type[Any], aliases: Mapping[str, str] | None = None) -> OneOf:
    return OneOf(tuple(e.value for e in cls), aliases=dict(aliases or {}))


@dataclass(frozen=True)
class OptionSpec:
    """One option: `flags` as on the command line, `dest` the parameter it sets (the key
    in the parsed dict), `value` its rule (None: any text). The API keyword is the long
    flag in snake_case (`--max-body-mb` → max_body_mb; `--class` → class_)."""

    flags: tuple[str, ...]
    dest: str
    help: str
    value: ValueKind | None = None
    default: object = None
    multiple: bool = False
    flag: bool = False
    required: bool = False
    show_default: str | None = None  # what the help shows when there is no default
    scope: str | None = None  # None: OIDOWNLOAD_<OPTION>; else OIDOWNLOAD_<SCOPE>_<OPTION>

    @property
    def long(self) -> str:
        return next(f for f in self.flags if f.startswith("--")).split("/")[0]

    @property
    def keyword(self) -> str:
        return self.long[2:].replace("-", "_")

    @property
    def hint(self) -> str:
        """How a usage error names the option: '-o' / '--output'."""
        return " / ".join(f"'{f}'" for f in self.flags)

    def convert(self, value: object) -> Any:
        """The value as the command gets it, or ConfigError in the command line's words."""
        if self.value is None:
            return value if isinstance(value, str) else str(value)
        try:
            return self.value.convert(value)
        except BadValue as exc:
            raise ConfigError(invalid(self.hint, str(exc))) from None

    def initial(self) -> Any:
        """The value when the option is not given."""
        if self.flag:
            return bool(self.default)
        if self.multiple:
            return ()
        return None if self.default is None else self.convert(self.default)


def _spec(*flags: str, help: str, dest: str | None = None, **kw: Any) -> OptionSpec:
    long = next(f for f in flags if f.startswith("--"))
    return OptionSpec(flags, dest or long[2:].replace("-", "_"), help, **kw)


def _flag(*flags: str, help: str, **kw: Any) -> OptionSpec:
    return _spec(*flags, help=help, flag=True, default=False, **kw)


# Which rows: shared by `download` and `select`, in their --help order.
SELECTION_OPTIONS: tuple[OptionSpec, ...] = (
    _spec("--subset", dest="subsets", multiple=True, help="Only rows whose Subset is this (repeatable)."),
    _spec("--limit", value=IntIn(1, 10**12),
          help="At most this many rows: the first ones, or a sample that is the same for a --seed."),
    _spec("--seed", value=IntIn(0, 2**63 - 1), help="Sample --limit rows deterministically with this seed."),
    _spec("--ids", dest="ids_file", value=FILE, help="Only the ImageIDs listed in this file, one per line."),
    _spec("--class", dest="class_names", multiple=True,
          help="Only images with this class (a name from --class-descriptions, or a MID); repeatable."),
    _spec("--classes-file", value=FILE, help="Class names or MIDs, one a line."),
    _spec("--class-descriptions", value=FILE, help="class-descriptions.csv (V3) or oidv6/7-class-descriptions.csv."),
    _spec("--annotations", dest="annotation_files", multiple=True, value=FILE,
          help="Box or image-label CSVs (V3 or V4+, plain or .gz), or localized narratives (.jsonl), to select "
               "from; repeatable."),
    _spec("--db", help="Select from this database (see `oidownload db load`) instead of --annotations: "
                       "a path, sqlite:///path or postgresql://user@host:port/dbname."),
    _spec("--hierarchy", value=FILE,
          help="bbox_labels_600_hierarchy.json: a class also selects its subcategories, at any depth."),
    _flag("--no-expand", help="With --hierarchy: select only the classes named."),
    _flag("--with-parts", help="With --hierarchy: also follow Part relations (the parts of a Human body...)."),
    _spec("--limit-per-class", value=IntIn(1, 10**9),
          help="Up to N images per selected class, the same for a --seed whatever the row order; the union."),
    _spec("--label-source", value=OneOf(("human", "machine", "any"), case_sensitive=True), default="any",
          help="Which image-level labels count (boxes are all human)."),
    _spec("--min-confidence", value=FloatIn(0, 1, lo_ok=True), default=0.5,
          help="Labels below this confidence do not count (human negatives are 0)."),
    _flag("--boxes-only", help="Only images with a box of the class."),
    _flag("--exclude-occluded", help="Boxes marked IsOccluded do not count."),
    _flag("--exclude-truncated", help="Boxes marked IsTruncated do not count."),
    _flag("--exclude-group-of", help="Boxes marked IsGroupOf do not count."),
    _flag("--exclude-depiction", help="Boxes marked IsDepiction do not count."),
    _flag("--exclude-inside", help="Boxes marked IsInside do not count."),
    # narratives (issue 23)
    _flag("--with-narrative", help="Only images with a localized narrative (a narratives .jsonl among --annotations, "
                                   "or loaded into --db)."),
    _spec("--narrative-contains", dest="narrative_words", multiple=True,
          help="Only images with a narrative whose caption contains this word (case-insensitive, whole words; "
               "repeatable: every word, in the same narrative)."),
    # relationships and points (issue 23)
    _spec("--relationship", dest="relationships", multiple=True,
          help="Only images with this visual relationship, 'SUBJECT PREDICATE OBJECT' (names or MIDs, * for any "
               "side): 'Man plays Guitar', '* on Table', 'Table is Wooden'; repeatable (any of them)."),
    _spec("--predicate", dest="predicates", multiple=True,
          help="Only images with a relationship of this predicate (plays, on, is...); repeatable."),
    _spec("--attributes", dest="attributes_file", value=FILE,
          help="oidv6-attributes-description.csv: the names of the right side of 'is' (Wooden, Transparent...)."),
    _spec("--point-answer", value=OneOf(("yes", "no", "unsure", "any"), case_sensitive=True), default="yes",
          help="With point-label files: which EstimatedYesNo makes a point of the class count."),
    _spec("--min-yes-votes", value=IntIn(0, 10**6), default=0,
          help="With point-label files: points with fewer yes votes do not count."),
)

_OUTPUT = (
    _spec("-o", "--output", dest="out", required=True,
          help="Output folder (OUT), or s3://bucket/prefix, az://container/prefix, gs://bucket/prefix; the journal "
               "lives in OUT/.oidownload/ (for a store, under ~/.local/state/oidownload/) unless --state-dir says "
               "otherwise."),
    _spec("--state-dir", value=PATH, help="Where the journal lives [default: OUT/.oidownload]."),
    _spec("--output-format", value=enum_choice(OutputKind), default="files",
          help="files: OUT/<subset>/<abc>/<id>.<ext>; webdataset: tar shards of <id>.<ext> + <id>.json."),
    _spec("--shard-size", value=IntIn(1, 10_000_000), default=10_000, help="Samples per webdataset shard."),
    _flag("--fsync", help="Sync each image to disk before the journal records it (survives a power cut; slower)."),
)

_FETCH_AND_RUN = (
    _spec("--source", value=enum_choice(SourceChoice), default="original",
          help="original: the verified original; thumbnail: Thumbnail300KURL; auto: the thumbnail when there is one; "
               "cvdf: the copy on the CVDF mirror (at most 1024 px, checked by its ETag)."),
    _spec("--fallback", value=enum_choice(Fallback), default="none",
          help="cvdf: when the original is gone for good (404/410, unavailable, MD5 or size mismatch, refused "
               "redirect), take the mirror's copy."),
    _spec("--mirror-url", default="https://open-images-dataset.s3.amazonaws.com",
          help="Base URL of the CVDF mirror (<base>/<subset>/<ImageID>.jpg)."),
    _spec("--user-agent", help="User-Agent sent with every request [default: oidownload/VERSION]."),
    _spec("--header", dest="headers", multiple=True, help="An extra request header, 'Name: value' (repeatable)."),
    _spec("--resize", value=IntIn(1, 65535), help="Target size in pixels (never upscales)."),
    _spec("--resize-mode", value=enum_choice(ResizeMode), default="fit",
          help="fit: longest side <= N; fill: centre crop to NxN; none: keep the size."),
    _spec("--format", dest="fmt", value=enum_choice(OutputFormat, {"jpg": "jpeg"}), default="jpeg",
          help="Output format (jpg is jpeg); keep writes the fetched bytes unchanged."),
    _spec("--quality", value=IntIn(1, 100), show_default=str(DEFAULT_QUALITY), help="JPEG/WebP quality."),
    _spec("--orientation", value=enum_choice(Orientation), default="raw",
          help="raw: pixels as stored (the frame of the boxes); upright: turn by the Rotation column, or by EXIF "
               "when there is none."),
    _flag("--keep-original", help="Also keep the verified original bytes under OUT/original/."),
    _spec("--concurrency", value=IntIn(1, MAX_CONCURRENCY), default=256, help="Requests in flight, in total."),
    _spec("--per-host", value=IntOrAutoIn(1, MAX_CONCURRENCY), default="auto",
          help=f"Requests in flight per host: auto starts at {AUTO_START} and doubles while that raises the host's "
               f"throughput, up to {AUTO_CEILING} (and --concurrency); N fixes it at N. Halved on 429/503."),
    _spec("--processes", value=IntIn(1, MAX_PROCESSES), show_default="one per usable CPU",
          help="Image-processing worker processes; the default counts the CPUs this process may use (affinity "
               "mask, cgroup CPU quota)."),
    _spec("--connect-timeout", value=DurationIn(), default="10", help="Seconds to connect."),
    _spec("--read-timeout", value=DurationIn(), default="30", help="Seconds without a byte before giving up."),
    _spec("--timeout", value=DurationIn(), default="120", help="Total seconds for one request."),
    _spec("--deadline", value=DurationIn(), default="600", help="Total seconds for one image, all retries included."),
    _spec("--retries", value=IntIn(0, 100), default=3, help="Retries of a retryable failure, with backoff."),
    _flag("--retry-failed", help="Also retry images whose failure was final (404, MD5...)."),
    _spec("--max-body-mb", value=FloatIn(0, 4096), default=64.0, help="Largest body accepted."),
    _spec("--max-redirects", value=IntIn(0, MAX_REDIRECTS), default=5, help="Redirects followed per request (0: none)."),
    _spec("--max-bytes-in-flight-mb", value=FloatIn(1, 65536, lo_ok=True), default=128.0,
          help="Bodies being read or processed, in MB: bounds memory."),
    _spec("--max-decode-mb", value=FloatIn(1, 65536, lo_ok=True), default=512.0,
          help="Memory one image may take to decode and resize, estimated before decoding; over it: too_large."),
    _spec("--grace", value=DurationIn(zero_ok=True), default="10",
          help="On SIGINT/SIGTERM, seconds to let in-flight images finish (0: stop at once)."),
    _spec("--max-failure-rate", value=FloatIn(0, 1, lo_ok=True),
          help="Exit 3 when more than this fraction of the job's images failed for good (0: any)."),
    _spec("--max-runtime", value=DurationIn(366 * DAY),
          help="Stop cleanly after this long (exit 75), e.g. before a scheduler's limit."),
    _spec("--num-shards", value=IntIn(1, MAX_SHARDS), help="Split the rows into this many shares (cluster runs)."),
    _spec("--shard-index", value=IntIn(0, MAX_SHARDS - 1),
          help="This task's share; detected from Slurm/Kubernetes when absent."),
    _flag("--resplit", help="Allow another split of the rows than the one OUT already has (e.g. 8 tasks after 4); "
                            "finished images are not fetched again."),
    _spec("--log-format", value=enum_choice(LogFormat), default="text",
          help="json: everything on stderr as JSON lines (level, event, fields): progress, notes, warnings, errors."),
    _spec("--progress", dest="progress_mode", value=enum_choice(ProgressMode), default="auto",
          help="auto: a bar on a terminal, log lines otherwise."),
    _spec("--progress-interval", value=DurationIn(), default="5", help="Seconds between progress log lines."),
    _spec("--placeholder-md5", multiple=True,
          help="Base64 MD5 of another 'photo unavailable' image (repeatable)."),
    _spec("--metrics-port", value=IntIn(1, 65535),
          help="Serve Prometheus metrics on http://ADDR:PORT/metrics while the run lasts (README: Watching a "
               "cluster run)."),
    _spec("--metrics-addr", default="127.0.0.1",
          help="Address for --metrics-port; 0.0.0.0 to let a scraper on another machine (or pod) in."),
    _spec("--metrics-file", value=FILE,
          help="Rewrite the metrics in Prometheus' text format into this file every 2 s, atomically "
               "(node_exporter's textfile collector: name it *.prom); {task} in it becomes the task, e.g. 3-of-8."),
    _spec("--metrics-linger", value=DurationIn(),
          help="Keep serving /metrics this long after the run ends, so that the last scrape sees the final counts."),
    _spec("--from-lock", value=FILE,
          help="Rebuild the dataset of this lock file (oidownload.lock.jsonl.gz): its ImageIDs, with its settings "
               "(a conflicting option is refused); at the end each image is identical, different, "
               "different_source or missing."),
)

# masks (issue 22)
_MASKS = (
    _flag("--masks", help="Also fetch the segmentation masks of the selected images (of the --class classes only, "
                          "with --class), from the segmentation CSVs among --annotations (or --db); each is read "
                          "from its zip by Range requests and written in its image's frame."),
    _spec("--masks-url", default="https://storage.googleapis.com/openimages/v5/",  # = dataset.releases.MASKS_URL
          help="Where the mask zips are (<url>/<split>-masks/<split>-masks-<digit>.zip): a URL, or a local folder "
               "of those zips or of the unpacked PNGs."),
)

# `download`'s options in its --help order.
DOWNLOAD_OPTIONS: tuple[OptionSpec, ...] = (*_OUTPUT, *SELECTION_OPTIONS, *_FETCH_AND_RUN, *_MASKS)
# `select`'s -o: the new images CSV (- for stdout).
SELECT_OUTPUT = _spec("-o", "--output", dest="dest", scope="select", required=True, value=PATH,
                      help="The new images CSV (same columns as the input); - for stdout.")
# download's and select's INPUTS argument: each a path, checked as an option's; the hint
# is how click names an argument in a usage error.
INPUTS = OptionSpec(("[INPUTS]...",), "inputs", "", value=PATH, multiple=True)
SELECTION_KEYS = tuple(s.dest for s in SELECTION_OPTIONS)

_BY_DEST = {s.dest: s for s in DOWNLOAD_OPTIONS}


def default(dest: str) -> Any:
    """A download option's default, converted as the command gets it: what Config's
    fields start from."""
    return _BY_DEST[dest].initial()


Paths = str | os.PathLike[str]
Texts = str | Iterable[str]


class SelectOptions(TypedDict, total=False):
    """`oidownload.select`'s keywords (and download's selection): the long option names
    in snake_case (`class_` for --class). Numbers and durations may be given as text."""

    subset: Texts
    limit: int | None
    seed: int | None
    ids: Paths | None
    class_: Texts
    classes_file: Paths | None
    class_descriptions: Paths | None
    annotations: Paths | Iterable[Paths]
    db: str | None
    hierarchy: Paths | None
    no_expand: bool
    with_parts: bool
    limit_per_class: int | None
    label_source: str
    min_confidence: float | str
    boxes_only: bool
    exclude_occluded: bool
    exclude_truncated: bool
    exclude_group_of: bool
    exclude_depiction: bool
    exclude_inside: bool
    # narratives (issue 23)
    with_narrative: bool
    narrative_contains: Texts
    # relationships and points (issue 23)
    relationship: Texts
    predicate: Texts
    attributes: Paths | None
    point_answer: str
    min_yes_votes: int


class DownloadOptions(SelectOptions, total=False):
    """`oidownload.download`'s keywords (all but `output`): one per option of
    `oidownload download`, with the same defaults and bounds (DOWNLOAD_OPTIONS)."""

    state_dir: Paths | None
    output_format: str
    shard_size: int
    fsync: bool
    source: str
    fallback: str
    mirror_url: str
    user_agent: str | None
    header: Texts
    resize: int | None
    resize_mode: str
    format: str
    quality: int | None
    orientation: str
    keep_original: bool
    concurrency: int
    per_host: int | str | None
    processes: int | None
    connect_timeout: float | str
    read_timeout: float | str
    timeout: float | str
    deadline: float | str
    retries: int
    retry_failed: bool
    max_body_mb: float
    max_redirects: int
    max_bytes_in_flight_mb: float
    max_decode_mb: float
    grace: float | str
    max_failure_rate: float | None
    max_runtime: float | str | None
    num_shards: int | None
    shard_index: int | None
    resplit: bool
    log_format: str
    progress: str
    progress_interval: float | str
    placeholder_md5: Texts
    metrics_port: int | None
    metrics_addr: str
    metrics_file: Paths | None
    metrics_linger: float | str | None
    from_lock: Paths | None
    masks: bool  # masks (issue 22)
    masks_url: str


class SelectionParams(TypedDict):
    """The selection as a command gets it: checked and converted, keyed by parameter."""

    subsets: tuple[str, ...]
    limit: int | None
    seed: int | None
    ids_file: Path | None
    class_names: tuple[str, ...]
    classes_file: Path | None
    class_descriptions: Path | None
    annotation_files: tuple[Path, ...]
    db: str | None
    hierarchy: Path | None
    no_expand: bool
    with_parts: bool
    limit_per_class: int | None
    label_source: str
    min_confidence: float
    boxes_only: bool
    exclude_occluded: bool
    exclude_truncated: bool
    exclude_group_of: bool
    exclude_depiction: bool
    exclude_inside: bool
    # narratives (issue 23)
    with_narrative: bool
    narrative_words: tuple[str, ...]
    # relationships and points (issue 23)
    relationships: tuple[str, ...]
    predicates: tuple[str, ...]
    attributes_file: Path | None
    point_answer: str
    min_yes_votes: int


class DownloadParams(SelectionParams):
    """`download`'s parameters, checked and converted, from the command line or the API:
    what build_config takes. `explicit` names those given rather than left at their
    default (--from-lock refuses the ones that disagree with it)."""

    inputs: tuple[Path, ...]
    out: str
    state_dir: Path | None
    output_format: str
    shard_size: int
    fsync: bool
    source: str
    fallback: str
    mirror_url: str
    user_agent: str | None
    headers: tuple[str, ...]
    resize: int | None
    resize_mode: str
    fmt: str
    quality: int | None
    orientation: str
    keep_original: bool
    concurrency: int
    per_host: int | None
    processes: int | None
    connect_timeout: float
    read_timeout: float
    timeout: float
    deadline: float
    retries: int
    retry_failed: bool
    max_body_mb: float
    max_redirects: int
    max_bytes_in_flight_mb: float
    max_decode_mb: float
    grace: float
    max_failure_rate: float | None
    max_runtime: float | None
    num_shards: int | None
    shard_index: int | None
    resplit: bool
    log_format: str
    progress_mode: str
    progress_interval: float
    placeholder_md5: tuple[str, ...]
    metrics_port: int | None
    metrics_addr: str
    metrics_file: Path | None
    metrics_linger: float | None
    from_lock: Path | None
    masks: bool  # masks (issue 22)
    masks_url: str
    explicit: frozenset[str]


def parse_options(command: str, specs: Sequence[OptionSpec], options: Mapping[str, object]) -> dict[str, Any]:
    """An API call's keywords → the parameters the command gets (every dest, defaults
    filled in), checked by the rules of the command line: TypeError for an unknown
    keyword, ConfigError for a bad value. "explicit" names the parameters given."""
    by_keyword = {s.keyword: s for s in specs}
    given: list[tuple[OptionSpec, list[object]]] = []
    for name, value in options.items():
        spec = by_keyword.get(name.rstrip("_"))  # class_=...: `class` is a Python keyword
        if spec is None:
            close = difflib.get_close_matches(name, by_keyword, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TypeError(f"{command}() got an unexpected keyword argument {name!r}{hint}")
        if value is None or (value is False and spec.flag):
            continue
        if spec.flag:
            if value is not True:
                raise ConfigError(f"{name}={value!r}: give True or False")
            given.append((spec, [True]))
            continue
        values = [value] if isinstance(value, str | os.PathLike) or not isinstance(value, Iterable) else list(value)
        if len(values) > 1 and not spec.multiple:
            raise ConfigError(f"{name} takes one value, got {len(values)}")
        if values:
            # As the command line has them: text (a number given as 5.5 is no integer there either).
            given.append((spec, [os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in values]))
    params: dict[str, Any] = {}
    for spec, values in given:
        if spec.flag:
            params[spec.dest] = True
            continue
        converted = [spec.convert(v) for v in values]
        params[spec.dest] = tuple(converted) if spec.multiple else converted[-1]
    explicit = frozenset(params)
    for spec in specs:
        if spec.dest not in params:
            params[spec.dest] = spec.initial()
    params["explicit"] = explicit
    return params
