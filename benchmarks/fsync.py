"""What `--fsync` costs: the same download with and without it, alternating run by run
in one session against the local origin, in images/s and in ms per image.

Two scenarios: thumbnails kept as they are (the cheapest per-image work, where a sync
weighs most) and originals resized to 640. Each run writes into a fresh folder on the
file system of --dir (a sync's cost is the disk's, so put it where the data would go).
Prints one JSON line per run and one with the medians and the cost. Example:

    python benchmarks/fsync.py --n 500 --runs 1 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import run_ours  # benchmarks/bench.py, next to this script

from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread

SCENARIOS = {
    "thumbnails-keep": {"source": "thumbnail", "format": "keep", "mix": "light"},
    "originals-fit640": {"source": "original", "format": "jpeg", "mix": "light"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--per-host", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where the output folders go [default: the temp dir]")
    ap.add_argument("--scenario", choices=list(SCENARIOS), action="append")
    args = ap.parse_args()
    print(json.dumps({"event": "setup", "date": time.strftime("%Y-%m-%d"), "n": args.n, "runs": args.runs,
                      "dir": args.dir or tempfile.gettempdir()}), flush=True)
    for name in args.scenario or list(SCENARIOS):
        scn = SCENARIOS[name]
        args.source, args.format, args.resize, args.quality = scn["source"], scn["format"], 640, 90
        corpus = Corpus.generate(args.n, mix=scn["mix"])
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "fsync": []}
        with tempfile.TemporaryDirectory(prefix="oidl-fsync-", dir=args.dir) as tmp, \
                OriginThread(Origin(corpus, Latency(args.latency_ms / 1000))) as origin:
            manifest = corpus.write_manifest(Path(tmp) / "images.csv", origin.base_url)
            for k in range(args.runs):
                for mode, extra in (("plain", []), ("fsync", ["--fsync"])):
                    r = run_ours(manifest, Path(tmp) / f"{mode}-{k}", args, extra)
                    runs[mode].append(r)
                    print(json.dumps({"event": "run", "scenario": name, "mode": mode, "run": k, **r}), flush=True)
        plain = statistics.median(r["images_per_s"] for r in runs["plain"])
        synced = statistics.median(r["images_per_s"] for r in runs["fsync"])
        print(json.dumps({
            "event": "result", "scenario": name, "images_per_s": plain, "images_per_s_fsync": synced,
            "slowdown": round(plain / synced, 2), "ms_per_image": round(1000 / synced - 1000 / plain, 2),
        }), flush=True)


if __name__ == "__main__":
    main()
