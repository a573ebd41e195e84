"""The lock file and the Croissant card at scale, and the cost of hashing in the worker.

For each N: a temporary OUT (never committed) with a journal of N images written by the
real `Journal` (2% failed; every ok row with its SHA-256 and URL, as a download records
them) and the images.csv it names (for the card's licence, author and title). Then
`oidownload lock OUT` runs as a child process and is measured from outside: wall and CPU
time and peak memory, which must not grow with N. The image files themselves are not
written: neither the lock nor the card reads them (a `files` output).

Then the same with annotations (`--boxes`, default 2 a journaled image): a boxes CSV of
the journaled ids in ImageID order, as the Open Images files are, remembered as the
download's --annotations selection, so that the card joins them to the written images
and writes its boxes file. Its peak memory must not grow with N either.

Then the extra CPU the worker spends on SHA-256 per image: the median time to hash a
640 px JPEG as `--resize 640` writes it (target: at most 0.3 ms).

    python benchmarks/lock.py [--n 100000 --n 1000000] [--boxes 2]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from oidownload.bench import measure
from oidownload.core.records import Outcome, Source, Status
from oidownload.core.shard import Shard
from oidownload.dataset.annotations import ATTRIBUTES
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.state.journal import Journal
from oidownload.state.reader import default_state_dir
from oidownload.testing.synth import encode, photo

SHAPES = [(640, 480), (640, 427), (480, 640), (640, 360), (640, 640), (427, 640)]


def make_journal(root: Path, n: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    out = root / "out"
    images_csv = root / "images.csv"
    journal = Journal(default_state_dir(str(out)), Shard(), str(out))
    journal.set_meta("output", json.dumps({"out": str(out), "kind": "files"}))
    journal.register_inputs([images_csv])
    batch: list[Outcome] = []
    with open(images_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(V3_COLUMNS)
        for line, image_id in enumerate(sorted(f"{rng.getrandbits(64):016x}" for _ in range(n)), 2):
            url = f"https://farm1.staticflickr.com/1/{line}_o.jpg"
            w.writerow([image_id, "train", url, f"https://www.flickr.com/photos/someone/{line}",
                        "https://creativecommons.org/licenses/by/2.0/", "https://www.flickr.com/people/someone/",
                        "Some Author", "A title of typical length for Flickr", "123456", "AAAAAAAAAAAAAAAAAAAAAA==", ""])
            if rng.random() < 0.02:
                batch.append(Outcome(image_id, Status.HTTP_4XX, "404", attempts=1, subset="train", file=str(images_csv),
                                     line=line, url=url))
            else:
                w_, h_ = SHAPES[rng.randrange(len(SHAPES))]
                batch.append(Outcome(image_id, Status.OK, nbytes=150_000, out_bytes=73_000, width=w_, height=h_,
                                     attempts=1, subset="train", ext="jpg", source=Source.ORIGINAL, verified=True,
                                     file=str(images_csv), line=line, location=f"train/{image_id[:3]}/{image_id}.jpg",
                                     url=url, sha256=hashlib.sha256(image_id.encode()).hexdigest()))
            if len(batch) >= 20_000:
                journal.record(batch)
                batch = []
    journal.record(batch)
    journal.close()
    (out / "train").mkdir(parents=True, exist_ok=True)
    return out


def add_boxes(root: Path, out: Path, per_image: int, seed: int = 7) -> Path:
    """A boxes CSV of every journaled id (written or not), remembered as the download's
    --annotations; returns it."""
    boxes = root / "boxes.csv"
    labels = ("/m/01g317", "/m/0k4j", "/m/0199g", "/m/01bjv")
    rng = random.Random(seed)
    with open(root / "images.csv", newline="", encoding="utf-8") as src, \
            open(boxes, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", *ATTRIBUTES])
        for row in itertools.islice(csv.reader(src), 1, None):
            for k in range(per_image):
                x, y = rng.random() * 0.5, rng.random() * 0.5
                w.writerow([row[0], "xclick", labels[k % len(labels)], "1", f"{x:.6f}", f"{x + 0.4:.6f}", f"{y:.6f}",
                            f"{y + 0.4:.6f}", "0", "0", "0", "0", "0"])
    journal = Journal(default_state_dir(str(out)), Shard(), str(out))
    journal.set_meta("selection", json.dumps({"annotations": [str(boxes)], "classes": [], "class_descriptions": None,
                                              "db": None}))
    journal.close()
    return boxes


def _lock_run(out: Path) -> dict[str, Any]:
    m = measure([sys.executable, "-m", "oidownload", "lock", str(out)])
    if m.exit_code != 0:
        raise SystemExit(f"oidownload lock failed: {m.stderr[-2000:]}")
    return {"lock_wall_s": round(m.wall_s, 2), "lock_cpu_s": round(m.cpu_s, 2), "peak_rss_mb": round(m.peak_rss_mb, 1)}


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return sum(1 for _ in f)


def hash_cost(rounds: int = 2000) -> dict[str, float]:
    """Median ms to SHA-256 one written image (640 px JPEGs at quality 90)."""
    images = [encode(photo(w, h, k, 0.02 * k), 90) for k, (w, h) in enumerate(SHAPES)]
    times = []
    for i in range(rounds):
        data = images[i % len(images)]
        t0 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(statistics.median(times) * 1000, 4), "p99_ms": round(sorted(times)[int(rounds * 0.99)] * 1000, 4),
            "mean_kb": round(sum(map(len, images)) / len(images) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="journaled images (repeatable) [100000, 1000000]")
    ap.add_argument("--boxes", type=int, default=2, help="boxes a journaled image in the annotations case; 0: none [2]")
    args = ap.parse_args()
    results: dict[str, Any] = {"sha256_per_image": hash_cost()}
    for n in args.n or [100_000, 1_000_000]:
        with tempfile.TemporaryDirectory(prefix="oid-lock-bench-") as tmp:
            t0 = time.perf_counter()
            out = make_journal(Path(tmp), n)
            made = time.perf_counter() - t0
            found: dict[str, Any] = {"journal_made_s": round(made, 1), **_lock_run(out)}
            lock = out / "oidownload.lock.jsonl.gz"
            found.update(lock_mb=round(lock.stat().st_size / 2**20, 1),
                         card_images_mb=round((out / "oidownload.images.jsonl.gz").stat().st_size / 2**20, 1))
            if args.boxes:
                boxes = add_boxes(Path(tmp), out, args.boxes)
                found["with_boxes"] = {**_lock_run(out), "boxes_csv_mb": round(boxes.stat().st_size / 2**20, 1),
                                       "card_boxes_mb": round((out / "oidownload.boxes.jsonl.gz").stat().st_size / 2**20, 1),
                                       "card_boxes_lines": _count_lines(out / "oidownload.boxes.jsonl.gz")}
            results[str(n)] = found
            print(json.dumps({n: found}), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
