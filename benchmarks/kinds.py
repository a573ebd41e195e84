"""Relationships and point labels (issue 23): `select` speed and memory over files at
scale, and `db load` of a point-label file.

Generates in a temporary folder (never committed), with a fixed seed:
  - a relationship file of --rel-rows rows (3.3M: the V6 train file), about 4.5 an image,
    with the real triplets' classes and predicates;
  - a point-label file of --point-rows rows (V7 train has 66M; 10M by default here),
    about 47 an image, as the V7 file has;
  - for each, an image list of its images (the INPUTS select reads).

Measures, each as a child process whose process tree's peak RSS is sampled from outside:
  - select --relationship 'Man plays Guitar' over the relationship file;
  - select --class Guitar (answer yes) over the point file;
  - db load of the point file into SQLite, and into PostgreSQL with --pg DSN.
Prints one JSON line per measurement.

    python benchmarks/kinds.py [--rel-rows 3300000] [--point-rows 10000000] [--pg DSN]
    python benchmarks/kinds.py --rel-rows 0 --point-rows 66000000 --no-db-load   # V7's size
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from db_load import DESCRIPTIONS, image_ids, run_measured

TRIPLES = [("/m/04yx4", "/m/0342h", "plays"), ("/m/03bt1vf", "/m/0342h", "plays"), ("/m/05r655", "/m/04bcr3", "at"),
           ("/m/0342h", "/m/04bcr3", "on"), ("/m/01mzpv", "/m/04bcr3", "under"), ("/m/04yx4", "/m/0jyfg", "wears"),
           ("/m/04bcr3", "/m/083vt", "is"), ("/m/04yx4", "/m/019nj4", "is"), ("/m/01y9k5", "/m/083vt", "is"),
           ("/m/03bt1vf", "/m/01mzpv", "on"), ("/m/04yx4", "/m/01mzpv", "on"), ("/m/02p5f1q", "/m/02vqfm", "contain")]
POINT_CLASSES = ["/m/0342h", "/m/04yx4", "/m/04bcr3", "/m/01mzpv", "/m/03bt1vf", "/m/0jyfg", "/m/01y9k5"]
V3_HEADER = ("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
             "OriginalMD5,Thumbnail300KURL\n")


def write_images(path: Path, ids: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(V3_HEADER)
        for i in ids:
            f.write(f"{i},train,https://c1.staticflickr.com/1/1/{i}_o.jpg,,,,,,1000,AAAAAAAAAAAAAAAAAAAAAA==,\n")


def write_relationships(path: Path, n: int, ids: list[str], rnd: random.Random) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageID,LabelName1,LabelName2,XMin1,XMax1,YMin1,YMax1,XMin2,XMax2,YMin2,YMax2,RelationshipLabel\n")
        for k in range(n):
            a, b, p = rnd.choice(TRIPLES)
            x, y = rnd.random() * 0.5, rnd.random() * 0.5
            f.write(f"{ids[k * len(ids) // n]},{a},{b},{x:.6f},{x + 0.4:.6f},{y:.6f},{y + 0.4:.6f},"
                    f"{y:.6f},{y + 0.3:.6f},{x:.6f},{x + 0.3:.6f},{p}\n")


def write_points(path: Path, n: int, ids: list[str], rnd: random.Random) -> None:
    answers = ("yes", "no", "unsure")
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageId,X,Y,Label,EstimatedYesNo,Source,YesVotes,NoVotes,UnsureVotes,TextLabel\n")
        for k in range(n):
            f.write(f"{ids[k * len(ids) // n]},{rnd.random():.5f},{rnd.random():.5f},{rnd.choice(POINT_CLASSES)},"
                    f"{rnd.choice(answers)},ih,{rnd.randint(0, 3)},{rnd.randint(0, 3)},0,\n")


def measure(name: str, rows: int, cmd: list[str]) -> None:
    m = run_measured(cmd)
    print(json.dumps({"measure": name, "rows": rows, "seconds": m["seconds"], "cpu_s": m["cpu_s"],
                      "rows_per_s": round(rows / float(m["seconds"])), "peak_tree_rss_mb": m["peak_rss_mb"]}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rel-rows", type=int, default=3_300_000)
    ap.add_argument("--point-rows", type=int, default=10_000_000)
    ap.add_argument("--pg", help="a PostgreSQL DSN for the db load (a fresh database is advised)")
    ap.add_argument("--no-db-load", action="store_true", help="only the selects (e.g. for a 66M-row point file)")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "oidownload"]
    rnd = random.Random(23)
    with tempfile.TemporaryDirectory(prefix="oid-kinds-") as tmp:
        t = Path(tmp)
        if args.rel_rows > 0:
            rel_ids = image_ids(max(1, args.rel_rows * 2 // 9), rnd)
            write_images(t / "rel-images.csv", rel_ids)
            write_relationships(t / "vrd.csv", args.rel_rows, rel_ids, rnd)
            measure("select --relationship", args.rel_rows,
                    [*cli, "select", str(t / "rel-images.csv"), "-o", str(t / "sel1.csv"), "--annotations",
                     str(t / "vrd.csv"), "--class-descriptions", str(DESCRIPTIONS), "--relationship",
                     "Man plays Guitar"])
        point_ids = image_ids(max(1, args.point_rows // 47), rnd)
        write_images(t / "point-images.csv", point_ids)
        write_points(t / "points.csv", args.point_rows, point_ids, rnd)
        measure("select --class (points)", args.point_rows,
                [*cli, "select", str(t / "point-images.csv"), "-o", str(t / "sel2.csv"), "--annotations",
                 str(t / "points.csv"), "--class-descriptions", str(DESCRIPTIONS), "--class", "Guitar"])
        if args.no_db_load:
            return
        measure("db load points sqlite", args.point_rows,
                [*cli, "db", "load", str(t / "points.csv"), "--db", str(t / "oi.sqlite")])
        if args.pg:
            measure("db load points postgresql", args.point_rows,
                    [*cli, "db", "load", str(t / "points.csv"), "--db", args.pg])


if __name__ == "__main__":
    main()
