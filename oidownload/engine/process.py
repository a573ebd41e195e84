"""Runs in the process pool: fetched bytes → verify → decode → orient → resize → encode
→ atomic write → a small `Outcome` (never image bytes).

Pure functions of (job, body, settings); never imports aiohttp, so tests call
`process` directly with plain bytes.
"""

from __future__ import annotations

import base64
import errno as errno_mod
import hashlib
import io
import math
import warnings
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from oidownload.core.config import ImageConfig, Orientation, OutputFormat, ResizeMode
from oidownload.core.fsio import Buffer
from oidownload.core.records import Outcome, Source, Status, clean_text
from oidownload.engine.body import BodyRef, opened
from oidownload.engine.maskframe import MaskIn, frame_masks
from oidownload.sinks import Member, Target

# What --format writes, as (Pillow format, file extension).
_ENCODERS: dict[OutputFormat, tuple[str, str]] = {
    OutputFormat.JPEG: ("JPEG", "jpg"),
    OutputFormat.WEBP: ("WEBP", "webp"),
    OutputFormat.PNG: ("PNG", "png"),
}
# Extensions for bytes kept as fetched, by Pillow's format name.
_KEEP_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}

# EXIF Orientation → the transpose that makes the pixels upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The Rotation column, degrees counter-clockwise → the same turn.
_ROTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
# The applied turn, recorded in the journal as the EXIF code that names it.
_TRANSPOSE_CODE: dict[Image.Transpose, int] = {t: code for code, t in _EXIF_TRANSPOSE.items()}

# Resampling after a draft decode, chosen by measurement (benchmarks/quality.py and
# benchmarks/RESULTS.md): against a full decode + LANCZOS reference, BILINEAR loses
# 0.38-0.47 dB median PSNR and 1.3 dB at worst (the limits are 1 and 3 dB), and saves
# 3 ms an image over BICUBIC (0.06-0.15 dB) and 6 ms over LANCZOS. Pillow's BILINEAR
# widens its support when shrinking, so it antialiases.
RESAMPLE = Image.Resampling.BILINEAR
EXIF_ORIENTATION = 0x0112


def _builtin_placeholders() -> frozenset[str]:
    data = resources.files("oidownload").joinpath("data/photo_unavailable.png").read_bytes()
    return frozenset({md5_b64(data)})


def md5_b64(data: Buffer | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Job:
    """What a worker needs to know about one row, besides the bytes."""

    image_id: str
    subset: str
    source: Source
    expected_size: int | None = None
    expected_md5: str | None = None  # base64; checked whatever the source
    checked_by: str = "OriginalMD5"  # where expected_md5 came from, for the failure detail
    rotation: int | None = None
    has_rotation_column: bool = False
    file: str = ""
    line: int = 0
    # A mirror copy fetched as stored (its ETag is the MD5 of those bytes) with this
    # Content-Encoding: checked as it is, then decoded, up to max_decoded bytes.
    encoding: str = ""
    max_decoded: int = 64 * 1024 * 1024
    masks: tuple[MaskIn, ...] = ()  # masks (issue 22): fetched with the image, framed with it


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    image: ImageConfig
    target: Target  # where finished images go: the output's worker side
    placeholder_md5s: frozenset[str]

    @classmethod
    def build(cls, image: ImageConfig, target: Target | Path) -> WorkerSettings:
        if isinstance(target, Path):  # a plain folder: the files output
            from oidownload.sinks.files import FilesTarget

            target = FilesTarget(str(target))
        return cls(image, target, _builtin_placeholders() | image.placeholder_md5s)


def init_pillow() -> None:
    # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above; a bomb is a
    # bomb either way.
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def process_ref(job: Job, ref: BodyRef, settings: WorkerSettings) -> Outcome:
    with opened(ref) as body:
        return process(job, body, settings)


def process(job: Job, body: Buffer, settings: WorkerSettings) -> Outcome:
    """The whole per-image work. Broad excepts live here only: Pillow raises many kinds."""
    outcome = Outcome(job.image_id, Status.OK, subset=job.subset, source=job.source, nbytes=len(body), file=job.file, line=job.line)
    digest = md5_b64(body)
    if digest in settings.placeholder_md5s:
        return _fail(outcome, Status.UNAVAILABLE, "the body is the 'photo unavailable' placeholder")
    if job.expected_size is not None and len(body) != job.expected_size:
        return _fail(outcome, Status.SIZE_MISMATCH, f"got {len(body)} bytes, OriginalSize is {job.expected_size}")
    if job.expected_md5 is not None:
        if digest != job.expected_md5:
            return _fail(outcome, Status.MD5_MISMATCH, f"md5 {digest}, {job.checked_by} is {job.expected_md5}")
        outcome.verified = True
    if job.encoding:
        decoded = _content_decoded(body, job.encoding, job.max_decoded)
        if isinstance(decoded, tuple):
            return _fail(outcome, *decoded)
        body = decoded
    try:
        r = _render(job, body, settings.image)
    except Image.DecompressionBombError as exc:
        return _fail(outcome, Status.TOO_LARGE, f"decompression bomb guard: {exc}")
    except Image.DecompressionBombWarning as exc:
        return _fail(outcome, Status.TOO_LARGE, f"decompression bomb guard: {exc}")
    except UnidentifiedImageError:
        return _fail(outcome, Status.CORRUPT, f"not an image (starts {bytes(body[:8])!r})")
    except TooLarge as exc:
        return _fail(outcome, Status.TOO_LARGE, str(exc))
    except MemoryError:
        return _fail(outcome, Status.TOO_LARGE, "out of memory decoding the image")
    except Exception as exc:  # Pillow: OSError, SyntaxError, ValueError, struct.error...
        return _fail(outcome, Status.CORRUPT, f"cannot decode: {type(exc).__name__}: {exc}")
    outcome.width, outcome.height = r.size
    cfg = settings.image
    if (job.source is not Source.ORIGINAL and cfg.resize and cfg.resize_mode is not ResizeMode.NONE
            and max(r.size) < cfg.resize):
        # Copies are smaller than originals (the mirror's at most 1024 px): say so, so a
        # user who needs the full resolution can find these rows.
        outcome.detail = f"the {job.source.value} copy is {r.size[0]}x{r.size[1]}, smaller than --resize {cfg.resize}"
    outcome.ext = r.ext
    outcome.orientation = r.orientation
    outcome.crop = r.crop
    members: list[Member] = [(r.ext, r.data)]
    if settings.image.keep_original and job.source is Source.ORIGINAL:
        members.append((f"original.{_sniff_ext(body)}", body))
    if job.masks:  # masks (issue 22): in the image's frame, placed in the same sample
        framed, mask_outcomes = frame_masks(job.masks, r.size, r.orientation, r.crop, settings.image.keep_original)
        members.extend(framed)
        outcome.masks = tuple(mask_outcomes)
    try:
        placed = settings.target.place(job.subset, job.image_id, members)
    except OSError as exc:
        outcome.errno = exc.errno
        outcome.masks = ()
        name = errno_mod.errorcode.get(exc.errno or 0, "OSError")
        return _fail(outcome, Status.WRITE_ERROR, f"{name}: {exc.strerror or exc}")
    outcome.location, outcome.staged = placed.location, placed.staged
    outcome.out_bytes = len(r.data)
    # Hashed here, where the bytes already are, for the lock file (lock.py).
    outcome.sha256 = hashlib.sha256(r.data).hexdigest()
    return outcome


def _content_decoded(body: Buffer, encoding: str, cap: int) -> bytes | tuple[Status, str]:
    """The body a Content-Encoding stands for, or a failure: gzip and deflate (zlib or
    raw), at most `cap` bytes (a small gzip can stand for gigabytes)."""
    kind = encoding.strip().lower()
    if kind in ("gzip", "x-gzip"):
        candidates = [zlib.MAX_WBITS | 16]
    elif kind == "deflate":
        candidates = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        return Status.CORRUPT, f"served with Content-Encoding {clean_text(encoding, 40)}, which is not decoded"
    why = ""
    for wbits in candidates:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, cap + 1)
        except zlib.error as exc:
            why = f"its Content-Encoding {kind} does not decode: {exc}"
            continue
        if len(out) > cap:
            return Status.TOO_LARGE, f"decoded from {kind}, over the cap of {cap} bytes"
        return out
    return Status.CORRUPT, why


def _fail(outcome: Outcome, status: Status, detail: str) -> Outcome:
    outcome.status = status
    outcome.detail = detail
    outcome.ext = ""
    return outcome


def _sniff_ext(body: Buffer) -> str:
    if body[:3] == b"\xff\xd8\xff":
        return "jpg"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if body[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "webp"
    return "bin"


def target_size(size: tuple[int, int], cfg: ImageConfig) -> tuple[int, int] | None:
    """The pixel size after resizing, before any turn; None when nothing shrinks
    (we never upscale)."""
    w, h = size
    n = cfg.resize
    if n is None or cfg.resize_mode is ResizeMode.NONE:
        return None
    if cfg.resize_mode is ResizeMode.FIT:
        if max(w, h) <= n:
            return None
        scale = n / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    side = min(n, w, h)
    if side == w == h:
        return None
    return side, side


def _orientation(im: Image.Image, job: Job, cfg: ImageConfig) -> Image.Transpose | None:
    if cfg.orientation is Orientation.RAW:
        return None
    if job.has_rotation_column:
        # The column was derived from the EXIF tag: applying both would turn twice.
        return _ROTATION_TRANSPOSE.get(job.rotation or 0)
    try:
        value = im.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block must not lose the image
        return None
    return _EXIF_TRANSPOSE.get(value) if isinstance(value, int) else None


@dataclass(frozen=True, slots=True)
class Rendered:
    """What to write, and how its frame relates to the stored pixels' (for boxes):
    `crop` is the kept region of the stored frame, normalised; `orientation` the EXIF-
    style code of the turn applied after it (1: none)."""

    data: Buffer
    ext: str
    size: tuple[int, int]
    orientation: int = 1
    crop: tuple[float, float, float, float] | None = None


class TooLarge(Exception):
    """The image would take more memory to decode than --max-decode-mb allows."""


# Bytes per pixel of Pillow's storage by mode (RGB is stored in 4 bytes).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# A resample whose kernel spans more source pixels than this per output pixel first
# reduces by an integer factor (box averaging): the kernel's weights would otherwise
# take out_size x 2 x scale doubles (1.3 GB for 80,000,000 pixels onto 640).
_MAX_SCALE = 16.0
REDUCING_GAP = 3.0


def decode_bytes(size: tuple[int, int], mode: str, out_format: str, target: tuple[int, int] | None) -> int:
    """About the most memory the pixel work of one image takes: the decoded image, a
    converted copy when the output format needs another mode, and the resample's
    intermediate pass. Pillow also keeps a pointer per row of every image (8 bytes):
    640 MB of pointers alone for 80,000,000 rows of one pixel."""
    w, h = size
    row = w * _STORED_BYTES.get(mode, 4) + 8
    copies = 0
    if out_format == "JPEG" and mode not in ("RGB", "L"):
        copies = 2 if mode in ("RGBA", "LA", "PA", "P") else 1  # to RGBA, then flattened onto RGB
    elif out_format != "JPEG" and mode not in ("RGB", "RGBA", "L", "LA"):
        copies = 1
    total = h * (row + copies * (w * 4 + 8))
    if target is not None:
        tw, th = target
        if max(w / tw, h / th) > _MAX_SCALE:  # reduced first (see _resize): the pass runs on that
            w, h = -(-w // max(1, int(w / tw / REDUCING_GAP))), -(-h // max(1, int(h / th / REDUCING_GAP)))
            total += h * (w * 4 + 8)
        total += h * (tw * 4 + 8) + th * (tw * 4 + 8)
    return total


def _render(job: Job, body: Buffer, cfg: ImageConfig) -> Rendered:
    if isinstance(body, bytes):
        source: io.BytesIO | Buffer = io.BytesIO(body)
    else:
        body.seek(0)
        source = body  # an mmap reads like a file: no copy of the whole body
    im: Image.Image = Image.open(source)  # type: ignore[arg-type]
    if cfg.format is OutputFormat.KEEP:
        # No decode: only the header is parsed, for the size and the format.
        return Rendered(body, _KEEP_EXT.get(im.format or "", _sniff_ext(body)), im.size)
    pil_format, ext = _ENCODERS[cfg.format]
    target = target_size(im.size, cfg)
    if im.format != "JPEG":
        # Reading a PNG's EXIF (for the orientation) decodes the whole image: the
        # estimate comes first. A JPEG's EXIF is in its header, and its draft below may
        # shrink what is decoded, so it is checked after the draft.
        _check_decode(im, pil_format, target, cfg)
    turn = _orientation(im, job, cfg)
    if target is None and turn is None and _same_format(im.format, pil_format):
        if job.expected_md5 is None:
            _check_decode(im, im.format or "", None, cfg)
            im.load()  # unverified bytes kept as they are must at least decode
        return Rendered(body, ext, im.size)
    box: tuple[float, float, float, float] | None = None
    crop: tuple[float, float, float, float] | None = None
    if target is not None:
        w, h = im.size
        if cfg.resize_mode is ResizeMode.FILL:
            side = min(w, h)
            scale = target[0] / side
            want = (math.ceil(w * scale), math.ceil(h * scale))
        else:
            want = target
        if im.format == "JPEG":
            im.draft("RGB" if im.mode == "RGB" else None, want)
        if cfg.resize_mode is ResizeMode.FILL:
            dw, dh = im.size  # drafting may have shrunk it
            side_d = min(dw, dh)
            box = ((dw - side_d) / 2, (dh - side_d) / 2, (dw + side_d) / 2, (dh + side_d) / 2)
            crop = (box[0] / dw, box[1] / dh, box[2] / dw, box[3] / dh)
    _check_decode(im, pil_format, target, cfg)
    im = _normalise_mode(im, pil_format)
    if target is not None:
        im = _resize(im, target, box)
    if turn is not None:
        im = im.transpose(turn)
    buf = io.BytesIO()
    params: dict[str, object] = {}
    icc = im.info.get("icc_profile")
    if icc:
        params["icc_profile"] = icc
    if pil_format in ("JPEG", "WEBP"):
        params["quality"] = cfg.quality
    # No exif= is passed: a re-encoded file carries no Orientation tag, so viewers
    # show exactly the pixels written.
    im.save(buf, pil_format, **params)
    return Rendered(buf.getvalue(), ext, im.size, _TRANSPOSE_CODE[turn] if turn is not None else 1, crop)


def _resize(im: Image.Image, target: tuple[int, int], box: tuple[float, float, float, float] | None) -> Image.Image:
    scale = max(im.width / target[0], im.height / target[1])
    return im.resize(target, RESAMPLE, box=box, reducing_gap=REDUCING_GAP if scale > _MAX_SCALE else None)


def _check_decode(im: Image.Image, out_format: str, target: tuple[int, int] | None, cfg: ImageConfig) -> None:
    need = decode_bytes(im.size, im.mode, out_format, target)
    if need > cfg.max_decode_bytes:
        w, h = im.size
        raise TooLarge(f"{w}x{h} {im.mode} needs about {need / 2**20:.0f} MB to decode, over --max-decode-mb "
                       f"{cfg.max_decode_bytes / 2**20:.0f}")


def _same_format(source: str | None, target: str) -> bool:
    return source == target or (source == "MPO" and target == "JPEG")


def _normalise_mode(im: Image.Image, pil_format: str) -> Image.Image:
    mode = im.mode
    if pil_format == "JPEG":
        if mode in ("RGB", "L"):
            return im
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return im.convert("RGB")
    if mode in ("RGB", "RGBA", "L", "LA"):
        return im
    if mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    return im.convert("RGB")
