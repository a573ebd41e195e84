"""`oidownload db load` speed and memory, into SQLite and a real PostgreSQL server.

Generates its data in a temporary folder (never committed):
  - a label file of --rows rows (10M by default), in the V3 machine-label layout;
  - the V3 validation split at its real size (41,620 images, 512,093 machine labels,
    551,390 human labels, 204,621 boxes), plus the real class descriptions and hierarchy;
  - a 1M-row label file for the side-by-side with the guide's way: psql's \\copy into a
    table without keys, then the same indexes built by hand.

Each load runs as a child process; its peak RSS is sampled from outside. Prints one
JSON line per measurement.

    python benchmarks/db_load.py [--rows 10000000] [--pg DSN]

Without --pg it starts a throwaway server with .ci/postgres-up.sh (default settings,
fsync on) and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DESCRIPTIONS = FIXTURES / "openimages-v3" / "class-descriptions.csv"
HIERARCHY = FIXTURES / "openimages-v4plus" / "bbox_labels_600_hierarchy.json"
VALIDATION = {"images": 41_620, "machine": 512_093, "human": 365_772 + 185_618, "boxes": 204_621}


def mids() -> list[str]:
    with open(DESCRIPTIONS, encoding="utf-8") as f:
        return [line.split(",", 1)[0] for line in f][:8000]


def image_ids(n: int, rnd: random.Random) -> list[str]:
    return [f"{v:016x}" for v in sorted(rnd.getrandbits(64) for _ in range(n))]


def write_labels(path: Path, n: int, *, seed: int, source: str = "machine") -> None:
    """n label rows, sorted by ImageID as the real files are, about 9 labels an image."""
    rnd = random.Random(seed)
    classes = mids()
    ids = image_ids(max(1, n // 9), rnd)
    sources = [source] if source == "machine" else ["verification", "crowdsource-verification"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        written = 0
        for i, image_id in enumerate(ids):
            k = n - written if i == len(ids) - 1 else min(n - written, rnd.randint(5, 13))
            lines = [f"{image_id},{rnd.choice(sources)},{rnd.choice(classes)},{rnd.choice(('0.5', '0.7', '0.9', '1.0', '0', '1'))}\n"
                     for _ in range(k)]
            f.writelines(lines)
            written += k
            if written >= n:
                break


def write_validation(folder: Path, seed: int = 7) -> list[Path]:
    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = image_ids(VALIDATION["images"], rnd)
    images = folder / "images.csv"
    with open(images, "w", encoding="utf-8") as f:
        f.write("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,"
                "OriginalSize,OriginalMD5,Thumbnail300KURL\n")
        for i, image_id in enumerate(ids):
            f.write(f"{image_id},validation,https://c{i % 8 + 1}.staticflickr.com/6/{i}/{i}_abc_o.jpg,"
                    f"https://www.flickr.com/photos/someone/{i},https://creativecommons.org/licenses/by/2.0/,"
                    f'https://www.flickr.com/people/someone/,"Some Author","A title, with a comma {i}",'
                    f"{rnd.randint(50_000, 9_000_000)},XKWUMkcNib71Ge6Yq1/0/g==,"
                    f"https://c{i % 8 + 1}.staticflickr.com/6/{i}/{i}_def_z.jpg\n")
    machine, human = folder / "annotations-machine.csv", folder / "annotations-human.csv"
    write_labels(machine, VALIDATION["machine"], seed=seed + 1)
    write_labels(human, VALIDATION["human"], seed=seed + 2, source="human")
    boxes = folder / "annotations-human-bbox.csv"
    box_classes = (FIXTURES / "openimages-v3" / "classes-bbox.txt").read_text(encoding="utf-8").split()
    with open(boxes, "w", encoding="utf-8") as f:
        f.write("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
                "IsDepiction,IsInside\n")
        for n in range(VALIDATION["boxes"]):
            x0, y0 = rnd.random() * 0.5, rnd.random() * 0.5
            f.write(f"{ids[n * len(ids) // VALIDATION['boxes']]},freeform,{rnd.choice(box_classes)},1,"
                    f"{x0:.6f},{x0 + 0.4:.6f},{y0:.6f},{y0 + 0.4:.6f},"
                    f"{rnd.randint(0, 1)},{rnd.randint(0, 1)},0,0,0\n")
    return [images, machine, human, boxes]


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float | str]:
    """Wall time and peak RSS of the process tree of one command, sampled every 20 ms."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak / 2**20, 1),
            "stdout": out, "stderr": err}


def file_rate(stderr: str, name: str, what: str = "rows/s") -> float:
    """A rate the loader reported for one file (its own transaction, indexes excluded):
    rows/s of wall time, or rows "a CPU second" of the loader process."""
    for line in stderr.splitlines():
        if name in line and what in line:
            m = re.search(rf"([0-9,]+) {re.escape(what)}", line)
            if m:
                return float(m.group(1).replace(",", ""))
    return 0.0


def oidownload(*args: object) -> list[str]:
    return [sys.executable, "-m", "oidownload", *map(str, args)]


def fresh_pg(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--pg", help="A PostgreSQL server DSN (default: start a throwaway one)")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oid-dbbench-"))
    state = work / "pg-state"
    server = args.pg
    if server is None:
        res = subprocess.run(["bash", str(ROOT / ".ci" / "postgres-up.sh"), str(state), "durable"],
                             capture_output=True, text=True, check=True)
        server = res.stdout.strip()
    try:
        big = work / "labels-10m.csv"
        t = time.perf_counter()
        write_labels(big, args.rows, seed=1)
        one_m = work / "labels-1m.csv"
        write_labels(one_m, 1_000_000, seed=3)
        val = write_validation(work / "validation")
        print(f"generated data in {time.perf_counter() - t:.0f} s under {work}", file=sys.stderr)

        # 1. The big label file, into SQLite and PostgreSQL.
        for backend in ("sqlite", "postgresql"):
            url = str(work / "big.sqlite") if backend == "sqlite" else fresh_pg(server, "bench_big")
            r = run_measured(oidownload("db", "load", big, "--db", url))
            emit(scenario=f"labels {args.rows} rows", backend=backend, seconds=r["seconds"], loader_cpu_s=r["cpu_s"],
                 load_rows_per_s=file_rate(str(r["stderr"]), big.name),
                 load_rows_per_cpu_s=file_rate(str(r["stderr"]), big.name, "a CPU second"),
                 load_avg_1m=round(os.getloadavg()[0], 2),
                 rows_per_s_with_indexes=round(args.rows / float(r["seconds"])), peak_rss_mb=r["peak_rss_mb"])

        # 2. The whole V3 validation split (with the classes and the hierarchy).
        for backend in ("sqlite", "postgresql"):
            url = str(work / "val.sqlite") if backend == "sqlite" else fresh_pg(server, "bench_val")
            r = run_measured(oidownload("db", "load", DESCRIPTIONS, HIERARCHY, *val, "--db", url))
            emit(scenario="V3 validation split", backend=backend, seconds=r["seconds"], loader_cpu_s=r["cpu_s"],
                 rows=sum(VALIDATION.values()) + 19_995, peak_rss_mb=r["peak_rss_mb"])

        # 3. Side by side on one server: db load of 1M label rows vs psql's \copy + the same indexes.
        url = fresh_pg(server, "bench_ours")
        ours = run_measured(oidownload("db", "load", one_m, "--db", url))
        guide = fresh_pg(server, "bench_guide")
        script = work / "guide.sql"
        script.write_text(
            "CREATE TABLE labels (image_id text, source text, mid text, confidence double precision);\n"
            f"\\copy labels FROM '{one_m}' WITH (FORMAT csv, HEADER true)\n"
            "CREATE INDEX labels_mid ON labels (mid, image_id);\n"
            "CREATE INDEX labels_image_id ON labels (image_id);\n"
            "ANALYZE labels;\n"
        )
        psql = shutil.which("psql") or "psql"
        theirs = run_measured([psql, "-q", "-v", "ON_ERROR_STOP=1", "-d", guide, "-f", str(script)])
        emit(scenario="1M label rows, keys and indexes included", oidownload_db_load_s=ours["seconds"],
             psql_copy_and_indexes_s=theirs["seconds"],
             ratio=round(float(ours["seconds"]) / float(theirs["seconds"]), 2), load_avg_1m=round(os.getloadavg()[0], 2))
    finally:
        if args.pg is None:
            subprocess.run(["bash", str(ROOT / ".ci" / "postgres-up.sh"), str(state), "stop"], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
