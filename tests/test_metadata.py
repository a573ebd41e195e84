"""`oidownload metadata` unpacks the V3 .tar.gz archives where `download` reads them, and
the README's subset example runs as written, against a local stand-in for the metadata
server and for Flickr, on the real fixture files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.test_select import DESCRIPTIONS, V3, VAL, rows_of

ROOT = Path(__file__).parent.parent


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"2017_11/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("2017_11/../../escaped.csv")  # must never land outside DEST
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("2017_11/validation/link.csv")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


def readme_example() -> list[list[str]]:
    """The commands of the README's 'Download a subset' example, as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Download a subset", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip().startswith("oidownload ")]


def test_readme_subset_example_runs_as_written(tmp_path: Path, make_origin: StartOrigin) -> None:
    real = rows_of(VAL / "images.csv")
    corpus = Corpus.generate(0, mix="tiny", seed=85, ids=[r["ImageID"] for r in real], subset="validation")
    snowman, fedora = "/m/0152hh", "/m/02fq_6"
    picked = [r["ImageID"] for r in real[:5]]
    # The fixture's 1,000 validation boxes hold no Snowman or Fedora: add a few real-shaped rows.
    boxes = (VAL / "annotations-human-bbox.csv").read_text()
    extra = "".join(f"{i},freeform,{snowman if n % 2 else fedora},1,0.1,0.5,0.2,0.6,0,0,0,0,0\n" for n, i in enumerate(picked))
    images = io.StringIO()
    corpus_rows = {i: corpus.manifest_row(i, "BASE") for i in corpus.ids}
    w = csv.writer(images, lineterminator="\n")
    w.writerow(list(real[0].keys()))
    for r in real:
        w.writerow(corpus_rows[r["ImageID"]])
    archives = {
        "images_2017_11.tar.gz": _tgz({"validation/images.csv": images.getvalue().encode(),
                                       "train/images.csv": (V3 / "train" / "images.csv").read_bytes()}),
        "annotations_human_bbox_2017_11.tar.gz": _tgz({"validation/annotations-human-bbox.csv": (boxes + extra).encode(),
                                                       "train/annotations-human-bbox.csv": b"ImageID\n"}),
        "annotations_human_2017_11.tar.gz": _tgz({"validation/annotations-human.csv": (VAL / "annotations-human.csv").read_bytes()}),
        "annotations_machine_2017_11.tar.gz": _tgz({"validation/annotations-machine.csv": (VAL / "annotations-machine.csv").read_bytes()}),
        "classes_2017_11.tar.gz": _tgz({"class-descriptions.csv": DESCRIPTIONS.read_bytes(),
                                        "classes-bbox.txt": (V3 / "classes-bbox.txt").read_bytes()}),
    }
    origin = make_origin(corpus, extra_files={f"2017_11/{k}": v for k, v in archives.items()})
    # The image list inside must point at this origin, whose port is known only now.
    archives["images_2017_11.tar.gz"] = _tgz({
        "validation/images.csv": images.getvalue().replace("BASE", origin.base_url).encode(),
        "train/images.csv": (V3 / "train" / "images.csv").read_bytes()})
    origin.extra_files["2017_11/images_2017_11.tar.gz"] = archives["images_2017_11.tar.gz"]
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OIDOWNLOAD_BASE_URL": f"{origin.base_url}/files/",
           "OIDOWNLOAD_METADATA_BASE_URL": f"{origin.base_url}/files/"}
    commands = readme_example()
    assert [c[1] for c in commands] == ["metadata", "download", "annotations", "annotations", "annotations"]
    for cmd in commands:
        res = subprocess.run([sys.executable, "-m", "oidownload", *cmd[1:]], cwd=work, env=env,
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, (cmd, res.stderr[-3000:])
    meta = work / "metadata"
    assert (meta / "validation" / "images.csv").is_file() and (meta / "class-descriptions.csv").is_file()
    assert (meta / "validation" / "annotations-human-bbox.csv").read_text().endswith(extra)
    assert not (meta / "train").exists()  # --only picked the validation members
    assert not (meta / "validation" / "link.csv").exists() and not (tmp_path / "escaped.csv").exists()
    assert not list(work.rglob("escaped.csv"))
    written = sorted(p.stem for p in (work / "data" / "validation").rglob("*.jpg"))
    assert written == sorted(picked)
    coco = json.loads((work / "data" / "annotations" / "coco.json").read_text())
    assert len(coco["annotations"]) == len(picked)
    assert {c["name"] for c in coco["categories"]} == {"Snowman", "Fedora"}


def test_only_patterns_match_every_version() -> None:
    from oidownload.dataset.metadata import select_files

    assert [Path(f).name for f in select_files("v3", ("validation-*",))] == [
        "images_2017_11.tar.gz", "annotations_human_bbox_2017_11.tar.gz", "annotations_human_2017_11.tar.gz",
        "annotations_machine_2017_11.tar.gz"]
    assert all("validation" in f for f in select_files("v6", ("validation-*",)))
    assert [Path(f).name for f in select_files("v3", ("class-descriptions.csv",))] == ["classes_2017_11.tar.gz"]
    assert [Path(f).name for f in select_files("v7", ("*bbox*",))] == [
        "oidv6-train-annotations-bbox.csv", "validation-annotations-bbox.csv", "test-annotations-bbox.csv"]
