"""What the Prometheus metrics cost: the same download with metrics off and on
(--metrics-port and --metrics-file, with a scraper reading /metrics every second as
Prometheus would), alternating run by run against the local origin, in images/s and
in main-process CPU per image (the summary's main_cpu_s over the images). The budget
(issue 26) is 0.05 ms of main-process CPU per image. Prints one JSON line per run and
one with the medians. Example:

    python benchmarks/metrics.py --n 2000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import run_ours  # benchmarks/bench.py, next to this script

from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread
from oidownload.testing.procs import free_port


def _scrape(port: int, stop: threading.Event, scrapes: list[int]) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                scrapes.append(len(r.read()))
        except OSError:
            pass  # not up yet, or already gone


def micro(n: int = 200_192) -> tuple[float, float]:
    """CPU ms per image of the counting alone (one request, one journaled outcome), in
    this process: the end-to-end difference below is within the runs' noise."""
    from oidownload.core.records import Outcome, Source, Status
    from oidownload.core.shard import Shard
    from oidownload.engine.metrics import Metrics

    m = Metrics(Shard())
    hosts = [f"farm{i}.staticflickr.com" for i in range(9)]
    outcomes = [Outcome(f"{i:016x}", Status.OK, nbytes=100_000, out_bytes=50_000, source=Source.ORIGINAL) for i in range(512)]
    t0 = time.process_time()
    for _ in range(0, n, 512):
        for k in range(len(outcomes)):
            m.request(hosts[k % 9], 200, 0.2)
        m.journaled(outcomes)
    per_image = (time.process_time() - t0) * 1000 / n
    t0 = time.process_time()
    for _ in range(100):
        m.render()
    return per_image, (time.process_time() - t0) * 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--per-host", type=int, default=64)
    args = ap.parse_args()
    args.source, args.format, args.resize, args.quality = "thumbnail", "keep", 640, 90  # the cheapest image: metrics weigh most
    print(json.dumps({"event": "setup", "date": time.strftime("%Y-%m-%d"), "n": args.n, "runs": args.runs}), flush=True)
    counting, rendering = micro()
    print(json.dumps({"event": "micro", "counting_cpu_ms_per_image": round(counting, 5),
                      "render_cpu_ms": round(rendering, 3)}), flush=True)
    corpus = Corpus.generate(args.n, mix="light")
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="oidl-metrics-") as tmp, \
            OriginThread(Origin(corpus, Latency(args.latency_ms / 1000))) as origin:
        manifest = corpus.write_manifest(Path(tmp) / "images.csv", origin.base_url)
        for k in range(args.runs):
            for mode in ("off", "on"):
                extra: list[str] = []
                stop = threading.Event()
                scrapes: list[int] = []
                if mode == "on":
                    port = free_port()
                    extra = ["--metrics-port", str(port), "--metrics-file", str(Path(tmp) / f"m-{k}.prom")]
                    threading.Thread(target=_scrape, args=(port, stop, scrapes), daemon=True).start()
                try:
                    r = run_ours(manifest, Path(tmp) / f"{mode}-{k}", args, extra)
                finally:
                    stop.set()
                runs[mode].append(r)
                print(json.dumps({"event": "run", "mode": mode, "run": k, "scrapes": len(scrapes), **r}), flush=True)
    off = {key: statistics.median(r[key] for r in runs["off"]) for key in ("images_per_s", "main_cpu_ms_per_image")}
    on = {key: statistics.median(r[key] for r in runs["on"]) for key in ("images_per_s", "main_cpu_ms_per_image")}
    print(json.dumps({
        "event": "result", "images_per_s_off": off["images_per_s"], "images_per_s_on": on["images_per_s"],
        "main_cpu_ms_per_image_off": off["main_cpu_ms_per_image"], "main_cpu_ms_per_image_on": on["main_cpu_ms_per_image"],
        "metrics_main_cpu_ms_per_image": round(on["main_cpu_ms_per_image"] - off["main_cpu_ms_per_image"], 3),
    }), flush=True)


if __name__ == "__main__":
    main()
