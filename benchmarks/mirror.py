"""`--source cvdf` against a mirror on loopback, seeded with N copies of about 300 KB
(photo-like JPEGs, each with unique bytes), then `oidownload download --source cvdf
--format keep` (no resize: each copy's MD5 is checked against its ETag and the bytes
written as they are). The mirror is SeaweedFS, started for the benchmark (its
public-read `open-images-dataset` bucket), or with --latency-ms the test origin, which
answers each GET after that latency (SeaweedFS on loopback has none). With several
--per-host values, the runs alternate them run by run. Prints one JSON line per run
and the medians of each.

    python benchmarks/mirror.py --n 2000 --runs 3
    python benchmarks/mirror.py --n 3000 --runs 3 --latency-ms 100 --per-host auto,16,64,128,256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from oidownload.bench import measure, summary_of
from oidownload.testing import s3server, synth
from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread
from oidownload.testing.synth import Mix

# Mirror copies: re-encoded at no more than 1024 px, about 300 KB.
COPIES = Mix("mirror-copies", 300_000, 0.15, 200_000, 450_000, 1024, 6, quality=92)


def _copy(templates: list[bytes], i: int, image_id: str) -> bytes:
    return templates[i % len(templates)] + bytes.fromhex(image_id) * 2


async def _seed(server: s3server.S3Server, ids: list[str], templates: list[bytes]) -> int:
    import obstore

    store = server.store(s3server.PUBLIC_BUCKET)
    sem = asyncio.Semaphore(32)
    total = 0

    async def put(i: int, image_id: str) -> None:
        nonlocal total
        body = _copy(templates, i, image_id)
        total += len(body)
        async with sem:
            await obstore.put_async(store, f"validation/{image_id}.jpg", body)

    await asyncio.gather(*(put(i, image_id) for i, image_id in enumerate(ids)))
    return total


def _manifest(path: Path, ids: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                    "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL"])
        for image_id in ids:
            w.writerow([image_id, "validation", f"https://farm1.staticflickr.com/{image_id}_o.jpg", "", "", "",
                        "", "", "1", "AAAAAAAAAAAAAAAAAAAAAA==", ""])


@contextlib.contextmanager
def _mirror(folder: Path, ids: list[str], templates: list[bytes], latency_ms: float) -> Iterator[tuple[str, int]]:
    """(the mirror's URL, bytes seeded)."""
    if latency_ms > 0:
        bodies = {f"{s3server.PUBLIC_BUCKET}/validation/{image_id}.jpg": _copy(templates, i, image_id)
                  for i, image_id in enumerate(ids)}
        origin = Origin(Corpus.generate(0, mix="tiny", seed=1), Latency(latency_ms / 1000, 0.1), extra_files=bodies)
        origin.files_latency = True
        with OriginThread(origin) as served:
            yield f"{served.base_url}/files/{s3server.PUBLIC_BUCKET}", sum(map(len, bodies.values()))
        return
    server = s3server.start(folder / "seaweedfs")
    try:
        total = asyncio.run(_seed(server, ids, templates))
        yield f"{server.endpoint}/{s3server.PUBLIC_BUCKET}", total
    finally:
        server.stop()


FIGURES = ("images_per_s", "mb_per_s", "cpu_ms_per_image", "peak_tree_rss_mb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=None, help="[default: oidownload's own]")
    ap.add_argument("--per-host", default="auto",
                    help="auto or N, or several, comma-separated, alternated: the mirror is one host [default: auto]")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="serve the copies from the test origin with this latency (jitter 0.1) instead of SeaweedFS")
    args = ap.parse_args()
    variants = [v.strip() for v in args.per_host.split(",") if v.strip()]
    templates = synth.templates(COPIES)
    ids = [f"{(0x9E3779B97F4A7C15 * (k + 1)) % (1 << 64):016x}" for k in range(args.n)]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="oidl-mirror-") as tmp, \
            _mirror(Path(tmp), ids, templates, args.latency_ms) as (url, total):
        manifest = Path(tmp) / "images.csv"
        _manifest(manifest, ids)
        print(json.dumps({"event": "setup", "n": args.n, "mean_kb": round(total / args.n / 1000, 1),
                          "latency_ms": args.latency_ms}), flush=True)
        for k in range(args.runs):
            for per_host in variants:
                out = Path(tmp) / f"out-{k}-{per_host}"
                cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out),
                       "--source", "cvdf", "--mirror-url", url, "--format", "keep", "--per-host", per_host,
                       "--progress", "none", "--log-format", "json"]
                if args.concurrency is not None:
                    cmd += ["--concurrency", str(args.concurrency)]
                elif per_host != "auto":
                    cmd += ["--concurrency", str(max(64, int(per_host)))]  # as benchmarks/perhost.py's fixed
                m = measure(cmd)
                summary = summary_of(m.stderr)
                if m.exit_code != 0 or summary.get("ok") != args.n:
                    raise SystemExit(f"run failed ({m.exit_code}): {m.stderr[-2000:]}")
                r = m.figures(summary["done"], summary["bytes"])
                runs[per_host].append(r)
                print(json.dumps({"event": "run", "run": k, "per_host": per_host, **r}), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    for per_host, rs in runs.items():
        print(json.dumps({"event": "result", "per_host": per_host, "n": args.n, "runs": args.runs,
                          **{k: statistics.median(r[k] for r in rs) for k in FIGURES}}), flush=True)


if __name__ == "__main__":
    main()
