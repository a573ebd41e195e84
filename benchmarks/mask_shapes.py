"""What a mask costs the exports (issue 22): decoding the written 1-bit PNG, COCO's
compressed RLE, and the YOLO-seg polygon (outer contours, pieces joined), per mask, on
generated masks of Open Images' usual size: smooth blobs, some in several pieces.

    python benchmarks/mask_shapes.py [--n 200] [--size 1024x768]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time

from PIL import Image, ImageDraw

from oidownload.dataset.maskshapes import Bitmap, coco_rle, polygon


def masks(n: int, w: int, h: int) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        im = Image.new("1", (w, h))
        d = ImageDraw.Draw(im)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            x, y = rng.randrange(0, w * 3 // 4), rng.randrange(0, h * 3 // 4)
            d.ellipse((x, y, x + rng.randrange(20, w * 2 // 5), y + rng.randrange(20, h * 2 // 5)), fill=1)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    pngs = masks(args.n, w, h)
    per: dict[str, list[float]] = {"decode": [], "rle": [], "polygon": []}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        bitmaps = [Bitmap.from_png(p) for p in pngs]
        t1 = time.perf_counter()
        for b in bitmaps:
            coco_rle(b)
        t2 = time.perf_counter()
        for b in bitmaps:
            polygon(b)
        t3 = time.perf_counter()
        for key, secs in (("decode", t1 - t0), ("rle", t2 - t1), ("polygon", t3 - t2)):
            per[key].append(1000 * secs / args.n)
    print(f"{args.n} masks of {w}x{h}, median of {args.runs} runs, ms per mask: "
          + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in per.items()))


if __name__ == "__main__":
    main()
