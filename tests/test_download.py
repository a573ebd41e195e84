"""End to end: the real `oidownload download` command against the local origin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault
from tests.conftest import journal_rows, run_cli


def _files(out: Path, image_id: str) -> list[Path]:
    return [p for p in out.rglob(f"{image_id}.*")]


def test_download_verifies_resizes_shards_and_resumes(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(300, mix="tiny", seed=3, no_thumbnail_rate=0.05)
    ids = corpus.ids
    wrong_md5, wrong_size = ids[10], ids[20]
    corpus.entries[wrong_md5].fault = Fault("wrongbytes")
    corpus.entries[wrong_size].fault = Fault("wrongsize")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"

    first = run_cli("download", manifest, "-o", out, "--resize", "128", "--keep-original", "--progress", "log")
    assert first.returncode == 0, first.stderr
    journal = journal_rows(out)
    assert len(journal) == 300
    assert journal[wrong_md5][0] == "md5_mismatch"
    assert journal[wrong_size][0] == "size_mismatch"
    assert "OriginalSize is" in journal[wrong_size][1]
    assert _files(out, wrong_md5) == [] and _files(out, wrong_size) == []

    ok = [i for i in ids if i not in (wrong_md5, wrong_size)]
    assert all(journal[i][0] == "ok" for i in ok)
    for image_id in ok:
        path = out / "train" / image_id[:3] / f"{image_id}.jpg"
        with Image.open(path) as im:
            im.load()
            assert max(im.size) <= 128
        served = corpus.original(image_id)
        with Image.open(io.BytesIO(served)) as src:
            if max(src.size) > 128:
                assert max(im.size) == 128
        kept = out / "original" / "train" / image_id[:3] / f"{image_id}.jpg"
        assert kept.read_bytes() == served
    assert not list(out.rglob("*.oidtmp"))
    assert "ok" in first.stderr and "md5_mismatch" in first.stderr  # the summary table

    before = sum(origin.requests.values())
    second = run_cli("download", manifest, "-o", out, "--resize", "128", "--keep-original")
    assert second.returncode == 0, second.stderr
    assert sum(origin.requests.values()) == before  # not one request
    assert "300 image(s) already done" in second.stderr


def _reference(body: bytes, n: int, turn: Image.Transpose | None) -> Image.Image:
    with Image.open(io.BytesIO(body)) as src:
        im = src.convert("RGB")
        scale = n / max(im.size)
        ref = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return ref.transpose(turn) if turn is not None else ref


def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


@pytest.mark.parametrize("orientation", ["upright", "raw"])
def test_rotation_column_under_upright_and_raw(tmp_path: Path, make_origin: StartOrigin, orientation: str) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=5)
    # A clearly non-square image, so a turn changes the shape as well as the pixels.
    turned = next(i for i in corpus.ids if (lambda s: s[0] > 1.2 * s[1])(Image.open(io.BytesIO(corpus.original(i))).size))
    plain = next(i for i in corpus.ids if i != turned)
    corpus.entries[turned].rotation = "90.0"
    corpus.entries[plain].rotation = ""
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "rot.csv", origin.base_url, rotation_column=True, ids=[turned, plain])
    out = tmp_path / orientation
    res = run_cli("download", manifest, "-o", out, "--resize", "96", "--orientation", orientation)
    assert res.returncode == 0, res.stderr

    with Image.open(out / "train" / turned[:3] / f"{turned}.jpg") as got:
        got.load()
        upright = _reference(corpus.original(turned), 96, Image.Transpose.ROTATE_90)
        clockwise = _reference(corpus.original(turned), 96, Image.Transpose.ROTATE_270)
        raw = _reference(corpus.original(turned), 96, None)
        flipped = _reference(corpus.original(turned), 96, Image.Transpose.ROTATE_180)
        if orientation == "upright":
            assert got.size == upright.size and got.height > got.width
            # Counter-clockwise, not clockwise: the same shape, other pixels.
            assert _mean_diff(got, upright) < 8.0 < _mean_diff(got, clockwise)
        else:
            assert got.size == raw.size and got.width > got.height
            assert _mean_diff(got, raw) < 8.0 < _mean_diff(got, flipped)
    with Image.open(out / "train" / plain[:3] / f"{plain}.jpg") as got:
        assert _mean_diff(got, _reference(corpus.original(plain), 96, None)) < 8.0


def test_thumbnails_kept_as_is_and_auto_source(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=8, no_thumbnail_rate=0.2)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "t", "--source", "thumbnail", "--format", "keep")
    assert res.returncode == 0, res.stderr
    journal = journal_rows(tmp_path / "t")
    for image_id, entry in corpus.entries.items():
        if entry.has_thumbnail:
            assert journal[image_id][0] == "ok"
            assert (tmp_path / "t" / "train" / image_id[:3] / f"{image_id}.jpg").read_bytes() == corpus.thumbnail(image_id)
        else:
            assert journal[image_id][0] == "no_url"
    res = run_cli("download", manifest, "-o", tmp_path / "a", "--source", "auto", "--format", "keep")
    assert res.returncode == 0, res.stderr
    for image_id, entry in corpus.entries.items():
        want = corpus.thumbnail(image_id) if entry.has_thumbnail else corpus.original(image_id)
        assert (tmp_path / "a" / "train" / image_id[:3] / f"{image_id}.jpg").read_bytes() == want


def test_subset_and_limit(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=9)
    for i, e in enumerate(corpus.entries.values()):
        e.subset = "validation" if i % 3 == 0 else "train"
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--subset", "validation", "--limit", "4", "--format", "keep")
    assert res.returncode == 0, res.stderr
    expected = [i for i, e in corpus.entries.items() if e.subset == "validation"][:4]
    assert sorted(journal_rows(out)) == sorted(expected)
    assert sorted(p.stem for p in (out / "validation").rglob("*.jpg")) == sorted(expected)
    # The same command again asks for nothing: the limit counts rows already done.
    before = sum(origin.requests.values())
    res = run_cli("download", manifest, "-o", out, "--subset", "validation", "--limit", "4", "--format", "keep")
    assert res.returncode == 0 and sum(origin.requests.values()) == before


def test_unknown_header_stops_before_any_request(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=1)
    origin = make_origin(corpus)
    good = corpus.write_manifest(tmp_path / "good.csv", origin.base_url)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,url\n1,http://127.0.0.1/\n")
    res = run_cli("download", good, bad, "-o", tmp_path / "out")
    assert res.returncode == 1
    assert "unknown header" in res.stderr and "ImageID,Subset,OriginalURL" in res.stderr
    assert sum(origin.requests.values()) == 0


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    res = run_cli("download", "x.csv", "-o", tmp_path, "--format", "keep", "--resize", "10")
    assert res.returncode == 2 and "--format keep" in res.stderr
    res = run_cli("download", "x.csv")
    assert res.returncode == 2


def test_missing_input_is_fatal(tmp_path: Path) -> None:
    res = run_cli("download", tmp_path / "nope.csv", "-o", tmp_path / "out")
    assert res.returncode == 1 and "no such file" in res.stderr


def test_stray_bytes_are_read_and_reported(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(3, mix="tiny", seed=10)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    data = manifest.read_bytes().replace(b"Synthetic O&#x27;Origin", b"Synth\xe9tic \xff", 1)
    manifest.write_bytes(data)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "not UTF-8" in res.stderr
    assert len(journal_rows(tmp_path / "out")) == 3  # the row with stray bytes downloads too
