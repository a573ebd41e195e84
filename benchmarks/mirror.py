"""`--source cvdf` against a real S3 server on loopback: SeaweedFS started for the
benchmark, its public-read `open-images-dataset` bucket seeded with N copies of about
300 KB (photo-like JPEGs, each with unique bytes), then `oidownload download --source
cvdf --format keep` (no resize: each copy's MD5 is checked against its ETag and the
bytes written as they are). Prints one JSON line per run and the median.

    python benchmarks/mirror.py --n 2000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

from oidownload.bench import measure, summary_of
from oidownload.testing import s3server, synth
from oidownload.testing.synth import Mix

# Mirror copies: re-encoded at no more than 1024 px, about 300 KB.
COPIES = Mix("mirror-copies", 300_000, 0.15, 200_000, 450_000, 1024, 6, quality=92)


async def _seed(server: s3server.S3Server, ids: list[str], templates: list[bytes]) -> int:
    import obstore

    store = server.store(s3server.PUBLIC_BUCKET)
    sem = asyncio.Semaphore(32)
    total = 0

    async def put(i: int, image_id: str) -> None:
        nonlocal total
        body = templates[i % len(templates)] + bytes.fromhex(image_id) * 2
        total += len(body)
        async with sem:
            await obstore.put_async(store, f"validation/{image_id}.jpg", body)

    await asyncio.gather(*(put(i, image_id) for i, image_id in enumerate(ids)))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--per-host", default="auto", help="auto, or N: the mirror is one host [default: auto]")
    args = ap.parse_args()
    templates = synth.templates(COPIES)
    ids = [f"{(0x9E3779B97F4A7C15 * (k + 1)) % (1 << 64):016x}" for k in range(args.n)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="oidl-mirror-") as tmp:
        server = s3server.start(Path(tmp) / "seaweedfs")
        try:
            total = asyncio.run(_seed(server, ids, templates))
            manifest = Path(tmp) / "images.csv"
            with open(manifest, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                            "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL"])
                for image_id in ids:
                    w.writerow([image_id, "validation", f"https://farm1.staticflickr.com/{image_id}_o.jpg", "", "", "",
                                "", "", "1", "AAAAAAAAAAAAAAAAAAAAAA==", ""])
            print(json.dumps({"event": "setup", "n": args.n, "mean_kb": round(total / args.n / 1000, 1)}), flush=True)
            for k in range(args.runs):
                cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(Path(tmp) / f"out-{k}"),
                       "--source", "cvdf", "--mirror-url", f"{server.endpoint}/{s3server.PUBLIC_BUCKET}",
                       "--format", "keep", "--concurrency", str(args.concurrency), "--per-host", args.per_host,
                       "--progress", "none", "--log-format", "json"]
                m = measure(cmd)
                summary = summary_of(m.stderr)
                if m.exit_code != 0 or summary.get("ok") != args.n:
                    raise SystemExit(f"run failed ({m.exit_code}): {m.stderr[-2000:]}")
                r = m.figures(summary["done"], summary["bytes"])
                runs.append(r)
                print(json.dumps({"event": "run", "run": k, **r}), flush=True)
        finally:
            server.stop()
    print(json.dumps({"event": "result", "n": args.n, "runs": args.runs,
                      **{k: statistics.median(r[k] for r in runs) for k in ("images_per_s", "mb_per_s", "cpu_ms_per_image",
                                                                          "peak_tree_rss_mb")}}), flush=True)


if __name__ == "__main__":
    main()
