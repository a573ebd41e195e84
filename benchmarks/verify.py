"""`oidownload verify` throughput: N downloaded images (default 10,000 thumbnails of
about 640x480 and 100 KB, the size of a `--resize 640` dataset) checked on every
core, measured from outside (wall, CPU of the whole tree, peak memory).

The images are downloaded first from the local origin on 127.0.0.1 into a temporary
folder (never committed); then `verify` runs --runs times and the median is printed.

    python benchmarks/verify.py [--n 10000] [--runs 3] [--output-format files|webdataset]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from oidownload.bench import measure
from oidownload.testing.origin import Corpus, Origin, OriginThread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--output-format", choices=["files", "webdataset"], default="files")
    ap.add_argument("--processes", type=int, help="Passed to verify [default: one per core].")
    ap.add_argument("--thumbs", default="thumbnails", help="The synthetic size mix of the images (see synth.MIXES).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oid-verify-bench-") as tmp:
        work = Path(tmp)
        corpus = Corpus.generate(args.n, mix="tiny", thumbs=args.thumbs, seed=7, subset="validation")
        out = work / "out"
        with OriginThread(Origin(corpus)) as origin:
            manifest = corpus.write_manifest(work / "images.csv", origin.base_url)
            res = subprocess.run([sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out),
                                  "--source", "thumbnail", "--format", "keep", "--progress", "none",
                                  "--output-format", args.output_format, "--concurrency", "64"],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"download failed: {res.stderr[-2000:]}")
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and ".oidownload" not in p.parts)
        cmd = [sys.executable, "-m", "oidownload", "verify", str(out), "--progress", "none"]
        if args.processes:
            cmd += ["--processes", str(args.processes)]
        runs = []
        for _ in range(args.runs):
            m = measure(cmd)
            if m.exit_code != 0:
                sys.exit(f"verify exited {m.exit_code}: {m.stderr[-2000:]}")
            runs.append({"wall_s": round(m.wall_s, 2), "images_per_s": round(args.n / m.wall_s, 1),
                         "cpu_ms_per_image": round(m.cpu_s * 1000 / args.n, 2),
                         "peak_tree_rss_mb": round(m.peak_tree_rss_mb, 1)})
            print(json.dumps(runs[-1]), file=sys.stderr)
        median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        print(json.dumps({"n": args.n, "output_format": args.output_format, "mb": round(total / 1e6, 1),
                          "runs": len(runs), "median": median,
                          "wall_s_all": [r["wall_s"] for r in runs],
                          "images_per_s_spread": round(statistics.pstdev(r["images_per_s"] for r in runs), 1)}))


if __name__ == "__main__":
    main()
