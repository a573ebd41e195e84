"""Localized narratives (issue 23) at train scale: `select --with-narrative` (and with
`--narrative-contains`) over a generated captions file of --lines lines (675k: the
train images with a narrative), and `db load` of it into SQLite. Rows/s and the peak
RSS of each command, run as a child process and sampled from outside. Prints one JSON
line per measurement. The data are generated in a temporary folder (never committed):
captions-only JSON lines in the documented layout, ~200 characters a caption, 1.3
narratives an image; an image list of the same images plus as many without one.

    python benchmarks/narratives.py [--lines 675000] [--pg postgresql://user@host:port/db]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["in", "this", "image", "we", "can", "see", "a", "person", "dog", "car", "tree", "building", "sky", "grass", "road", "table", "chair", "window", "the", "and", "on", "of", "with", "there", "is", "are", "background", "foreground", "left", "right", "top", "bottom", "holding", "standing"]
V3_HEADER = ("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
             "OriginalMD5,Thumbnail300KURL")


def generate(folder: Path, lines: int, seed: int = 7) -> tuple[Path, Path]:
    rnd = random.Random(seed)
    n_images = int(lines / 1.3)
    ids = sorted(f"{rnd.getrandbits(64):016x}" for _ in range(2 * n_images))
    narrated = ids[::2]
    captions, images = folder / "open_images_train_v6_captions.jsonl", folder / "images.csv"
    with open(captions, "w", encoding="utf-8") as f:
        for k in range(lines):
            image_id = narrated[k % n_images]
            caption = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 50))).capitalize() + "."
            f.write(json.dumps({"dataset_id": "open_images_train_v6", "image_id": image_id,
                                "annotator_id": rnd.randint(1, 200), "caption": caption}) + "\n")
    with open(images, "w", encoding="utf-8") as f:
        f.write(V3_HEADER + "\n")
        for image_id in ids:
            f.write(f"{image_id},train,https://farm1.staticflickr.com/1/{image_id}_o.jpg,"
                    f"https://www.flickr.com/photos/x/1,https://creativecommons.org/licenses/by/2.0/,"
                    f"https://www.flickr.com/people/x/,A,T,1000,AAAAAAAAAAAAAAAAAAAAAA==,\n")
    return captions, images


def _hwm(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def measure(name: str, args: list[str], rows: int) -> dict[str, object]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm(proc.pid))
        time.sleep(0.02)
    seconds = time.monotonic() - started
    err = proc.stderr.read() if proc.stderr else ""  # small: a few lines of notes
    assert proc.returncode in (0, 4), err
    result = {"measure": name, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
              "peak_rss_mb": round(peak / 2**20, 1), "said": err.strip().splitlines()[-1][:160] if err else ""}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=675_000)
    ap.add_argument("--pg", help="Also load into (and select from) this PostgreSQL database.")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oid-narratives-") as tmp:
        folder = Path(tmp)
        captions, images = generate(folder, a.lines)
        print(json.dumps({"generated": a.lines, "bytes": captions.stat().st_size}), flush=True)
        measure("select --with-narrative", ["select", str(images), "-o", str(folder / "a.csv"), "--annotations",
                                            str(captions), "--with-narrative"], a.lines)
        measure("select --narrative-contains dog --narrative-contains grass",
                ["select", str(images), "-o", str(folder / "b.csv"), "--annotations", str(captions),
                 "--narrative-contains", "dog", "--narrative-contains", "grass"], a.lines)
        db = folder / "oi.sqlite"
        measure("db load (SQLite)", ["db", "load", str(captions), "--db", str(db)], a.lines)
        measure("select --with-narrative --db (SQLite)", ["select", str(images), "-o", str(folder / "c.csv"),
                                                          "--db", str(db), "--with-narrative"], a.lines)
        if a.pg:
            measure("db load (PostgreSQL)", ["db", "load", str(captions), "--db", a.pg], a.lines)
            measure("select --with-narrative --db (PostgreSQL)", ["select", str(images), "-o", str(folder / "d.csv"),
                                                                  "--db", a.pg, "--with-narrative"], a.lines)


if __name__ == "__main__":
    main()
