"""Upload throughput to each local object store, the way the sinks upload: closed
shards through `S3Blobs.put_file` (multipart, 4 parts at a time), and whole downloads
into `--output-format webdataset` and `files` on each store, alternated run by run.
The stores are the tests' servers on loopback: SeaweedFS for s3:// (and gs://, the
same S3 dialect) and Azurite for az://; so the figures are the servers' as much as
ours. Prints one JSON line per run and one with the medians. Example:

    python benchmarks/stores.py --shards 8 --shard-mb 64 --n 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import run_ours  # benchmarks/bench.py, next to this script

from oidownload.sinks.s3 import S3Blobs, parse_uri
from oidownload.testing import azurite, s3server
from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread


def upload(uri: str, env: dict[str, str], files: list[Path]) -> float:
    """MB/s of closed shards uploaded one after another, as TarSink publishes them."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        blobs = S3Blobs(parse_uri(uri))
        t0 = time.perf_counter()
        for i, path in enumerate(files):
            blobs.put_file(f"bench/{i:05d}.tar", path)
        seconds = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return sum(p.stat().st_size for p in files) / 1e6 / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=64)
    ap.add_argument("--n", type=int, default=1000, help="images per download run (0: none)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--per-host", type=int, default=64)
    args = ap.parse_args()
    args.source, args.format, args.resize, args.quality = "thumbnail", "keep", 640, 90
    print(json.dumps({"event": "setup", "date": time.strftime("%Y-%m-%d"), **vars(args)}), flush=True)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="oidl-stores-") as tmp:
        work = Path(tmp)
        s3 = s3server.start(work / "s3")
        az = azurite.start(work / "az")
        try:
            s3.make_bucket("bench")
            az.make_bucket("bench")
            stores = {"s3": ("s3://bench/run", s3.env), "az": ("az://bench/run", az.env)}
            files = []
            for i in range(args.shards):
                path = work / f"shard-{i}.tar"
                path.write_bytes(os.urandom(int(args.shard_mb * 1e6)))
                files.append(path)
            corpus = Corpus.generate(args.n, mix="light") if args.n else None
            with OriginThread(Origin(corpus or Corpus.generate(1), Latency(0.02))) as origin:
                manifest = corpus.write_manifest(work / "images.csv", origin.base_url) if corpus else None
                for k in range(args.runs):
                    for name, (uri, env) in stores.items():
                        mbs = upload(uri.replace("/run", f"/up{k}"), env, files)
                        results.setdefault(f"{name}-upload-MB/s", []).append(mbs)
                        print(json.dumps({"event": "upload", "store": name, "run": k, "MB_per_s": round(mbs, 1)}), flush=True)
                        if manifest is None:
                            continue
                        for fmt in ("webdataset", "files"):
                            env_run = env | {"XDG_STATE_HOME": str(work / f"xdg-{name}-{fmt}-{k}")}
                            r: dict[str, Any] = run_ours(manifest, uri.replace("/run", f"/{fmt}{k}"), args,
                                                         ["--output-format", fmt], env_run)
                            results.setdefault(f"{name}-{fmt}-images/s", []).append(r["images_per_s"])
                            print(json.dumps({"event": "run", "store": name, "format": fmt, "run": k, **r}), flush=True)
        finally:
            s3.stop()
            az.stop()
    print(json.dumps({"event": "result", **{k: round(statistics.median(v), 1) for k, v in results.items()}}), flush=True)


if __name__ == "__main__":
    main()
