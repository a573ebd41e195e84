"""Photo-like synthetic JPEGs in realistic size mixes, for the local origin server.

A mix is a few dozen *templates* whose byte sizes follow a target distribution
(lognormal quantiles); every served image is a template plus a unique 16-byte tail
after the JPEG's end marker, so each ImageID has its own bytes and MD5 while decode
cost stays that of a real photo of that size. Templates are cached on disk.
"""

from __future__ import annotations

import io
import math
import os
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CACHE_VERSION = 2


@dataclass(frozen=True, slots=True)
class Mix:
    """A size distribution: lognormal bytes with the given median and sigma, clipped."""

    name: str
    median: float  # bytes
    sigma: float
    low: float
    high: float
    max_side: int
    templates: int
    quality: int = 90

    def targets(self) -> list[float]:
        dist = statistics.NormalDist(math.log(self.median), self.sigma)
        return [
            min(self.high, max(self.low, math.exp(dist.inv_cdf((i + 0.5) / self.templates))))
            for i in range(self.templates)
        ]


MB = 1_000_000
MIXES: dict[str, Mix] = {
    # Real V3 originals: median 1.2 MB, mean 2.1 MB, p90 5.5 MB, max 15 MB.
    "openimages": Mix("openimages", 1.2 * MB, 1.06, 0.2 * MB, 15 * MB, 4000, 32),
    # The lighter mix img2dataset was measured on: mean 1.3 MB, up to 4000 px.
    "light": Mix("light", 0.9 * MB, 0.85, 0.2 * MB, 8 * MB, 4000, 24),
    # Thumbnail300KURL: about 640x480 and 100 KB.
    "thumbnails": Mix("thumbnails", 100_000, 0.3, 40_000, 250_000, 640, 8, quality=85),
    # Small images for tests: fast to make and to process.
    "tiny": Mix("tiny", 20_000, 0.5, 4_000, 80_000, 480, 6),
    "tiny-thumbs": Mix("tiny-thumbs", 6_000, 0.3, 2_000, 20_000, 160, 3, quality=85),
}

# Bytes per pixel reached at most detail and quality 90; decides the pixel count.
_BPP = 0.35


def photo(width: int, height: int, seed: int, detail: float) -> Image.Image:
    """Smooth blobs and gradients (what JPEG compresses well) plus edges and colour
    noise (what it doesn't); `detail` in [0, 1] sets how much noise, and so the bytes."""
    rng = random.Random(seed)
    sw, sh = max(8, width // 16), max(8, height // 16)
    base = Image.new("RGB", (sw, sh), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(base)
    for _ in range(14):
        x, y, r = rng.randrange(sw), rng.randrange(sh), rng.randrange(2, max(3, sw // 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    base = base.filter(ImageFilter.GaussianBlur(max(1, sw // 40)))
    img = base.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    # A bright block in the top-left corner makes any turn or flip visible.
    draw.rectangle((0, 0, width // 5, height // 5), fill=(250, 40, 40))
    for _ in range(24):
        pts = (rng.randrange(width), rng.randrange(height), rng.randrange(width), rng.randrange(height))
        draw.line(pts, fill=tuple(rng.randrange(256) for _ in range(3)), width=max(1, width // 300))
    if detail > 0:
        sigma = 20 + 100 * detail
        noise = Image.merge("RGB", [Image.effect_noise((width, height), sigma) for _ in range(3)])
        img = Image.blend(img, noise, min(0.6, 0.08 + 0.5 * detail))
    return img


def encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def template(target: float, mix: Mix, seed: int) -> bytes:
    """One JPEG of roughly `target` bytes: the pixel count from a typical bytes-per-
    pixel, then a few secant steps on the noise level (and quality, for the largest)."""
    rng = random.Random(seed)
    aspect = rng.choice((4 / 3, 3 / 2, 1.0, 16 / 9))
    pixels = target / _BPP
    long_side = min(mix.max_side, max(64, int(math.sqrt(pixels * aspect))))
    short_side = max(48, int(long_side / aspect))
    w, h = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
    quality = mix.quality
    if w * h * _BPP < target * 0.8:
        quality = 97  # a capped pixel count needs denser bytes: large originals are high quality
    lo, hi = 0.0, 1.0
    best = b""
    detail = 0.5
    for _ in range(5):
        data = encode(photo(w, h, seed, detail), quality)
        if not best or abs(len(data) - target) < abs(len(best) - target):
            best = data
        if abs(len(data) - target) < 0.12 * target:
            break
        if len(data) < target:
            lo = detail
        else:
            hi = detail
        detail = (lo + hi) / 2
    return best


def cache_dir() -> Path:
    root = os.environ.get("OIDOWNLOAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "oidownload"
    )
    return Path(root) / f"synth-v{CACHE_VERSION}"


def _folder(mix: Mix, seed: int, cache: Path | None) -> Path:
    return (cache or cache_dir()) / f"{mix.name}-{mix.templates}-{seed}"


def cached(mix: Mix, seed: int = 0, cache: Path | None = None) -> bool:
    """Whether the mix's templates are all on disk already."""
    folder = _folder(mix, seed, cache)
    return all((folder / f"{i:03d}.jpg").exists() for i in range(mix.templates))


def templates(mix: Mix, seed: int = 0, cache: Path | None = None,
              made: Callable[[], object] | None = None) -> list[bytes]:
    """The mix's templates, generated once and then read from the cache; `made` is
    called after each one generated (a progress bar's update: the first run of the
    openimages mix takes a minute or more)."""
    folder = _folder(mix, seed, cache)
    out: list[bytes] = []
    for i, target in enumerate(mix.targets()):
        path = folder / f"{i:03d}.jpg"
        if path.exists():
            out.append(path.read_bytes())
            if made is not None:
                made()
            continue
        data = template(target, mix, seed * 1000 + i)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        out.append(data)
        if made is not None:
            made()
    return out


def describe(sizes: Sequence[int]) -> dict[str, float]:
    """Median, mean, p90 and max of a list of byte sizes, in MB."""
    s = sorted(sizes)
    if not s:
        return {}
    return {
        "median_mb": round(s[len(s) // 2] / MB, 3),
        "mean_mb": round(sum(s) / len(s) / MB, 3),
        "p90_mb": round(s[int(len(s) * 0.9)] / MB, 3),
        "max_mb": round(s[-1] / MB, 3),
    }

