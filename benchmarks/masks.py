"""--masks (issue 22) against the local origin: the masks of N images read by Range from
one mask zip of 100,000+ members, served with 50 ms latency (images and zip alike).

Each round downloads the same N images twice into fresh outputs, without and with
--masks, and reports the images/s of both (the run's own summary: wall time of the
engine, not of the selection), the zip requests and bytes at the server (against the
bound: the central directory + Σ member sizes + 16 KB per member), and the peak RSS.
Then the central directory of a 175,000-member zip is read, with tracemalloc's peak.

    python benchmarks/masks.py --n 10000 --members 100000 --rounds 2 [--mix thumbnails]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

from oidownload.bench import measure
from oidownload.sources import zipranges as zr
from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread

LABEL = "/m/0k4j"
ZIP = "train-masks/train-masks-0.zip"


def mask_templates(k: int) -> list[bytes]:
    """k binary masks shaped like real ones (an ellipse, 1-bit PNG, a few hundred bytes)."""
    rng = random.Random(7)
    out = []
    for _ in range(k):
        w, h = rng.choice([(512, 384), (640, 480), (384, 512), (1024, 768)])
        im = Image.new("1", (w, h), 0)
        x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
        ImageDraw.Draw(im).ellipse((x0, y0, x0 + rng.randrange(20, w // 2), y0 + rng.randrange(20, h // 2)), fill=1)
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        out.append(buf.getvalue())
    return out


def build(root: Path, n: int, members: int, mix: str = "tiny") -> tuple[Corpus, bytes, Path, list[str]]:
    """The corpus (N images whose ids start with 0), the zip (their masks among
    `members`, shuffled as the real zips are by name), and the segmentation CSV."""
    rng = random.Random(1)
    ids = sorted({f"0{rng.getrandbits(60):015x}" for _ in range(n * 2)})[:n]
    corpus = Corpus.generate(0, mix=mix, ids=ids)
    templates = mask_templates(64)
    names = {f"{i}_m0k4j_{k:08x}.png" for k, i in enumerate(ids)}
    while len(names) < members:
        names.add(f"0{rng.getrandbits(60):015x}_m0k4j_{rng.getrandbits(32):08x}.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # the real mask zips store their PNGs
        for j, name in enumerate(sorted(names)):
            zf.writestr(zipfile.ZipInfo(name, (2019, 1, 1, 0, 0, 0)), templates[j % len(templates)])
    seg = root / "train-annotations-object-segmentation.csv"
    with open(seg, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
                    "PredictedIoU", "Clicks"])
        for k, i in enumerate(ids):
            w.writerow([f"{i}_m0k4j_{k:08x}.png", i, LABEL, f"{k:08x}", 0.1, 0.6, 0.2, 0.7, "0.8", ""])
    return corpus, buf.getvalue(), seg, [f"{i}_m0k4j_{k:08x}.png" for k, i in enumerate(ids)]


def bound(data: bytes, wanted: list[str]) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        eocd = data.rindex(b"PK\x05\x06")
        cd = len(data) - int.from_bytes(data[eocd + 16 : eocd + 20], "little")
        return cd + sum(zf.getinfo(n).compress_size + 30 + len(n) for n in wanted) + 16 * 1024 * len(wanted)


def summary(stderr: str) -> dict[str, object]:
    for line in stderr.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "summary":
            return obj  # type: ignore[no-any-return]
    raise SystemExit(f"no summary in the run's stderr:\n{stderr[-2000:]}")


def directory_memory(members: int) -> dict[str, float]:
    """tracemalloc's peak while reading the directory of a `members`-member zip from disk."""
    with tempfile.TemporaryDirectory(prefix="oidl-zipdir-") as tmp:
        path = Path(tmp) / "big.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for k in range(members):
                zf.writestr(zipfile.ZipInfo(f"{k:016x}_m0k4j_{k:08x}.png", (2019, 1, 1, 0, 0, 0)), b"x")
        t0 = time.perf_counter()
        d = asyncio.run(zr.read_directory(zr.FileRangeReader(path)))
        seconds = time.perf_counter() - t0  # timed apart: tracemalloc slows the parse 20-fold
        tracemalloc.start()
        d = asyncio.run(zr.read_directory(zr.FileRangeReader(path)))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"members": len(d), "cd_mb": round(d.cd_size / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
                "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--directory-members", type=int, default=175_000)
    ap.add_argument("--mix", default="tiny", help="the images' synthetic mix (oidownload.testing.synth.MIXES)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oidl-masks-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        corpus, data, seg, wanted = build(root, args.n, args.members, args.mix)
        print(json.dumps({"built_s": round(time.perf_counter() - t0, 1), "zip_mb": round(len(data) / 2**20, 1),
                          "members": args.members, "n": args.n, "mix": args.mix}), flush=True)
        origin = Origin(corpus, latency=Latency(args.latency), extra_files={ZIP: data})
        origin.files_latency = True
        with OriginThread(origin) as o:
            images = corpus.write_manifest(root / "images.csv", o.base_url)
            ratios = []
            for r in range(args.rounds):
                rates = {}
                for masks in (False, True):
                    out = root / f"out-{r}-{int(masks)}"
                    o.bytes_sent.clear()
                    o.ranges_sent.clear()
                    cmd = [sys.executable, "-m", "oidownload", "download", str(images), "-o", str(out),
                           "--annotations", str(seg), "--class", LABEL, "--resize", "256", "--log-format", "json",
                           "--progress", "log"]
                    if masks:
                        # The zips on another host name, as in reality (Flickr and Google Cloud Storage).
                        cmd += ["--masks", "--masks-url", f"{o.base_url.replace('127.0.0.1', 'localhost')}/files"]
                    m = measure(cmd)
                    if m.exit_code != 0:
                        raise SystemExit(m.stderr[-3000:])
                    s = summary(m.stderr)
                    rate = float(s["done"]) / float(s["wall_s"])  # type: ignore[arg-type]
                    rates[masks] = rate
                    row: dict[str, object] = {"round": r, "masks": masks, "images": s["done"],
                                              "images_per_s": round(rate, 1), "engine_wall_s": s["wall_s"],
                                              "command_wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1),
                                              "main_cpu_s": s.get("main_cpu_s"),
                                              "peak_rss_mb": round(m.peak_rss_mb, 1),
                                              "peak_tree_rss_mb": round(m.peak_tree_rss_mb, 1)}
                    if masks:
                        sent = o.bytes_sent[f"/files/{ZIP}"]
                        row.update(zip_requests=len(o.ranges_sent[f"/files/{ZIP}"]), zip_mb=round(sent / 2**20, 2),
                                   bound_mb=round(bound(data, wanted) / 2**20, 2),
                                   of_zip=f"{100 * sent / len(data):.1f}%", masks_summary=s.get("masks"))
                    print(json.dumps(row), flush=True)
                ratios.append(rates[True] / rates[False])
            print(json.dumps({"images_per_s_ratio_with_masks": [round(x, 3) for x in ratios]}), flush=True)
    print(json.dumps({"directory": directory_memory(args.directory_members)}), flush=True)


if __name__ == "__main__":
    main()
