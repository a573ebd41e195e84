"""Gallery build at scale: `oidownload gallery` on a synthetic download of N images.

Everything is generated into a temporary folder (never committed): N written images (JPEGs
fit to 640 px, as `--resize 640` writes them, made from 12 synthetic photos of several
shapes, 50-125 KB, mean 73 KB), a journal written by the real `Journal` (2% of the rows
failed, in three kinds), the images.csv the journal names (for attribution), a box CSV
(0-14 boxes an image, Zipf-like over the 600 boxable classes) and an image-label CSV
(about 8 labels an image). Then the real command runs as a child process and is measured
from outside: wall and CPU time, peak memory (largest process, whole tree), and page
weight: index.html, what the browser loads to show the first page, and the whole folder.
A second run measures the rebuild (thumbnails kept). With Chromium present, it also times
opening index.html until the first page is drawn, and switching to a class filter.

    python benchmarks/gallery.py [--n 1000 --n 50000] [--processes 2] [--processes 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from oidownload.bench import measure
from oidownload.core.records import Outcome, Source, Status
from oidownload.core.shard import Shard
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.state.journal import Journal
from oidownload.state.reader import default_state_dir
from oidownload.testing.synth import encode, photo

CLASSES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "openimages-v3" / "classes-bbox.txt"
DESCRIPTIONS = CLASSES.with_name("class-descriptions.csv")
SHAPES = [(640, 480), (640, 427), (480, 640), (640, 360), (640, 640), (427, 640)]
FAILURES = [(Status.HTTP_4XX, 0.012), (Status.UNAVAILABLE, 0.005), (Status.MD5_MISMATCH, 0.003)]


def make_download(root: Path, n: int, seed: int = 7) -> Path:
    """OUT with n written images, its journal, images.csv, boxes.csv and labels.csv."""
    rng = random.Random(seed)
    templates = [encode(photo(w, h, seed * 100 + k, 0.02 * k), 90) for k, (w, h) in enumerate(SHAPES * 2)]
    shapes = SHAPES * 2
    out = root / "out"
    ids = sorted(f"{rng.getrandbits(64):016x}" for _ in range(n))
    images_csv = root / "images.csv"
    journal = Journal(default_state_dir(str(out)), Shard(), str(out))
    batch: list[Outcome] = []
    with open(images_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(V3_COLUMNS)
        for line, image_id in enumerate(ids, 2):
            w.writerow([image_id, "train", f"https://farm1.staticflickr.com/1/{line}_o.jpg",
                        f"https://www.flickr.com/photos/someone/{line}", "https://creativecommons.org/licenses/by/2.0/",
                        "https://www.flickr.com/people/someone/", "Some Author", "A title of typical length for Flickr",
                        "123456", "AAAAAAAAAAAAAAAAAAAAAA==", ""])
            roll, failed = rng.random(), None
            for status, rate in FAILURES:
                if roll < rate:
                    failed = status
                    break
                roll -= rate
            if failed is not None:
                batch.append(Outcome(image_id, failed, attempts=1, subset="train", file=str(images_csv), line=line))
            else:
                k = rng.randrange(len(templates))
                location = f"train/{image_id[:3]}/{image_id}.jpg"
                path = out / location
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(templates[k])
                tw, th = shapes[k]
                batch.append(Outcome(image_id, Status.OK, nbytes=len(templates[k]), out_bytes=len(templates[k]),
                                     width=tw, height=th, attempts=1, subset="train", ext="jpg",
                                     source=Source.THUMBNAIL if rng.random() < 0.1 else Source.ORIGINAL,
                                     verified=True, file=str(images_csv), line=line, location=location))
            if len(batch) >= 10_000:
                journal.record(batch)
                batch = []
    journal.record(batch)
    journal.close()
    mids = CLASSES.read_text().split()
    weights = [1 / (r + 1) ** 0.9 for r in range(len(mids))]  # a few classes dominate, as in the dataset
    with open(root / "boxes.csv", "w", newline="") as fb, open(root / "labels.csv", "w", newline="") as fl:
        wb, wl = csv.writer(fb, lineterminator="\n"), csv.writer(fl, lineterminator="\n")
        wb.writerow(["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
                     "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"])
        wl.writerow(["ImageID", "Source", "LabelName", "Confidence"])
        for image_id in ids:
            for mid in rng.choices(mids, weights, k=min(14, int(rng.expovariate(1 / 5)))):
                x0, y0 = rng.random() * 0.8, rng.random() * 0.8
                x1, y1 = x0 + rng.random() * (1 - x0), y0 + rng.random() * (1 - y0)
                wb.writerow([image_id, "xclick", mid, "1", f"{x0:.6f}", f"{x1:.6f}", f"{y0:.6f}", f"{y1:.6f}",
                             *(int(rng.random() < p) for p in (0.4, 0.2, 0.05, 0.03, 0.01))])
            for mid in rng.sample(mids, 8):
                wl.writerow([image_id, rng.choice(("verification", "machine")), mid, rng.choice(("1", "0", "0.7"))])
    return out


def folder_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under path; a hard-linked file counts its full size."""
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += os.stat(os.path.join(dirpath, name)).st_size
            files += 1
    return total, files


def page_weight(gallery: Path) -> dict[str, Any]:
    index = (gallery / "index.html").stat().st_size
    first = index + sum((gallery / p).stat().st_size for p in
                        ("assets/gallery.css", "assets/gallery.js", "data/meta.js", "data/chunk-0.js"))
    chunk = json.loads((gallery / "data" / "chunk-0.js").read_text().split(",", 1)[1].rsplit(")", 1)[0])
    thumbs = sum((gallery / "images" / rec[0][:3] / f"{rec[0]}.t.jpg").stat().st_size for rec in chunk if rec[4])
    kinds = {"thumbs": ".t.jpg", "pages": ".html"}
    sizes = dict.fromkeys(["thumbs", "pages", "images"], 0)
    for dirpath, _, names in os.walk(gallery / "images"):
        for name in names:
            kind = next((k for k, suffix in kinds.items() if name.endswith(suffix)), "images")
            sizes[kind] += os.stat(os.path.join(dirpath, name)).st_size
    total, files = folder_bytes(gallery)
    return {
        "index_html_bytes": index,
        "first_page_bytes": first + thumbs,  # what opening index.html loads: page, style, script, data, thumbnails
        "first_page_thumbnails": len(chunk),
        "stats_html_bytes": (gallery / "stats.html").stat().st_size,
        "total_bytes": total, "files": files,
        "thumbs_bytes": sizes["thumbs"], "pages_bytes": sizes["pages"], "data_bytes": folder_bytes(gallery / "data")[0],
        "images_bytes_hard_linked": sizes["images"],
    }


def browser_times(gallery: Path) -> dict[str, Any]:
    """Opening index.html in headless Chromium until the first page is drawn; then a class filter."""
    chromium = os.environ.get("OIDOWNLOAD_CHROMIUM") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"browser": "playwright not installed"}
    if not chromium:
        return {"browser": "no chromium"}
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                               "--disable-background-networking", "--disable-sync",
                                                               "--disable-component-update"])
        page = b.new_page(viewport={"width": 1280, "height": 900})
        t0 = time.perf_counter()
        page.goto((gallery / "index.html").as_uri())
        page.wait_for_function("() => document.body.dataset.ready !== undefined")
        first = time.perf_counter() - t0
        tiles = page.locator("#grid .tile").count()
        option = page.locator("#class option").nth(1)
        t0 = time.perf_counter()
        page.select_option("#class", option.get_attribute("value"))
        page.wait_for_function("() => document.body.dataset.ready !== '1'")
        filtered = time.perf_counter() - t0
        b.close()
    return {"open_to_first_page_ms": round(first * 1000), "first_page_tiles": tiles,
            "class_filter_ms": round(filtered * 1000)}


def run(n: int, processes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oidl-gallery-") as d:
        root = Path(d)
        t0 = time.perf_counter()
        out = make_download(root, n)
        made = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "oidownload", "gallery", str(out), "--annotations", str(root / "boxes.csv"),
               "--annotations", str(root / "labels.csv"), "--class-descriptions", str(DESCRIPTIONS),
               "--processes", str(processes), "--progress", "log"]
        first = measure(cmd)
        if first.exit_code != 0:
            raise SystemExit(f"gallery failed: {first.stderr[-2000:]}")
        again = measure(cmd)
        written = sum(1 for _ in (out / "train").rglob("*.jpg"))
        result = {
            "images": written, "rows": n, "processes": processes, "generate_s": round(made, 1),
            "build_s": round(first.wall_s, 2), "cpu_s": round(first.cpu_s, 2),
            "images_per_s": round(written / first.wall_s, 1),
            "peak_rss_mb": round(first.peak_rss_mb, 1), "peak_tree_rss_mb": round(first.peak_tree_rss_mb, 1),
            "rebuild_s": round(again.wall_s, 2), "rebuild_peak_rss_mb": round(again.peak_rss_mb, 1),
            "progress_lines": sum(1 for line in first.stderr.splitlines() if " done, " in line),
            **page_weight(out / "gallery"), **browser_times(out / "gallery"),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="Rows in the synthetic download (repeatable).")
    ap.add_argument("--processes", type=int, action="append", help="Worker processes (repeatable).")
    args = ap.parse_args()
    for n in args.n or [1000, 50_000]:
        for p in args.processes or [os.cpu_count() or 1]:
            print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores", **run(n, p)}),
                  flush=True)


if __name__ == "__main__":
    main()
