"""The pool worker's work, called directly on small in-memory images."""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from oidownload.core.config import ImageConfig, Orientation, OutputFormat, ResizeMode
from oidownload.core.records import Source, Status
from oidownload.engine.process import EXIF_ORIENTATION, Job, WorkerSettings, process, target_size
from oidownload.sinks.files import relative_path
from oidownload.testing.origin import placeholder_bytes


def image_path(out: Path, subset: str, image_id: str, ext: str) -> Path:
    return out / relative_path(subset, image_id, ext)


def original_path(out: Path, subset: str, image_id: str, ext: str) -> Path:
    return out / relative_path(subset, image_id, f"original.{ext}")

ID = "0123456789abcdef"


def jpeg(w: int, h: int, *, exif_orientation: int | None = None, quality: int = 92) -> bytes:
    """A test card: red top-left quadrant, so turns and flips are visible."""
    im = Image.new("RGB", (w, h), (20, 40, 200))
    im.paste((230, 20, 20), (0, 0, w // 2, h // 2))
    im.paste((20, 200, 40), (w // 2, h // 2, w, h))
    buf = io.BytesIO()
    kw: dict[str, object] = {"quality": quality}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = exif_orientation
        kw["exif"] = exif.tobytes()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def original_job(body: bytes, **kw: object) -> Job:
    return Job(ID, "train", Source.ORIGINAL, expected_size=len(body), expected_md5=md5(body), **kw)  # type: ignore[arg-type]


def settings(tmp_path: Path, **kw: object) -> WorkerSettings:
    return WorkerSettings.build(ImageConfig(**kw), tmp_path)  # type: ignore[arg-type]


def red_corner(im: Image.Image) -> str:
    """Which corner holds the red quadrant."""
    w, h = im.size
    corners = {"tl": (w // 8, h // 8), "tr": (w - 1 - w // 8, h // 8), "bl": (w // 8, h - 1 - h // 8), "br": (w - 1 - w // 8, h - 1 - h // 8)}
    for name, xy in corners.items():
        r, g, b = im.convert("RGB").getpixel(xy)  # type: ignore[misc]
        if r > 180 and g < 90 and b < 90:
            return name
    raise AssertionError("no red corner")


def test_verified_original_is_resized_and_written(tmp_path: Path) -> None:
    body = jpeg(1200, 800)
    out = process(original_job(body), body, settings(tmp_path, resize=300))
    assert out.status is Status.OK and out.verified
    path = image_path(tmp_path, "train", ID, "jpg")
    assert path == tmp_path / "train" / "012" / f"{ID}.jpg"
    with Image.open(path) as im:
        assert im.size == (300, 200) == (out.width, out.height)
    assert out.out_bytes == path.stat().st_size
    assert out.nbytes == len(body)


def test_md5_and_size_mismatch_write_nothing(tmp_path: Path) -> None:
    body = jpeg(200, 100)
    bad_md5 = replace(original_job(body), expected_md5=md5(b"other"))
    out = process(bad_md5, body, settings(tmp_path))
    assert out.status is Status.MD5_MISMATCH and md5(b"other") in out.detail
    bad_size = replace(original_job(body), expected_size=len(body) + 1)
    out = process(bad_size, body, settings(tmp_path))
    assert out.status is Status.SIZE_MISMATCH
    assert not any(tmp_path.rglob("*.jpg"))


def test_thumbnails_are_not_verified(tmp_path: Path) -> None:
    body = jpeg(64, 48)
    out = process(Job(ID, "train", Source.THUMBNAIL), body, settings(tmp_path))
    assert out.status is Status.OK and not out.verified


def test_draft_decode_is_used_when_shrinking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    sizes: list[object] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        sizes.append(size)
        result = real(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    body = jpeg(2000, 1000)
    out = process(original_job(body), body, settings(tmp_path, resize=250))
    # Asked for 250x125; DCT scaling by 1/8 decodes 250x125 directly.
    assert sizes == [(250, 125), (250, 125)]
    assert (out.width, out.height) == (250, 125)


def test_fit_fill_and_never_upscale() -> None:
    cfg = ImageConfig(resize=640)
    assert target_size((4000, 3000), cfg) == (640, 480)
    assert target_size((3000, 4000), cfg) == (480, 640)
    assert target_size((600, 400), cfg) is None
    fill = ImageConfig(resize=640, resize_mode=ResizeMode.FILL)
    assert target_size((4000, 3000), fill) == (640, 640)
    assert target_size((500, 300), fill) == (300, 300)
    assert target_size((1000, 1000), ImageConfig(resize=640, resize_mode=ResizeMode.NONE)) is None


def test_fill_centre_crops(tmp_path: Path) -> None:
    body = jpeg(900, 300)
    out = process(original_job(body), body, settings(tmp_path, resize=120, resize_mode=ResizeMode.FILL))
    with Image.open(image_path(tmp_path, "train", ID, "jpg")) as im:
        assert im.size == (120, 120) == (out.width, out.height)
        # The centre third of a 900x300 card spans the red|blue and blue|green seams.
        left, right = im.convert("RGB").getpixel((5, 5)), im.convert("RGB").getpixel((114, 114))
    assert left[0] > 180 and right[1] > 150  # type: ignore[index]


def test_upright_uses_the_rotation_column_and_not_exif(tmp_path: Path) -> None:
    body = jpeg(400, 200, exif_orientation=6)
    job = original_job(body, rotation=90, has_rotation_column=True)
    process(job, body, settings(tmp_path, orientation=Orientation.UPRIGHT))
    with Image.open(image_path(tmp_path, "train", ID, "jpg")) as im:
        assert im.size == (200, 400)
        assert red_corner(im) == "bl"  # 90 degrees counter-clockwise: top-left goes bottom-left
        assert EXIF_ORIENTATION not in im.getexif()


def test_upright_unknown_rotation_turns_nothing_even_with_exif(tmp_path: Path) -> None:
    body = jpeg(400, 200, exif_orientation=6)
    job = original_job(body, rotation=None, has_rotation_column=True)
    out = process(job, body, settings(tmp_path, orientation=Orientation.UPRIGHT, resize=100))
    assert (out.width, out.height) == (100, 50)


def test_upright_without_a_column_uses_exif(tmp_path: Path) -> None:
    body = jpeg(400, 200, exif_orientation=6)  # 6: stored turned, display rotates 90 clockwise
    out = process(original_job(body), body, settings(tmp_path, orientation=Orientation.UPRIGHT, resize=100))
    assert (out.width, out.height) == (50, 100)
    with Image.open(image_path(tmp_path, "train", ID, "jpg")) as im:
        assert red_corner(im) == "tr"
        assert EXIF_ORIENTATION not in im.getexif()


def test_raw_keeps_stored_pixels_and_drops_the_tag(tmp_path: Path) -> None:
    body = jpeg(400, 200, exif_orientation=6)
    out = process(original_job(body, rotation=90, has_rotation_column=True), body, settings(tmp_path, resize=100))
    assert (out.width, out.height) == (100, 50)
    with Image.open(image_path(tmp_path, "train", ID, "jpg")) as im:
        assert red_corner(im) == "tl"
        assert EXIF_ORIENTATION not in im.getexif()


def test_nothing_to_change_keeps_the_original_bytes(tmp_path: Path) -> None:
    body = jpeg(300, 200)
    process(original_job(body), body, settings(tmp_path, resize=640))
    assert image_path(tmp_path, "train", ID, "jpg").read_bytes() == body


def test_keep_format_writes_fetched_bytes(tmp_path: Path) -> None:
    body = jpeg(1000, 800)
    out = process(original_job(body), body, settings(tmp_path, format=OutputFormat.KEEP))
    assert image_path(tmp_path, "train", ID, "jpg").read_bytes() == body
    assert (out.width, out.height) == (1000, 800)


@pytest.mark.parametrize(("fmt", "ext", "pil"), [(OutputFormat.WEBP, "webp", "WEBP"), (OutputFormat.PNG, "png", "PNG")])
def test_other_formats(tmp_path: Path, fmt: OutputFormat, ext: str, pil: str) -> None:
    body = jpeg(500, 500)
    out = process(original_job(body), body, settings(tmp_path, format=fmt, resize=100))
    assert out.ext == ext
    with Image.open(image_path(tmp_path, "train", ID, ext)) as im:
        assert im.format == pil and im.size == (100, 100)


def test_keep_original_is_byte_identical(tmp_path: Path) -> None:
    body = jpeg(800, 600)
    process(original_job(body), body, settings(tmp_path, resize=100, keep_original=True))
    assert original_path(tmp_path, "train", ID, "jpg").read_bytes() == body


def test_not_an_image_is_corrupt(tmp_path: Path) -> None:
    body = b"<html>nope</html>"
    out = process(original_job(body), body, settings(tmp_path, resize=100))
    assert out.status is Status.CORRUPT and "not an image" in out.detail
    assert not any(tmp_path.rglob("*.jpg"))


def test_truncated_thumbnail_is_corrupt(tmp_path: Path) -> None:
    body = jpeg(640, 480)[:3000]
    out = process(Job(ID, "train", Source.THUMBNAIL), body, settings(tmp_path, resize=100))
    assert out.status is Status.CORRUPT
    assert not any(tmp_path.rglob("*.jpg"))


def test_placeholder_served_directly_is_unavailable(tmp_path: Path) -> None:
    body = placeholder_bytes()
    out = process(Job(ID, "train", Source.THUMBNAIL), body, settings(tmp_path))
    assert out.status is Status.UNAVAILABLE
    assert not any(tmp_path.rglob("*.*g"))


def test_decompression_bomb_guard_stays_on(tmp_path: Path) -> None:
    big = Image.new("L", (12000, 12000))  # 144 MP > Pillow's 89 MP limit
    buf = io.BytesIO()
    big.save(buf, "PNG")
    body = buf.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        out = process(original_job(body), body, settings(tmp_path, resize=100))
    assert out.status is Status.TOO_LARGE and "bomb" in out.detail


def test_transparent_png_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    body = buf.getvalue()
    out = process(original_job(body), body, settings(tmp_path, resize=100))
    assert out.status is Status.OK
    with Image.open(image_path(tmp_path, "train", ID, "jpg")) as res:
        assert res.convert("RGB").getpixel((50, 50)) == (255, 255, 255)


def test_write_error_is_reported(tmp_path: Path) -> None:
    (tmp_path / "train").write_text("a file where a folder should be")
    body = jpeg(100, 100)
    out = process(original_job(body), body, settings(tmp_path))
    assert out.status is Status.WRITE_ERROR and out.errno is not None


def tall_png(height: int) -> bytes:
    """A 1 x height grey PNG, built chunk by chunk: Pillow would need 8 bytes per row
    (640 MB for 80,000,000 rows) just to make it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = b"\0\0" * 1_000_000  # filter byte, one pixel
    idat = b"".join(z.compress(rows) for _ in range(height // 1_000_000)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_decode_bomb_is_refused_before_its_orientation_is_read(tmp_path: Path) -> None:
    """Issue 28: reading a PNG's EXIF decodes it whole, so under --orientation upright a
    1 x 80,000,000 px PNG (155 KB) peaked at 808 MB before the estimate refused it.
    Run in a child, whose peak memory (VmHWM: ru_maxrss would start at the parent's) is
    its own."""
    import subprocess
    import sys

    png = tmp_path / "tall.png"
    png.write_bytes(tall_png(80_000_000))
    assert png.stat().st_size < 200_000
    code = f"""
from pathlib import Path
from oidownload.core.config import ImageConfig, Orientation
from oidownload.engine.process import Job, WorkerSettings, process
from oidownload.core.records import Source
body = Path({str(png)!r}).read_bytes()
cfg = ImageConfig(orientation=Orientation.UPRIGHT, resize=640)
out = process(Job("{ID}", "train", Source.ORIGINAL), body, WorkerSettings.build(cfg, Path({str(tmp_path)!r})))
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
print(out.status.value, int(hwm.split()[1]) // 1024, out.detail)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    status, peak_mb, detail = res.stdout.split(" ", 2)
    assert status == "too_large" and "1x80000000" in detail, res.stdout
    assert int(peak_mb) < 200, f"the worker peaked at {peak_mb} MB"
