"""`oidownload annotations --format attribution` with one distinct licence per image,
the case that was quadratic (the page re-read the whole CSV once per licence): N
written images, each under its own licence URL, timed from outside at each --n.

The download is generated into a temporary folder (never committed): a journal written
by the real `Journal` (every row ok, no image files: attribution reads only the journal
and the input list) and its images.csv. Time per image should stay flat as N grows.

    python benchmarks/attribution.py [--n 2000 --n 4000 ...] [--same-licence]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from oidownload.bench import measure
from oidownload.core.records import Outcome, Status
from oidownload.core.shard import Shard
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.state.journal import Journal
from oidownload.state.reader import default_state_dir


def make_download(root: Path, n: int, distinct: bool,
                  credit: Callable[[int], tuple[str, str, str]] | None = None) -> Path:
    """OUT with n ok rows in its journal, and the images.csv they came from; credit(k):
    the (Title, Author, License) of row k, when given."""
    out = root / "out"
    images_csv = root / "images.csv"
    journal = Journal(default_state_dir(str(out)), Shard(), str(out))
    batch: list[Outcome] = []
    with open(images_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(V3_COLUMNS)
        for line, k in enumerate(range(n), 2):
            image_id = f"{k * 2654435761 % (1 << 64):016x}"
            licence = f"https://example.org/licences/{k}/" if distinct else "https://creativecommons.org/licenses/by/2.0/"
            title, author = "A title of typical length for Flickr", "Some Author"
            if credit is not None:
                title, author, licence = credit(k)
            w.writerow([image_id, "train", f"https://farm1.staticflickr.com/1/{line}_o.jpg",
                        f"https://www.flickr.com/photos/someone/{line}", licence,
                        "https://www.flickr.com/people/someone/", author, title,
                        "123456", "AAAAAAAAAAAAAAAAAAAAAA==", ""])
            batch.append(Outcome(image_id, Status.OK, nbytes=1000, out_bytes=1000, width=640, height=480, attempts=1,
                                 subset="train", ext="jpg", file=str(images_csv), line=line,
                                 location=f"train/{image_id[:3]}/{image_id}.jpg"))
            if len(batch) >= 10_000:
                journal.record(batch)
                batch = []
    journal.record(batch)
    journal.close()
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="Images (repeatable) [default: 2000, 4000, 8000].")
    ap.add_argument("--same-licence", action="store_true", help="Every image under one licence (the usual case).")
    args = ap.parse_args()
    for n in args.n or [2000, 4000, 8000]:
        with tempfile.TemporaryDirectory(prefix="oid-attribution-bench-") as tmp:
            out = make_download(Path(tmp), n, not args.same_licence)
            m = measure([sys.executable, "-m", "oidownload", "annotations", str(out), "--format", "attribution"])
            if m.exit_code != 0:
                sys.exit(f"annotations exited {m.exit_code}: {m.stderr[-2000:]}")
            rows = (out / "annotations" / "ATTRIBUTION.csv").read_text(encoding="utf-8").count("\n") - 1
            print(json.dumps({"n": n, "licences": 1 if args.same_licence else n, "rows": rows,
                              "wall_s": round(m.wall_s, 2), "us_per_image": round(m.wall_s * 1e6 / n, 1),
                              "peak_tree_rss_mb": round(m.peak_tree_rss_mb, 1)}))


if __name__ == "__main__":
    main()
