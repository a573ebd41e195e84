"""Issue 28 item 1: the commands' own outputs (gallery, annotations exports, report,
metadata) never write, move or delete through a symlink planted below OUT or DEST, at
any depth; a symlink at a final file name is replaced, not followed."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import V3, journal_rows, run_cli, v3_archive
from tests.hostile.conftest import Hostile, raw, response

BOXES = V3 / "validation" / "annotations-human-bbox.csv"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below folder (links not followed) with its bytes: what must not change."""
    found: dict[str, bytes] = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in files + dirs:
            path = Path(dirpath, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = b"-> " + os.readlink(path).encode()
            elif path.is_file():
                found[rel] = path.read_bytes()
            else:
                found[rel] = b"<dir>"
    return found


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory: pytest.TempPathFactory, synth_cache: Path) -> Iterator[Path]:
    """A small download of real validation ids that have boxes."""
    tmp = tmp_path_factory.mktemp("command-escapes")
    with open(BOXES, newline="", encoding="utf-8") as f:
        by_prefix = {r["ImageID"][:3]: r["ImageID"] for r in csv.DictReader(f)}  # one image a folder
    ids = sorted(by_prefix.values())[:6]
    corpus = Corpus.generate(0, mix="tiny", seed=281, ids=ids, subset="validation")
    with OriginThread(Origin(corpus)) as origin:
        manifest = corpus.write_manifest(tmp / "images.csv", origin.base_url)
        out = tmp / "out"
        res = run_cli("download", manifest, "-o", out, "--progress", "none")
        assert res.returncode == 0, res.stderr
    assert len(journal_rows(out)) == 6
    yield out


@pytest.fixture
def out(downloaded: Path, tmp_path: Path) -> Path:
    """A copy of the download per test, so each plants its own links."""
    copy = tmp_path / "out"
    shutil.copytree(downloaded, copy, symlinks=True)
    return copy


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Someone else's folder, with files a command must never touch."""
    folder = tmp_path / "elsewhere"
    (folder / "yolo").mkdir(parents=True)
    (folder / "keep.txt").write_text("keep me")
    (folder / "yolo" / "precious.txt").write_text("mine")
    return folder


def _clean(res: object, code: int = 1) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in res.stderr  # type: ignore[attr-defined]


def test_gallery_refuses_a_linked_gallery_folder(out: Path, outside: Path) -> None:
    before = _snapshot(outside)
    (out / "gallery").symlink_to(outside, target_is_directory=True)
    res = run_cli("gallery", out, "--progress", "none", "--processes", "1")
    _clean(res)
    assert "symlink" in res.stderr and str(out / "gallery") in res.stderr
    assert _snapshot(outside) == before


def test_gallery_rebuild_never_writes_through_a_linked_image_folder(out: Path, outside: Path) -> None:
    res = run_cli("gallery", out, "--progress", "none", "--processes", "1")
    _clean(res, 0)
    gallery = out / "gallery"
    folder, other = sorted((gallery / "images").iterdir())[:2]
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    # A FIFO at a page's name would block the rebuild's read of it for ever.
    page = next(other.glob("*.html"))
    page.unlink()
    os.mkfifo(page)
    # A final name that is a symlink is replaced by the rebuild, never written through.
    victim = outside / "keep.txt"
    (gallery / "index.html").unlink()
    (gallery / "index.html").symlink_to(victim)
    before = _snapshot(outside)
    res = run_cli("gallery", out, "--progress", "none", "--processes", "2", timeout=60)
    _clean(res, 0)
    assert "symlink" in res.stderr and "refusing" in res.stderr
    assert _snapshot(outside) == before
    assert page.is_file() and b"<html" in page.read_bytes()
    assert not (gallery / "index.html").is_symlink() and b"<html" in (gallery / "index.html").read_bytes()


@pytest.mark.parametrize("fmt", ["attribution", "coco", "csv", "yolo"])
def test_annotations_refuse_a_linked_annotations_folder(out: Path, outside: Path, fmt: str) -> None:
    before = _snapshot(outside)
    (out / "annotations").symlink_to(outside, target_is_directory=True)
    res = run_cli("annotations", out, "--format", fmt, "--annotations", BOXES)
    _clean(res)
    assert "symlink" in res.stderr and str(out / "annotations") in res.stderr
    assert _snapshot(outside) == before


def test_yolo_replaces_a_linked_yolo_folder_without_deleting_through_it(out: Path, outside: Path) -> None:
    before = _snapshot(outside)
    (out / "annotations").mkdir()
    (out / "annotations" / "yolo").symlink_to(outside / "yolo", target_is_directory=True)
    (out / "annotations" / "coco.json").symlink_to(outside / "keep.txt")
    for fmt in ("yolo", "yolo", "coco"):  # the second yolo replaces a real folder
        res = run_cli("annotations", out, "--format", fmt, "--annotations", BOXES)
        _clean(res, 0)
    assert _snapshot(outside) == before
    yolo = out / "annotations" / "yolo"
    assert not yolo.is_symlink() and (yolo / "data.yaml").is_file()
    assert not (out / "annotations" / "coco.json").is_symlink()
    assert [p.name for p in (out / "annotations").iterdir() if p.name.startswith(".")] == []


def test_hf_metadata_replaces_a_link_at_its_name(out: Path, outside: Path) -> None:
    before = _snapshot(outside)
    (out / "validation" / "metadata.jsonl").symlink_to(outside / "keep.txt")
    res = run_cli("annotations", out, "--format", "hf", "--annotations", BOXES)
    _clean(res, 0)
    assert _snapshot(outside) == before
    assert not (out / "validation" / "metadata.jsonl").is_symlink()


def test_report_refuses_a_linked_report_folder_and_replaces_linked_files(out: Path, outside: Path) -> None:
    before = _snapshot(outside)
    (out / "report").symlink_to(outside, target_is_directory=True)
    res = run_cli("report", out)
    _clean(res)
    assert "symlink" in res.stderr and str(out / "report") in res.stderr
    (out / "report").unlink()
    (out / "report").mkdir()
    (out / "report" / "success.csv").symlink_to(outside / "keep.txt")
    res = run_cli("report", out)
    _clean(res, 0)
    assert _snapshot(outside) == before
    assert not (out / "report" / "success.csv").is_symlink()
    assert len((out / "report" / "success.csv").read_text().splitlines()) == 7


_tgz = v3_archive


def test_metadata_never_writes_through_planted_links(tmp_path: Path, hostile: Hostile, outside: Path) -> None:
    body = b"ImageID,Subset\n" + b"0" * 5000
    archive = _tgz({"validation/images.csv": b"ImageID\nabc\n", "class-descriptions.csv": b"/m/01,Thing\n"})
    hostile.route("/v5/class-descriptions-boxable.csv", raw(response(body=body)))
    hostile.route("/2017_11/classes_2017_11.tar.gz", raw(response(body=archive)))
    hostile.route("/2017_11/images_2017_11.tar.gz", raw(response(body=archive)))
    dest = tmp_path / "meta"
    dest.mkdir()
    victim = outside / "keep.txt"
    before = _snapshot(outside)
    base = hostile.url("/")
    # A link at the .part: its target's size would be taken as the resume offset and
    # the rest appended to it.
    (dest / "class-descriptions-boxable.csv.part").symlink_to(victim)
    res = run_cli("metadata", "--version", "v6", "-o", dest, "--base-url", base, "--only", "class-descriptions-boxable.csv")
    _clean(res)
    assert "symlink" in res.stderr and "class-descriptions-boxable.csv.part" in res.stderr
    assert _snapshot(outside) == before
    # Nor into a FIFO there.
    (dest / "class-descriptions-boxable.csv.part").unlink()
    os.mkfifo(dest / "class-descriptions-boxable.csv.part")
    res = run_cli("metadata", "--version", "v6", "-o", dest, "--base-url", base, "--only", "class-descriptions-boxable.csv",
                  timeout=60)
    _clean(res)
    assert "not a regular file" in res.stderr
    # A link at the final name is replaced.
    (dest / "class-descriptions-boxable.csv.part").unlink()
    (dest / "class-descriptions-boxable.csv").symlink_to(victim)
    res = run_cli("metadata", "--version", "v6", "-o", dest, "--base-url", base, "--only", "class-descriptions-boxable.csv")
    _clean(res, 0)
    got = dest / "class-descriptions-boxable.csv"
    assert not got.is_symlink() and hashlib.md5(got.read_bytes()).digest() == hashlib.md5(body).digest()
    # A linked folder in DEST: the member that would land in it is refused, and no
    # folder is made outside.
    (dest / "validation").symlink_to(outside, target_is_directory=True)
    res = run_cli("metadata", "--version", "v3", "-o", dest, "--base-url", base, "--only", "images.csv",
                  "--only", "class-descriptions.csv")
    _clean(res, 0)
    assert "refusing to write through it" in res.stderr and "validation" in res.stderr
    assert (dest / "class-descriptions.csv").read_bytes() == b"/m/01,Thing\n"
    assert _snapshot(outside) == before
