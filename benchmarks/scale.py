"""Scale: a 9M-row images CSV streams in constant memory; a resumed run with 8M rows
already journaled reaches its first new download quickly and stays small; a class
selection over a 5M-row box file keeps only the selected ids in memory.

Everything is generated into a temporary folder (never committed); every request
goes to a local origin on 127.0.0.1 that answers any ImageID with the same small JPEG.

    python benchmarks/scale.py [--rows 9000000] [--done 8000000] [--boxes 5000000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web
from PIL import Image

from oidownload.bench import TreeSampler, measure
from oidownload.core.records import Outcome, Source, Status
from oidownload.core.shard import Shard
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.state.journal import Journal

BODY = io.BytesIO()
Image.new("RGB", (64, 48), (90, 120, 200)).save(BODY, "JPEG")
JPEG = BODY.getvalue()
MD5 = base64.b64encode(hashlib.md5(JPEG).digest()).decode()


class AnyImageOrigin:
    """Answers /o/<anything> with JPEG and remembers when the first request came."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        if self.first is None:
            self.first = time.monotonic()
        return web.Response(body=JPEG, content_type="image/jpeg")

    def start(self, port: int = 0) -> None:
        async def go() -> None:
            app = web.Application()
            app.router.add_get("/o/{name}", self.handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result()


def ids(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return sorted(f"{rng.getrandbits(64):016x}" for _ in range(n))  # real lists are sorted by id


def write_images(path: Path, image_ids: list[str], port: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(V3_COLUMNS)
        for i in image_ids:
            w.writerow([i, "train", f"http://127.0.0.1:{port}/o/{i}_o.jpg", f"https://www.flickr.com/photos/x/{i[:8]}",
                        "https://creativecommons.org/licenses/by/2.0/", "https://www.flickr.com/people/x/",
                        "Some Author", "A title, of typical length for Flickr", len(JPEG), MD5,
                        f"http://127.0.0.1:{port}/o/{i}_z.jpg"])


def rss_of_run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> dict[str, float]:
    m = measure(cmd)
    if m.exit_code not in ok:
        raise SystemExit(f"{cmd} failed: {m.stderr[-2000:]}")
    return {"wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1), "peak_rss_mb": round(m.peak_rss_mb, 1)}


def stream_test(tmp: Path, all_ids: list[str], port: int) -> dict[str, object]:
    """`select` parses and validates every row and keeps none (no row is in the subset
    asked for): its memory is the reader's."""
    out: dict[str, object] = {}
    for n in (len(all_ids) // 9, len(all_ids)):
        path = tmp / f"images-{n}.csv"
        write_images(path, all_ids[:n], port)
        out[f"stream_{n}_rows"] = {
            "bytes": path.stat().st_size,
            **rss_of_run([sys.executable, "-m", "oidownload", "select", str(path), "-o", str(tmp / "sel.csv"),
                          "--subset", "no-such-subset"], ok=(0, 4)),  # 4: nothing selected, as meant
        }
    return out


def resume_test(tmp: Path, all_ids: list[str], done: int, origin: AnyImageOrigin) -> dict[str, object]:
    path = tmp / f"images-{len(all_ids)}.csv"
    if not path.exists():
        write_images(path, all_ids, origin.port)
    out_dir = tmp / "out"
    shutil.rmtree(out_dir, ignore_errors=True)  # a kept folder's last run added rows
    t0 = time.monotonic()
    journal = Journal(out_dir / ".oidownload", Shard(), str(out_dir))
    batch: list[Outcome] = []
    for i in all_ids[:done]:
        batch.append(Outcome(i, Status.OK, nbytes=len(JPEG), out_bytes=len(JPEG), width=64, height=48, attempts=1,
                             subset="train", ext="jpg", source=Source.ORIGINAL, verified=True, file=str(path), line=0))
        if len(batch) == 200_000:
            journal.record(batch)
            batch = []
    journal.record(batch)
    journal.close()
    filled = time.monotonic() - t0
    cmd = [sys.executable, "-m", "oidownload", "download", str(path), "-o", str(out_dir), "--progress", "none",
           "--format", "keep"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid) as sampler:
        while origin.first is None and proc.poll() is None:
            time.sleep(0.05)
        first = (origin.first - start) if origin.first else None
        time.sleep(2)  # a little steady state
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    return {
        "resume": {
            "rows": len(all_ids), "journaled": done, "journal_fill_s": round(filled, 1),
            "journal_mb": round((out_dir / ".oidownload" / "journal-0-of-1.sqlite").stat().st_size / 1e6, 1),
            "first_new_request_s": None if first is None else round(first, 1),
            "peak_rss_mb": round(sampler.peak_single_kb / 1024, 1),
            "peak_tree_rss_mb": round(sampler.peak_tree_kb / 1024, 1),
            "exit_code": proc.returncode, "stderr_tail": err[-300:],
        }
    }


def boxes_test(tmp: Path, n: int, image_ids: list[str], port: int) -> dict[str, object]:
    rng = random.Random(3)
    labels = [f"/m/0{k:05x}" for k in range(600)]
    rare = labels[7]
    path = tmp / "boxes.csv"
    picked = set()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
                    "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"])
        for _ in range(n):
            i = image_ids[rng.randrange(len(image_ids))]
            label = rare if rng.random() < 0.002 else labels[rng.randrange(600)]
            if label == rare:
                picked.add(i)
            w.writerow([i, "xclick", label, "1", "0.1", "0.5", "0.2", "0.6", "0", "1", "0", "0", "0"])
    images = tmp / "images-select.csv"
    write_images(images, image_ids, port)
    res = rss_of_run([sys.executable, "-m", "oidownload", "select", str(images), "-o", str(tmp / "picked.csv"),
                      "--class", rare, "--annotations", str(path)])
    with open(tmp / "picked.csv") as f:
        got = sum(1 for _ in f) - 1
    return {"boxes": {"rows": n, "bytes": path.stat().st_size, "selected_images": got, "expected": len(picked), **res}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=9_000_000)
    ap.add_argument("--done", type=int, default=8_000_000)
    ap.add_argument("--boxes", type=int, default=5_000_000)
    ap.add_argument("--box-images", type=int, default=1_600_000)
    ap.add_argument("--only", choices=["stream", "resume", "boxes"], action="append",
                    help="run only these measurements (repeatable); all three by default")
    ap.add_argument("--keep", type=Path, help="generate into (and reuse) this folder instead of a temporary one")
    args = ap.parse_args()
    only = set(args.only or ["stream", "resume", "boxes"])
    origin = AnyImageOrigin()
    # A kept folder's CSVs name the port of the run that wrote them: listen there again.
    port_file = args.keep / "port" if args.keep else None
    try:
        origin.start(int(port_file.read_text()) if port_file and port_file.exists() else 0)
    except OSError:
        origin = AnyImageOrigin()
        origin.start()
        for old in args.keep.glob("*.csv") if args.keep else ():
            old.unlink()
    if port_file:
        args.keep.mkdir(parents=True, exist_ok=True)
        port_file.write_text(str(origin.port))
    result: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory(prefix="oidl-scale-") as d:
        tmp = args.keep or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        all_ids = ids(args.rows)
        if "stream" in only:
            result.update(stream_test(tmp, all_ids, origin.port))
            print(json.dumps(result), flush=True)
        if "resume" in only:
            result.update(resume_test(tmp, all_ids, args.done, origin))
            print(json.dumps(result), flush=True)
        if "boxes" in only:
            result.update(boxes_test(tmp, args.boxes, all_ids[: args.box_images], origin.port))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
