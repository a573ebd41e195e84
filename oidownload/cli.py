"""Click commands → a frozen Config → run. The only place that prints fatal errors and
picks exit codes (see `oidownload --help` and the README's table).

Every option can also be set as OIDOWNLOAD_<OPTION> (dashes become underscores).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .config import (
    MAX_REDIRECTS,
    Config,
    ImageConfig,
    LogFormat,
    NetConfig,
    Orientation,
    OutputConfig,
    OutputFormat,
    ProgressMode,
    ResizeMode,
    RunConfig,
    SelectConfig,
    SourceChoice,
)
from .errors import ConfigError, OidownloadError
from .state import default_state_dir

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0    finished (per-image failures such as dead links are expected)
  1    fatal error: unreadable input, unwritable output, full disk
  2    usage error
  3    finished, but over --max-failure-rate
  75   stopped at --max-runtime; run again to resume
  130  interrupted (SIGINT); run again to resume
  143  terminated (SIGTERM); run again to resume
"""


def opt(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """click.option with the OIDOWNLOAD_<NAME> environment variable every option has."""
    long = next(d for d in decls if d.startswith("--")).split("/")[0]
    kwargs.setdefault("envvar", "OIDOWNLOAD_" + long[2:].upper().replace("-", "_"))
    kwargs.setdefault("show_envvar", True)
    if "default" in kwargs:
        kwargs.setdefault("show_default", True)
    return click.option(*decls, **kwargs)


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# click's ParamType became generic in 8.2; subscript it for mypy only.
if TYPE_CHECKING:
    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType


def parse_duration(text: str) -> float | None:
    """Seconds from '90', '45m', '7.5h', '11h45m', '1d2h' or Slurm's '12:00:00'; None
    when the text is none of these."""
    text = text.strip().lower()
    clock = re.fullmatch(r"(\d+):(\d{2})(?::(\d{2}))?", text)
    if clock:
        h, m, s = clock.groups()
        return int(h) * 3600 + int(m) * 60 + int(s or 0) if s is not None else int(h) * 60 + int(m)
    if re.fullmatch(r"[0-9]*\.?[0-9]+", text):
        return float(text)
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([smhd])", text)
    if not parts or re.sub(r"([0-9]*\.?[0-9]+)\s*([smhd])", "", text).strip():
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


class Duration(_ParamType):
    """Seconds, or a duration like 45m, 7.5h, 11h45m or 12:00:00."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        seconds = parse_duration(str(value))
        if seconds is None:
            self.fail(f"{value!r} is not a duration like 90, 45m, 11h45m or 12:00:00", param, ctx)
        return seconds


def _enum(cls: type[Any]) -> click.Choice[str]:
    return click.Choice([e.value for e in cls], case_sensitive=False)


def _fail(exc: OidownloadError) -> None:
    click.echo(f"oidownload: error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="oidownload")
def main() -> None:
    """Download Open Images: verified, resized, sharded, resumable."""


def _apply(f: F, decorators: Sequence[Callable[[Any], Any]]) -> F:
    for d in reversed(decorators):
        f = d(f)
    return f


def selection_options(f: F) -> F:
    """Which rows: shared by `download` and `select`."""
    file_ = click.Path(path_type=Path, dir_okay=False)
    return _apply(f, [
        opt("--subset", "subsets", multiple=True, help="Only rows whose Subset is this (repeatable)."),
        opt("--limit", type=click.IntRange(min=0),
            help="At most this many rows: the first ones, or a sample that is the same for a --seed."),
        opt("--seed", type=int, help="Sample --limit rows deterministically with this seed."),
        opt("--ids", "ids_file", type=file_, help="Only the ImageIDs listed in this file, one per line."),
        opt("--class", "class_names", multiple=True,
            help="Only images with this class (a name from --class-descriptions, or a MID); repeatable."),
        opt("--classes-file", type=file_, help="Class names or MIDs, one a line."),
        opt("--class-descriptions", type=file_, help="class-descriptions.csv (V3) or oidv6/7-class-descriptions.csv."),
        opt("--annotations", "annotation_files", multiple=True, type=file_,
            help="Box or image-label CSVs (V3 or V4+, plain or .gz) to select from; repeatable."),
        opt("--label-source", type=click.Choice(["human", "machine", "any"]), default="any",
            help="Which image-level labels count (boxes are all human)."),
        opt("--min-confidence", type=click.FloatRange(0, 1), default=0.5,
            help="Labels below this confidence do not count (human negatives are 0)."),
        opt("--boxes-only", is_flag=True, default=False, help="Only images with a box of the class."),
        opt("--exclude-occluded", is_flag=True, default=False, help="Boxes marked IsOccluded do not count."),
        opt("--exclude-truncated", is_flag=True, default=False, help="Boxes marked IsTruncated do not count."),
        opt("--exclude-group-of", is_flag=True, default=False, help="Boxes marked IsGroupOf do not count."),
        opt("--exclude-depiction", is_flag=True, default=False, help="Boxes marked IsDepiction do not count."),
        opt("--exclude-inside", is_flag=True, default=False, help="Boxes marked IsInside do not count."),
    ])


def plan_selection(inputs: tuple[Path, ...], p: dict[str, Any], log: Callable[[str], None]) -> Any:
    """The id-level selection (--ids, classes, a seeded sample), worked out up front."""
    from .annotations import LabelSource
    from .classes import read_classes_file
    from .selection import plan

    names = list(p["class_names"])
    if p["classes_file"]:
        names += read_classes_file(p["classes_file"])
    exclude = frozenset(
        attr for flag, attr in (("exclude_occluded", "IsOccluded"), ("exclude_truncated", "IsTruncated"),
                                ("exclude_group_of", "IsGroupOf"), ("exclude_depiction", "IsDepiction"),
                                ("exclude_inside", "IsInside"))
        if p[flag]
    )
    if p["seed"] is not None and p["limit"] is None:
        raise ConfigError("--seed samples --limit rows: give --limit too")
    result = plan(
        inputs,
        subsets=frozenset(p["subsets"]),
        ids=_read_ids(p["ids_file"]) if p["ids_file"] else None,
        class_names=names,
        class_descriptions=p["class_descriptions"],
        annotations=tuple(p["annotation_files"]),
        class_filter={"label_source": LabelSource(p["label_source"]), "min_confidence": p["min_confidence"],
                      "boxes_only": p["boxes_only"], "exclude": exclude},
        limit=p["limit"],
        seed=p["seed"],
    )
    for note in result.notes:
        log(f"oidownload: {note}")
    return result


def download_options(f: F) -> F:
    decorators = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        opt("-o", "--output", "out", required=True,
            help="Output folder (OUT); the journal lives in OUT/.oidownload/ unless --state-dir says otherwise."),
        opt("--state-dir", type=click.Path(path_type=Path, file_okay=False),
            help="Where the journal lives [default: OUT/.oidownload]."),
        opt("--fsync", is_flag=True, default=False,
            help="Sync each image to disk before the journal records it (survives a power cut; slower)."),
        selection_options,
        opt("--source", type=_enum(SourceChoice), default="original",
            help="original: the verified original; thumbnail: Thumbnail300KURL; auto: the thumbnail when there is one."),
        opt("--resize", type=click.IntRange(min=1), help="Target size in pixels (never upscales)."),
        opt("--resize-mode", type=_enum(ResizeMode), default="fit",
            help="fit: longest side <= N; fill: centre crop to NxN; none: keep the size."),
        opt("--format", "fmt", type=_enum(OutputFormat), default="jpeg",
            help="Output format; keep writes the fetched bytes unchanged."),
        opt("--quality", type=click.IntRange(1, 100), default=90, help="JPEG/WebP quality."),
        opt("--orientation", type=_enum(Orientation), default="raw",
            help="raw: pixels as stored (the frame of the boxes); upright: turn by the Rotation column, or by EXIF when there is none."),
        opt("--keep-original", is_flag=True, default=False, help="Also keep the verified original bytes under OUT/original/."),
        opt("--concurrency", type=click.IntRange(min=1), default=64, help="Requests in flight, in total."),
        opt("--per-host", type=click.IntRange(min=1), default=16, help="Requests in flight per host (halved on 429/503)."),
        opt("--processes", type=click.IntRange(min=1), default=os.cpu_count() or 1, help="Image-processing worker processes."),
        opt("--connect-timeout", type=Duration(), default="10", help="Seconds to connect."),
        opt("--read-timeout", type=Duration(), default="30", help="Seconds without a byte before giving up."),
        opt("--timeout", type=Duration(), default="120", help="Total seconds for one request."),
        opt("--deadline", type=Duration(), default="600", help="Total seconds for one image, all retries included."),
        opt("--retries", type=click.IntRange(min=0), default=3, help="Retries of a retryable failure, with backoff."),
        opt("--retry-failed", is_flag=True, default=False, help="Also retry images whose failure was final (404, MD5...)."),
        opt("--max-body-mb", type=click.FloatRange(min=0.001), default=64.0, help="Largest body accepted."),
        opt("--max-redirects", type=click.IntRange(0, MAX_REDIRECTS), default=5,
            help="Redirects followed per request (0: none)."),
        opt("--max-bytes-in-flight-mb", type=click.FloatRange(min=1), default=128.0,
            help="Bodies being read or processed, in MB: bounds memory."),
        opt("--grace", type=Duration(), default="10", help="On SIGINT/SIGTERM, seconds to let in-flight images finish."),
        opt("--max-failure-rate", type=click.FloatRange(0, 1), help="Exit 3 when more than this fraction failed."),
        opt("--max-runtime", type=Duration(), help="Stop cleanly after this long (exit 75), e.g. before a scheduler's limit."),
        opt("--num-shards", type=click.IntRange(min=1), help="Split the rows into this many shares (cluster runs)."),
        opt("--shard-index", type=click.IntRange(min=0), help="This task's share; detected from Slurm/Kubernetes when absent."),
        opt("--log-format", type=_enum(LogFormat), default="text", help="json: JSON-lines progress and summary on stderr."),
        opt("--progress", "progress_mode", type=_enum(ProgressMode), default="auto",
            help="auto: a bar on a terminal, log lines otherwise."),
        opt("--progress-interval", type=Duration(), default="5", help="Seconds between progress log lines."),
        opt("--placeholder-md5", multiple=True, help="Base64 MD5 of another 'photo unavailable' image (repeatable)."),
    ]
    return _apply(f, decorators)


def _read_ids(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --ids {path}: {exc.strerror or exc}") from None
    ids = set()
    for n, line in enumerate(text.splitlines(), 1):
        token = line.strip().split(",")[0].strip()
        if not token or token.startswith("#") or token == "ImageID":
            continue
        if not re.fullmatch(r"[0-9a-fA-F]{16}", token):
            raise ConfigError(f"{path}:{n}: {token[:40]!r} is not a 16-hex-digit ImageID")
        ids.add(token.lower())
    return frozenset(ids)


def build_config(p: dict[str, Any], log: Callable[[str], None] = lambda _: None) -> Config:
    fmt = OutputFormat(p["fmt"])
    orientation = Orientation(p["orientation"])
    if fmt is OutputFormat.KEEP and (p["resize"] is not None or orientation is Orientation.UPRIGHT):
        raise ConfigError("--format keep writes the fetched bytes unchanged: it cannot --resize or turn --orientation upright")
    for md5 in p["placeholder_md5"]:
        if not re.fullmatch(r"[A-Za-z0-9+/]{22}==", md5):
            raise ConfigError(f"--placeholder-md5 {md5!r} is not a base64 MD5")
    net = NetConfig(
        concurrency=p["concurrency"], per_host=p["per_host"], connect_timeout=p["connect_timeout"],
        read_timeout=p["read_timeout"], total_timeout=p["timeout"], image_deadline=p["deadline"],
        retries=p["retries"], max_body_bytes=int(p["max_body_mb"] * 1024 * 1024), max_redirects=p["max_redirects"],
    )
    image = ImageConfig(
        resize=p["resize"], resize_mode=ResizeMode(p["resize_mode"]), format=fmt, quality=p["quality"],
        orientation=orientation, keep_original=p["keep_original"], placeholder_md5s=frozenset(p["placeholder_md5"]),
    )
    chosen = plan_selection(tuple(p["inputs"]), p, log)
    select = SelectConfig(
        subsets=frozenset(p["subsets"]),
        # A seeded sample is already cut to --limit; otherwise the first rows count.
        limit=None if p["seed"] is not None else p["limit"],
        source=SourceChoice(p["source"]), retry_failed=p["retry_failed"], ids=chosen.ids,
        classes=chosen.classes, annotations=tuple(a.resolve() for a in chosen.annotations),
        class_descriptions=chosen.class_descriptions.resolve() if chosen.class_descriptions else None,
    )
    run = RunConfig(
        processes=p["processes"], max_bytes_in_flight=int(p["max_bytes_in_flight_mb"] * 1024 * 1024),
        grace=p["grace"], max_failure_rate=p["max_failure_rate"], max_runtime=p["max_runtime"],
        log_format=LogFormat(p["log_format"]), progress=ProgressMode(p["progress_mode"]),
        progress_interval=p["progress_interval"],
    )
    out = str(p["out"])
    output = OutputConfig(out=out, state_dir=p["state_dir"] or default_state_dir(out), fsync=p["fsync"])
    return Config(inputs=tuple(p["inputs"]), output=output, net=net, image=image, select=select, run=run)


@main.command(epilog=EXIT_CODES)
@download_options
def download(**params: Any) -> None:
    """Download the images listed in INPUTS (Open Images CSVs, plain or .gz) into OUT.

    Running the same command again resumes: finished images are skipped without a
    request, and retryable failures are tried again.
    """
    from .pipeline import run_download
    from .progress import Progress
    from .shard import resolve_with_count

    try:
        cfg = build_config(params, lambda msg: click.echo(msg, err=True))
        shard = resolve_with_count(params["shard_index"], params["num_shards"], os.environ)
        progress = Progress(cfg.run.progress, cfg.run.log_format, cfg.run.progress_interval)
        result = run_download(cfg, shard, progress)
    except KeyboardInterrupt:  # before the loop's own handler is in place
        click.echo("oidownload: interrupted", err=True)
        sys.exit(130)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OidownloadError as exc:
        _fail(exc)
        return
    if result.message:
        click.echo(f"oidownload: {result.message}", err=True)
    sys.exit(result.exit_code)


@main.command("select")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt("-o", "--output", "dest", required=True, type=click.Path(path_type=Path, dir_okay=False),
     help="The new images CSV (same columns as the input).")
@selection_options
def select_cmd(inputs: tuple[Path, ...], dest: Path, **p: Any) -> None:
    """Write the rows of INPUTS that a selection picks, as a new images CSV.

    Takes the same selection options as `download`, so a selection can be checked,
    shared or split before anything is downloaded.
    """
    from .selection import write_selected

    try:
        chosen = plan_selection(inputs, p, lambda msg: click.echo(msg, err=True))
        limit = None if p["seed"] is not None else p["limit"]
        n = write_selected(inputs, dest, subsets=frozenset(p["subsets"]), ids=chosen.ids, limit=limit)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OidownloadError as exc:
        _fail(exc)
        return
    click.echo(f"{n} rows written to {dest}", err=True)


def state_dir_option(f: F) -> F:
    return opt("--state-dir", type=click.Path(path_type=Path, file_okay=False),
               help="The download's --state-dir, if it had one [default: OUT/.oidownload].")(f)


@main.command("annotations")
@click.argument("out")
@opt("--format", "fmt", type=click.Choice(["csv", "coco", "yolo"]), default="coco", help="Output layout.")
@opt("--annotations", "annotation_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Box or label CSVs [default: those the download selected with].")
@opt("--class-descriptions", type=click.Path(path_type=Path, dir_okay=False),
     help="For category names [default: the download's].")
@opt("--class", "class_names", multiple=True, help="Only these classes (names or MIDs) [default: the download's].")
@opt("-d", "--dest", type=click.Path(path_type=Path, file_okay=False), help="Output folder [default: OUT/annotations].")
@state_dir_option
def annotations_cmd(out: str, fmt: str, annotation_files: tuple[Path, ...], class_descriptions: Path | None,
                    class_names: tuple[str, ...], dest: Path | None, state_dir: Path | None) -> None:
    """Annotations of the images downloaded into OUT, in the frame of the written files.

    csv: the Open Images rows, filtered; coco: one JSON file with file names relative
    to OUT and boxes in pixels; yolo: a txt per image under labels/, and classes.txt.
    Widths and heights come from the journal (after resizing and turning).
    """
    import json

    from .classes import ClassDescriptions
    from .export import ExportFormat, export
    from .state import StateDir

    try:
        remembered = [json.loads(v) for v in StateDir.open(out, state_dir).meta("selection")]
        files = list(annotation_files) or [Path(a) for m in remembered for a in m.get("annotations", [])]
        files = list(dict.fromkeys(files))
        descriptions = class_descriptions or next(
            (Path(m["class_descriptions"]) for m in remembered if m.get("class_descriptions")), None)
        classes: frozenset[str] | None = None
        if class_names:
            if descriptions is None and any(not n.startswith("/") for n in class_names):
                raise ConfigError("class names need --class-descriptions")
            classes = frozenset(ClassDescriptions.load(descriptions).resolve(class_names) if descriptions
                                else class_names)
        elif any(m.get("classes") for m in remembered):
            classes = frozenset(c for m in remembered for c in m.get("classes", []))
        res = export(out, ExportFormat(fmt), files, dest=dest, class_descriptions=descriptions, classes=classes,
                     state_dir=state_dir)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OidownloadError as exc:
        _fail(exc)
        return
    click.echo(
        f"{res.images} images, {res.boxes} boxes, {res.labels} labels"
        + (f", {res.dropped} boxes outside a crop dropped" if res.dropped else "")
        + f" -> {res.dest}",
        err=True,
    )
    for f in res.files:
        click.echo(str(f))


@main.command()
@opt("--version", "version", type=click.Choice(["v3", "v6", "v7"]), default="v7", help="Open Images version.")
@opt("-o", "--output", "dest", type=click.Path(path_type=Path, file_okay=False), default="metadata",
     help="Folder for the files.")
@opt("--base-url", default="https://storage.googleapis.com/openimages/", help="Where the files are served from.")
@opt("--only", multiple=True, help="Only files whose name matches this glob, e.g. 'validation-*' (repeatable).")
@opt("--list", "list_only", is_flag=True, default=False, help="List the version's files and exit.")
def metadata(version: str, dest: Path, base_url: str, only: tuple[str, ...], list_only: bool) -> None:
    """Download the official metadata files (image lists, boxes, labels, classes).

    Interrupted downloads resume from their .part file; every file's size is checked
    against what the server announced.
    """
    from .metadata import download_metadata, select_files

    try:
        if list_only:
            for rel in select_files(version, only):
                click.echo(base_url.rstrip("/") + "/" + rel)
            return
        results = download_metadata(version, dest, base_url=base_url, only=only, bars=sys.stderr.isatty())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OidownloadError as exc:
        _fail(exc)
        return
    for r in results:
        click.echo(f"{r.state:<14}{r.size:>14}  {r.path}")


@main.command()
@click.argument("out")
@opt("--json", "as_json", is_flag=True, default=False, help="One JSON object instead of tables.")
@state_dir_option
def status(out: str, as_json: bool, state_dir: Path | None) -> None:
    """Counts per status, bytes, rate and ETA across every journal in OUT.

    Works while runs are in progress (each cluster task is shown) and after they end.
    """
    import json

    from .progress import human_bytes, human_seconds
    from .records import STATUS_MEANING
    from .report import out_status

    try:
        st = out_status(out, state_dir)
    except OidownloadError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(st.as_json()))
        return
    click.echo(f"{out}: {st.total} images journaled, {human_bytes(sum(c.bytes for c in st.counts.values()))} fetched")
    click.echo(f"{'status':<15}{'count':>10}{'bytes':>12}  meaning")
    for name, c in st.counts.items():
        meaning = {s.value: m for s, m in STATUS_MEANING.items()}.get(name, "")
        click.echo(f"{name:<15}{c.n:>10}{human_bytes(c.bytes):>12}  {meaning}")
    click.echo(f"{'shard':<12}{'state':<10}{'done':>10}{'planned':>10}{'rate/s':>9}{'ETA':>9}  host")
    for s in st.shards:
        planned = "?" if s.planned is None else str(s.planned)
        rate = "" if s.rate is None or s.state != "running" else f"{s.rate:.1f}"
        click.echo(f"{s.tag:<12}{s.state:<10}{s.done:>10}{planned:>10}{rate:>9}{human_seconds(s.eta) if s.eta is not None else '':>9}  {s.host} {s.pid or ''}")
    if any(s.state == "running" for s in st.shards):
        click.echo(f"total rate {st.rate:.1f} images/s, ETA {human_seconds(st.eta)}")


@main.command()
@click.argument("out")
@opt("-d", "--dest", type=click.Path(path_type=Path, file_okay=False), help="Folder for the CSVs [default: OUT/report].")
@state_dir_option
def report(out: str, dest: Path | None, state_dir: Path | None) -> None:
    """Write success.csv and failure.csv: the input columns plus status, detail,
    http_status, attempts, source and location, for every journaled row in OUT."""
    from .report import write_report

    try:
        res = write_report(out, dest, state_dir)
    except OidownloadError as exc:
        _fail(exc)
        return
    for warning in res.warnings:
        click.echo(f"oidownload: warning: {warning}", err=True)
    click.echo(f"{res.ok} rows in {res.success}")
    click.echo(f"{res.failed} rows in {res.failure}")


@main.command()
@opt("-n", "--images", "n", type=click.IntRange(min=1), default=500, help="Images per scenario.")
@opt("--scenario", "scenarios", multiple=True, type=click.Choice(["originals-fit640", "thumbnails-keep"]),
     help="Which to run (repeatable); default: both.")
@opt("--mix", type=click.Choice(["light", "openimages", "tiny"]), default="light",
     help="Originals' size mix: light (mean 1.3 MB), openimages (the real V3 mix, mean 2.1 MB), tiny.")
@opt("--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Median latency the origin adds.")
@opt("--jitter", type=click.FloatRange(min=0), default=0.0, help="Lognormal sigma of the latency.")
@opt("--faults", default="", help="Fault rates, e.g. '404=0.01,503x2=0.01' (see oidownload.origin).")
@opt("--processes", type=click.IntRange(min=1), help="Passed to download.")
@opt("--concurrency", type=click.IntRange(min=1), help="Passed to download.")
@opt("--serve", is_flag=True, default=False,
     help="Only serve the synthetic corpus (and write its images.csv) until Ctrl-C: a demo origin to download from.")
@opt("--manifest", type=click.Path(path_type=Path, dir_okay=False), default="bench-images.csv",
     help="With --serve: where to write the corpus's images.csv.")
@opt("--port", type=click.IntRange(0, 65535), default=0, help="With --serve: the port on 127.0.0.1 (0: any free one).")
def bench(n: int, scenarios: tuple[str, ...], mix: str, latency_ms: float, jitter: float, faults: str,
          processes: int | None, concurrency: int | None, serve: bool, manifest: Path, port: int) -> None:
    """Measure the whole pipeline on this machine, against the built-in local origin.

    Starts the origin on 127.0.0.1, runs `oidownload download` on N synthetic images
    and prints one JSON line per scenario: images/s, MB/s, CPU ms per image (pool
    workers included) and peak memory. The first run generates and caches the images.

    With --serve it only serves the corpus until stopped, with its images.csv written
    to --manifest, for trying `oidownload download` against it by hand.
    """
    import dataclasses
    import json

    from .bench import DEFAULT_SCENARIOS, run_scenario, serve_corpus

    if serve:
        serve_corpus(n, mix, latency_ms, jitter, faults, manifest, port, lambda m: click.echo(m, err=True))
        return
    chosen = [s for s in DEFAULT_SCENARIOS if not scenarios or s.name in scenarios]
    for scn in chosen:
        scn = dataclasses.replace(scn, n=n, mix=mix, latency_ms=latency_ms, jitter=jitter, faults=faults,
                                  processes=processes, concurrency=concurrency)
        click.echo(f"bench: {scn.name}: {n} images ({mix} mix) ...", err=True)
        try:
            result = run_scenario(scn, log=lambda m: click.echo(m, err=True))
        except RuntimeError as exc:
            _fail(OidownloadError(str(exc)))
        click.echo(json.dumps(result))
        click.echo(
            f"bench: {scn.name}: {result['images_per_s']} images/s, {result['mb_per_s']} MB/s, "
            f"{result['cpu_ms_per_image']} ms CPU/image, peak RSS {result['peak_rss_mb']} MB "
            f"(tree {result['peak_tree_rss_mb']} MB)",
            err=True,
        )


if __name__ == "__main__":
    main()
