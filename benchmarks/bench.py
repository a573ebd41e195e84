"""oidownload against the local origin, optionally side by side with img2dataset.

Starts the package's origin on 127.0.0.1 (latency: a median with lognormal jitter;
an image mix; optional faults), runs `oidownload download` on N images, and prints
one JSON line per run: images/s, MB/s, CPU seconds per image (user+sys of the whole
process tree, pool workers included), the peak RSS of the largest process and the
peak summed RSS of the tree. With --compare img2dataset it installs img2dataset 1.47
in its own virtualenv and runs it on the same manifest with the same settings, in
the same session, alternating runs, and prints the ratios of the medians.

It also measures this machine's CPU ceiling for the per-image work (md5 + draft
decode + resize + encode, both cores busy) and states each run's efficiency as
achieved / ceiling. Examples:

    python benchmarks/bench.py --mix light --n 2000 --latency-ms 50 --runs 3 --compare img2dataset
    python benchmarks/bench.py --mix thumbnails --n 2000 --runs 3
    python benchmarks/bench.py --mix openimages --n 2000 --latency-ms 50 --faults "404=0.01,503x2=0.01"
    python benchmarks/bench.py --mix light --n 1000 --outputs files,webdataset,s3-files,s3-webdataset

--outputs alternates output kinds run by run (s3-* upload to a SeaweedFS started on
127.0.0.1 for the benchmark) and gives each one's medians and its ratio to the first.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import PIL
from PIL import Image

from oidownload.bench import measure, summary_of, tree_cpu_s
from oidownload.engine import process as worker
from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread, parse_fault_rates
from oidownload.testing.synth import cache_dir, describe

I2D_VERSION = "1.47.0"


# -- the CPU ceiling ----------------------------------------------------------------------

STAGES = ("md5", "decode", "resize", "encode")


def _work(data: bytes, size: int, quality: int) -> tuple[float, float, float, float]:
    """The per-image work, timed by stage (CPU seconds)."""
    t0 = time.process_time()
    hashlib.md5(data).digest()
    t1 = time.process_time()
    im: Image.Image = Image.open(io.BytesIO(data))
    w, h = im.size
    target = None
    if max(w, h) > size:
        s = size / max(w, h)
        target = (max(1, round(w * s)), max(1, round(h * s)))
        im.draft("RGB", target)
    im.load()
    t2 = time.process_time()
    if target is not None:
        im = im.resize(target, worker.RESAMPLE)
    t3 = time.process_time()
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return t1 - t0, t2 - t1, t3 - t2, time.process_time() - t3


def _time_templates(templates: list[bytes], size: int, quality: int, reps: int) -> list[list[float]]:
    per = []
    for data in templates:
        total = [0.0] * len(STAGES)
        for _ in range(reps):
            total = [a + b for a, b in zip(total, _work(data, size, quality), strict=True)]
        per.append([t / reps for t in total])
    return per


def ceiling(corpus: Corpus, size: int, quality: int, reps: int = 3) -> dict[str, Any]:
    """Per-image CPU of the chosen work with both cores busy (two processes timing the
    same templates at once), weighted by how often the corpus uses each template, with
    what each stage of it costs."""
    with ProcessPoolExecutor(2) as ex:
        a, b = ex.submit(_time_templates, corpus.originals, size, quality, reps), ex.submit(
            _time_templates, corpus.originals, size, quality, reps
        )
        times = [[(x + y) / 2 for x, y in zip(ta, tb, strict=True)] for ta, tb in zip(a.result(), b.result(), strict=True)]
    uses = [0] * len(corpus.originals)
    for e in corpus.entries.values():
        uses[e.original] += 1
    stages = [sum(t[i] * n for t, n in zip(times, uses, strict=True)) / sum(uses) for i in range(len(STAGES))]
    per_image = sum(stages)
    return {"cpu_ms_per_image": round(per_image * 1000, 2), "images_per_s_2core": round(2 / per_image, 2),
            "stages_ms": {name: round(t * 1000, 2) for name, t in zip(STAGES, stages, strict=True)}}


# -- img2dataset ----------------------------------------------------------------------------

def i2d_venv() -> Path:
    venv = cache_dir().parent / f"img2dataset-{I2D_VERSION}"
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset {I2D_VERSION} into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"img2dataset=={I2D_VERSION}"], check=True)
    return exe


def i2d_manifest(corpus: Corpus, base_url: str, path: Path) -> Path:
    import base64

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "md5"])
        for image_id in corpus.ids:
            row = corpus.manifest_row(image_id, base_url)
            w.writerow([row[2], base64.b64decode(row[9]).hex()])  # img2dataset compares hex
    return path


def i2d_cmd(exe: Path, manifest: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        str(exe), "--url_list", str(manifest), "--input_format", "csv", "--url_col", "url",
        "--output_format", "files", "--output_folder", str(out),
        "--processes_count", str(args.processes), "--thread_count", str(args.concurrency or 64),
        "--image_size", str(args.resize), "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True",
        "--encode_format", "jpg", "--encode_quality", str(args.quality),
        # Four equal shards, so both processes get the same work.
        "--number_sample_per_shard", str(max(1, args.n // 4)),
        "--compute_hash", "md5", "--verify_hash", '["md5","md5"]',
        "--timeout", "30", "--retries", "0", "--enable_wandb", "False", "--distributor", "multiprocessing",
    ]


def i2d_ok(out: Path) -> int:
    ok = 0
    for stats in out.glob("*_stats.json"):
        ok += int(json.loads(stats.read_text()).get("successes", 0))
    return ok


# -- runs -------------------------------------------------------------------------------------

def run_ours(manifest: Path, out: Path | str, args: argparse.Namespace, extra: list[str] | None = None,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out), "--processes", str(args.processes),
           "--per-host", str(args.per_host), "--progress", "none", "--log-format", "json", "--source", args.source]
    if args.concurrency is not None:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.format == "keep":
        cmd += ["--format", "keep"]
    else:
        cmd += ["--resize", str(args.resize), "--quality", str(args.quality)]
    m = measure(cmd + (extra or []), env={**os.environ, **(env or {})})
    summary = summary_of(m.stderr)
    if m.exit_code != 0 or not summary:
        raise SystemExit(f"oidownload failed ({m.exit_code}):\n{m.stderr[-3000:]}")
    main_ms = 1000 * float(summary.get("main_cpu_s", 0.0)) / max(1, summary["done"])
    return {"tool": "oidownload", "ok": summary["ok"], **m.figures(summary["done"], summary["bytes"]),
            "main_cpu_ms_per_image": round(main_ms, 2)}


def run_i2d(exe: Path, manifest: Path, out: Path, args: argparse.Namespace, fetched: int) -> dict[str, Any]:
    m = measure(i2d_cmd(exe, manifest, out, args), env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if m.exit_code != 0:
        raise SystemExit(f"img2dataset failed ({m.exit_code}):\n{m.stderr[-3000:]}")
    return {"tool": "img2dataset", "ok": i2d_ok(out), **m.figures(args.n, fetched)}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--mix", choices=["light", "openimages", "thumbnails", "tiny"], default="light")
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--jitter", type=float, default=0.3, help="lognormal sigma of the latency")
    ap.add_argument("--faults", default="", help="e.g. '404=0.01,503x2=0.01'")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", choices=["img2dataset"])
    ap.add_argument("--resize", type=int, default=640)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=None, help="[default: oidownload's own]")
    ap.add_argument("--per-host", default="auto",
                    help="auto or N [default: auto, oidownload's own]; the origin is one host")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--outputs", default="files",
                    help="comma list of files, webdataset, s3-files, s3-webdataset, alternated run by run")
    args = ap.parse_args()
    thumbs = args.mix == "thumbnails"
    args.source = "thumbnail" if thumbs else "original"
    args.format = "keep" if thumbs else "jpeg"
    mix = "light" if thumbs else args.mix
    corpus = Corpus.generate(args.n, mix=mix, fault_rates=parse_fault_rates(args.faults))
    sizes = [len(corpus.thumbnail(i) if thumbs else corpus.original(i)) for i in corpus.ids]
    header = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "pillow": PIL.__version__, "mix": args.mix, "n": args.n, "latency_ms": args.latency_ms, "jitter": args.jitter,
        "faults": args.faults, "sizes": describe(sizes), "mean_bytes": round(sum(sizes) / len(sizes)),
    }
    if not thumbs and not args.no_ceiling:
        header["ceiling"] = ceiling(corpus, args.resize, args.quality)
    print(json.dumps({"event": "setup", **header}), flush=True)
    exe = i2d_venv() if args.compare else None
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    per_output: dict[str, list[dict[str, Any]]] = {o: [] for o in outputs}
    theirs: list[dict[str, Any]] = []
    latency = Latency(args.latency_ms / 1000, args.jitter)
    with tempfile.TemporaryDirectory(prefix="oidl-bench-") as tmp, OriginThread(Origin(corpus, latency)) as origin:
        server = _s3(Path(tmp)) if any(o.startswith("s3-") for o in outputs) else None
        try:
            manifest = corpus.write_manifest(Path(tmp) / "images.csv", origin.base_url)
            i2d_list = i2d_manifest(corpus, origin.base_url, Path(tmp) / "i2d.csv") if exe else None
            for k in range(args.runs):
                for output in outputs:
                    out, extra, env = _output(output, Path(tmp), k, server)
                    before = tree_cpu_s(server.proc.pid) if server is not None and server.proc else 0.0
                    r = run_ours(manifest, out, args, extra, env)
                    if output.startswith("s3-") and server is not None and server.proc:
                        # The object store shares the 2 cores here; a real one would not.
                        r["server_cpu_ms_per_image"] = round(1000 * (tree_cpu_s(server.proc.pid) - before) / args.n, 2)
                    if "ceiling" in header:
                        r["efficiency"] = round(r["images_per_s"] / header["ceiling"]["images_per_s_2core"], 3)
                    per_output[output].append(r)
                    print(json.dumps({"event": "run", "run": k, "output": output, **r}), flush=True)
                if exe and i2d_list:
                    t = run_i2d(exe, i2d_list, Path(tmp) / f"i2d-{k}", args, sum(sizes))
                    theirs.append(t)
                    print(json.dumps({"event": "run", "run": k, **t}), flush=True)
        finally:
            if server is not None:
                server.stop()
    ours = per_output[outputs[0]]
    result: dict[str, Any] = {"event": "result", **header, "runs": args.runs}
    keys = ("images_per_s", "cpu_ms_per_image", "peak_rss_mb", "peak_tree_rss_mb", "mb_per_s")
    result["oidownload"] = {k: median_of(ours, k) for k in (*keys, "main_cpu_ms_per_image")}
    if "ceiling" in header:
        result["oidownload"]["efficiency"] = round(result["oidownload"]["images_per_s"] / header["ceiling"]["images_per_s_2core"], 3)
    if theirs:
        result["img2dataset"] = {k: median_of(theirs, k) for k in keys}
        result["ratio"] = {
            "images_per_s": round(result["oidownload"]["images_per_s"] / result["img2dataset"]["images_per_s"], 2),
            "cpu_per_image": round(result["oidownload"]["cpu_ms_per_image"] / result["img2dataset"]["cpu_ms_per_image"], 3),
        }
    if len(outputs) > 1:
        medians = {o: {k: median_of(rs, k) for k in (*keys, "server_cpu_ms_per_image") if all(k in r for r in rs)}
                   for o, rs in per_output.items()}
        result["outputs"] = {o: {**m, "images_per_s_ratio": round(m["images_per_s"] / medians[outputs[0]]["images_per_s"], 3)}
                             for o, m in medians.items()}
    print(json.dumps(result), flush=True)


def _s3(tmp: Path) -> Any:
    from oidownload.testing import s3server

    return s3server.start(tmp / "seaweedfs")


def _output(kind: str, tmp: Path, run: int, server: Any) -> tuple[str, list[str], dict[str, str]]:
    """(-o, extra arguments, environment) for one run of an output kind."""
    fmt = "webdataset" if kind.endswith("webdataset") else "files"
    extra = ["--output-format", fmt, "--state-dir", str(tmp / f"state-{kind}-{run}")]
    if kind.startswith("s3-"):
        server.make_bucket("bench")
        return f"s3://bench/{kind}-{run}", extra, server.env
    return str(tmp / f"{kind}-{run}"), extra, {}


if __name__ == "__main__":
    main()
