"""Click commands → a frozen Config → run. The only place that prints fatal errors and
picks exit codes (see `oidownload --help` and the README's table).

Every option can also be set as OIDOWNLOAD_<OPTION> (dashes become underscores).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .config import (
    Config,
    ImageConfig,
    LogFormat,
    NetConfig,
    Orientation,
    OutputFormat,
    ProgressMode,
    ResizeMode,
    RunConfig,
    SelectConfig,
    SourceChoice,
)
from .errors import ConfigError, OidownloadError

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


class Duration(_ParamType):
    """Seconds, or a number with s/m/h/d: '90', '45m', '7.5h'."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value))
        if m is None:
            self.fail(f"{value!r} is not a duration like 90, 45m or 7.5h", param, ctx)
        return float(m.group(1)) * float(_UNITS[m.group(2)])


def _enum(cls: type[Any]) -> click.Choice[str]:
    return click.Choice([e.value for e in cls], case_sensitive=False)


def _fail(exc: OidownloadError) -> None:
    click.echo(f"oidownload: error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="oidownload")
def main() -> None:
    """Download Open Images: verified, resized, sharded, resumable."""


def download_options(f: F) -> F:
    decorators = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        opt("-o", "--output", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
            help="Output folder (OUT); the journal lives in OUT/.oidownload/."),
        opt("--subset", "subsets", multiple=True, help="Only rows whose Subset is this (repeatable)."),
        opt("--limit", type=click.IntRange(min=0), help="At most this many rows of the selection."),
        opt("--ids", "ids_file", type=click.Path(path_type=Path, dir_okay=False),
            help="Only the ImageIDs listed in this file, one per line."),
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
        opt("--max-redirects", type=click.IntRange(min=0), default=5, help="Redirects followed per request."),
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
    for d in reversed(decorators):
        f = d(f)
    return f


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


def build_config(p: dict[str, Any]) -> Config:
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
    select = SelectConfig(
        subsets=frozenset(p["subsets"]), limit=p["limit"], source=SourceChoice(p["source"]),
        retry_failed=p["retry_failed"], ids=_read_ids(p["ids_file"]) if p["ids_file"] else None,
    )
    run = RunConfig(
        processes=p["processes"], max_bytes_in_flight=int(p["max_bytes_in_flight_mb"] * 1024 * 1024),
        grace=p["grace"], max_failure_rate=p["max_failure_rate"], max_runtime=p["max_runtime"],
        log_format=LogFormat(p["log_format"]), progress=ProgressMode(p["progress_mode"]),
        progress_interval=p["progress_interval"],
    )
    return Config(inputs=tuple(p["inputs"]), out=p["out"], net=net, image=image, select=select, run=run)


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
        cfg = build_config(params)
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


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@opt("--json", "as_json", is_flag=True, default=False, help="One JSON object instead of tables.")
def status(out: Path, as_json: bool) -> None:
    """Counts per status, bytes, rate and ETA across every journal in OUT.

    Works while runs are in progress (each cluster task is shown) and after they end.
    """
    import json

    from .progress import human_bytes, human_seconds
    from .records import STATUS_MEANING, Status
    from .report import out_status

    try:
        st = out_status(out)
    except OidownloadError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(st.as_json()))
        return
    click.echo(f"{out}: {st.total} images journaled, {human_bytes(sum(c.bytes for c in st.counts.values()))} fetched")
    click.echo(f"{'status':<15}{'count':>10}{'bytes':>12}  meaning")
    for name, c in st.counts.items():
        meaning = STATUS_MEANING.get(Status(name), "") if name in Status.__members__.values() else ""
        click.echo(f"{name:<15}{c.n:>10}{human_bytes(c.bytes):>12}  {meaning}")
    click.echo(f"{'shard':<12}{'state':<10}{'done':>10}{'planned':>10}{'rate/s':>9}{'ETA':>9}  host")
    for s in st.shards:
        planned = "?" if s.planned is None else str(s.planned)
        rate = "" if s.rate is None or s.state != "running" else f"{s.rate:.1f}"
        click.echo(f"{s.tag:<12}{s.state:<10}{s.done:>10}{planned:>10}{rate:>9}{human_seconds(s.eta) if s.eta is not None else '':>9}  {s.host} {s.pid or ''}")
    if any(s.state == "running" for s in st.shards):
        click.echo(f"total rate {st.rate:.1f} images/s, ETA {human_seconds(st.eta)}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@opt("-d", "--dest", type=click.Path(path_type=Path, file_okay=False), help="Folder for the CSVs [default: OUT/report].")
def report(out: Path, dest: Path | None) -> None:
    """Write success.csv and failure.csv: the input columns plus status, detail,
    http_status, attempts and the written path, for every journaled row in OUT."""
    from .report import write_report

    try:
        res = write_report(out, dest)
    except OidownloadError as exc:
        _fail(exc)
        return
    for missing in res.missing_inputs:
        click.echo(f"oidownload: warning: {missing} is gone; its rows carry only the ImageID", err=True)
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
def bench(n: int, scenarios: tuple[str, ...], mix: str, latency_ms: float, jitter: float, faults: str,
          processes: int | None, concurrency: int | None) -> None:
    """Measure the whole pipeline on this machine, against the built-in local origin.

    Starts the origin on 127.0.0.1, runs `oidownload download` on N synthetic images
    and prints one JSON line per scenario: images/s, MB/s, CPU ms per image (pool
    workers included) and peak memory. The first run generates and caches the images.
    """
    import dataclasses
    import json

    from .bench import DEFAULT_SCENARIOS, run_scenario

    chosen = [s for s in DEFAULT_SCENARIOS if not scenarios or s.name in scenarios]
    for scn in chosen:
        scn = dataclasses.replace(scn, n=n, mix=mix, latency_ms=latency_ms, jitter=jitter, faults=faults,
                                  processes=processes, concurrency=concurrency)
        click.echo(f"bench: {scn.name}: {n} images ({mix} mix) ...", err=True)
        try:
            result = run_scenario(scn)
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
