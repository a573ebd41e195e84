"""Resize quality, measured: how much PSNR each resampling choice loses against the ideal.

For every template image of a mix:
  reference = full decode + LANCZOS resize to fit N (no encode)
  ideal     = reference encoded with the same JPEG settings, decoded
  ours      = what oidownload writes with the candidate resampling, decoded
  loss      = PSNR(ideal, reference) - PSNR(ours, reference)

Prints one JSON line per (mix, candidate): median and max loss in dB, and CPU ms per
image of the candidate's decode+resize. Usage:

    python benchmarks/quality.py --mix light --mix openimages [--size 640] [--quality 90]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import time

from PIL import Image, ImageChops, ImageStat

from oidownload.core.config import ImageConfig
from oidownload.core.records import Source
from oidownload.engine import process
from oidownload.engine.process import Job, WorkerSettings
from oidownload.testing import synth

CANDIDATES = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    stat = ImageStat.Stat(diff)
    mse = sum(stat.sum2) / (3 * a.width * a.height)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def fit(size: tuple[int, int], n: int) -> tuple[int, int]:
    w, h = size
    s = n / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def run(mix: str, size: int, quality: int, tmp: str) -> list[dict[str, object]]:
    from pathlib import Path

    templates = synth.templates(synth.MIXES[mix])
    refs, ideals = [], []
    for data in templates:
        full = decode(data).convert("RGB")
        ref = full.resize(fit(full.size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        ref.save(buf, "JPEG", quality=quality)
        refs.append(ref)
        ideals.append(psnr(decode(buf.getvalue()), ref))
    results = []
    for name, resample in CANDIDATES.items():
        process.RESAMPLE = resample  # the candidate, exactly as the worker uses it
        out_dir = Path(tmp) / name
        out_dir.mkdir(exist_ok=True)  # the files output's main-process side makes the root; workers only below it
        settings = WorkerSettings.build(ImageConfig(resize=size, quality=quality), out_dir)
        losses = []
        cpu = 0.0
        for i, data in enumerate(templates):
            job = Job(f"{i:016x}", mix, Source.THUMBNAIL)  # skip MD5: quality only
            t0 = time.process_time()
            out = process.process(job, data, settings)
            cpu += time.process_time() - t0
            written = (Path(tmp) / name / mix / job.image_id[:3] / f"{job.image_id}.{out.ext}").read_bytes()
            losses.append(ideals[i] - psnr(decode(written), refs[i]))
        results.append({
            "mix": mix, "resample": name, "images": len(templates),
            "median_loss_db": round(statistics.median(losses), 3), "max_loss_db": round(max(losses), 3),
            "ideal_psnr_median_db": round(statistics.median(ideals), 2),
            "cpu_ms_per_image": round(1000 * cpu / len(templates), 2),
        })
    return results


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", action="append", choices=sorted(synth.MIXES), help="repeatable; default light and openimages")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oidl-quality-") as tmp:
        for mix in args.mix or ["light", "openimages"]:
            for r in run(mix, args.size, args.quality, tmp):
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
