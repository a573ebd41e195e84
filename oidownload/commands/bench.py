"""`oidownload bench`: the whole pipeline measured against the built-in local origin."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import FILE_OUT, Float, Int, IntOrAuto, opt
from oidownload.core.errors import OidownloadError
from oidownload.core.exits import ExitCode
from oidownload.core.options import MAX_CONCURRENCY, MAX_PROCESSES
from oidownload.runs import check_new_file


@main.command()
@opt("-n", "--images", "n", scope="bench", type=Int(1, 1_000_000), default=500, help="Images per scenario.")
@opt("--scenario", "scenarios", scope="bench", multiple=True, type=click.Choice(["originals-fit640", "thumbnails-keep"]),
     help="Which to run (repeatable); default: both.")
@opt("--mix", scope="bench", type=click.Choice(["light", "openimages", "tiny"]), default="light",
     help="Originals' size mix: light (mean 1.3 MB), openimages (the real V3 mix, mean 2.1 MB), tiny.")
@opt("--latency-ms", scope="bench", type=Float(0, 60_000, lo_ok=True), default=0.0, help="Median latency the origin adds.")
@opt("--jitter", scope="bench", type=Float(0, 10, lo_ok=True), default=0.0, help="Lognormal sigma of the latency.")
@opt("--faults", scope="bench", default="", help="Fault rates, e.g. '404=0.01,503x2=0.01'; the kinds are FAULT_KINDS in oidownload.testing.origin; 'x2' fails only the first 2 requests of a URL.")
@opt("--processes", scope="bench", type=Int(1, MAX_PROCESSES), help="Passed to download.")
@opt("--concurrency", scope="bench", type=Int(1, MAX_CONCURRENCY), help="Passed to download.")
@opt("--serve", scope="bench", is_flag=True, default=False,
     help="Only serve the synthetic corpus (and write its images.csv) until Ctrl-C: a demo origin to download from.")
@opt("--manifest", scope="bench", type=FILE_OUT, default="bench-images.csv",
     help="With --serve: where to write the corpus's images.csv.")
@opt("--port", scope="bench", type=Int(0, 65535), default=0, help="With --serve: the port on 127.0.0.1 (0: any free one).")
@opt("--bandwidth-mbps", scope="bench", type=Float(0, 100_000),
     help="The origin's link: MB/s shared by all connections [default: no cap].")
@opt("--max-in-flight", scope="bench", type=Int(1, 100_000),
     help="With this many requests being served to one host, the origin refuses more (--overload) [default: no limit].")
@opt("--overload", scope="bench", type=click.Choice(["503", "429"]), default="503",
     help="How the origin refuses above --max-in-flight: 503 SlowDown (as S3) or 429 with Retry-After: 1.")
@opt("--hosts", scope="bench", type=Int(1, 254), default=1,
     help="Spread the images over this many hosts (127.0.0.1 .. 127.0.0.N), as Flickr does.")
@opt("--per-host", scope="bench", type=IntOrAuto(1, MAX_CONCURRENCY), help="Passed to download.")
@boundary
def bench(n: int, scenarios: tuple[str, ...], mix: str, latency_ms: float, jitter: float, faults: str,
          processes: int | None, concurrency: int | None, serve: bool, manifest: Path, port: int,
          bandwidth_mbps: float | None, max_in_flight: int | None, overload: str, hosts: int,
          per_host: int | None) -> int:
    """Measure the whole pipeline on this machine, against the built-in local origin.

    Starts the origin on 127.0.0.1, runs `oidownload download` on N synthetic images
    and prints one JSON line per scenario: images/s, MB/s, CPU ms per image (pool
    workers included) and peak memory. The first run generates and caches the images
    (a minute or two, with a progress bar; later runs start at once).

    With --serve it only serves the corpus until stopped, with its images.csv written
    to --manifest, for trying `oidownload download` against it by hand.
    """
    import dataclasses
    import json

    from oidownload.bench import DEFAULT_SCENARIOS, Load, run_scenario, serve_corpus

    bar = sys.stderr if sys.stderr.isatty() else None  # the first run's image generation
    if serve:
        check_new_file(manifest)
        serve_corpus(n, mix, latency_ms, jitter, faults, manifest, port, lambda m: click.echo(m, err=True), bar,
                     load=Load(bandwidth_mbps or 0.0, max_in_flight or 0, overload, hosts))
        return ExitCode.OK
    chosen = [s for s in DEFAULT_SCENARIOS if not scenarios or s.name in scenarios]
    for scn in chosen:
        scn = dataclasses.replace(scn, n=n, mix=mix, latency_ms=latency_ms, jitter=jitter, faults=faults,
                                  processes=processes, concurrency=concurrency,
                                  load=Load(bandwidth_mbps or 0.0, max_in_flight or 0, overload, hosts),
                                  extra_args=() if per_host is None else ("--per-host", str(per_host)))
        click.echo(f"bench: {scn.name}: {n} images ({mix} mix) ...", err=True)
        try:
            result = run_scenario(scn, log=lambda m: click.echo(m, err=True), bar=bar)
        except RuntimeError as exc:
            raise OidownloadError(str(exc)) from None
        click.echo(json.dumps(result))
        click.echo(
            f"bench: {scn.name}: {result['images_per_s']} images/s, {result['mb_per_s']} MB/s, "
            f"{result['cpu_ms_per_image']} ms CPU/image, peak RSS {result['peak_rss_mb']} MB "
            f"(tree {result['peak_tree_rss_mb']} MB)",
            err=True,
        )
    return ExitCode.OK
