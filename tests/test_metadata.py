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
from tests.conftest import V3
from tests.test_select import DESCRIPTIONS, VAL, rows_of

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
        "oidv6-train-annotations-bbox.csv", "validation-annotations-bbox.csv", "test-annotations-bbox.csv",
        "bbox_labels_600_hierarchy.json"]  # the class hierarchy, new in V6/V7's classes (issue 23)


# -- the V5-V7 groups (issues 22, 23): segmentation, masks, relationships, points, narratives --

NEW_GROUPS = ("segmentation", "masks", "relationships", "points", "narratives", "narratives-traces")
ASKED_ONLY = ("masks", "narratives-traces")  # GBs: never part of the default selection


def _served(version: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every file of every group of the version, as the origin serves it under /files/
    (the narratives at the documented sub-path of --base-url), each with bytes of its
    own; and each file's path at the origin by its table path."""
    from oidownload.dataset.releases import GROUPS, NARRATIVES_SUBPATH, Host

    where = {f: (NARRATIVES_SUBPATH + f if g.host is Host.NARRATIVES else f) for g in GROUPS[version] for f in g.files}
    return {w: f"{w}\n".encode() * 3 for w in where.values()}, {f: f"/files/{w}" for f, w in where.items()}


def _group(version: str, name: str) -> tuple[str, ...]:
    from oidownload.dataset.releases import GROUPS

    return next(g.files for g in GROUPS[version] if g.name == name)


def test_the_default_selection_fetches_every_default_group_and_no_mask_zip_or_trace(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    from oidownload.dataset.releases import GROUPS
    from tests.conftest import run_cli

    for version in ("v6", "v7"):
        files, at = _served(version)
        origin = make_origin(Corpus.generate(0, mix="tiny"), extra_files=files)
        dest = tmp_path / version
        res = run_cli("metadata", "--version", version, "-o", dest, "--base-url", f"{origin.base_url}/files/")
        assert res.returncode == 0, res.stderr
        wanted = list(dict.fromkeys(f for g in GROUPS[version] if g.default for f in g.files))
        assert dict(origin.requests) == {at[f]: 1 for f in wanted}  # nothing else asked for, each once
        for f in wanted:
            assert (dest / Path(f).name).read_bytes() == files[at[f].removeprefix("/files/")], f
        assert not list(dest.glob("*.zip")) and not list(dest.glob("*localized_narratives*"))
        assert {g.name for g in GROUPS[version] if not g.default} == set(ASKED_ONLY)


def test_only_picks_each_new_group_by_name(tmp_path: Path, make_origin: StartOrigin) -> None:
    from oidownload.dataset.metadata import download_metadata

    files, at = _served("v7")
    origin = make_origin(Corpus.generate(0, mix="tiny"), extra_files=files)
    for name in NEW_GROUPS:
        origin.requests.clear()
        dest = tmp_path / name
        got = download_metadata("v7", dest, base_url=f"{origin.base_url}/files/", only=(name,), bars=False)
        group = _group("v7", name)
        assert [r.name for r in got] == [Path(f).name for f in group] and {r.state for r in got} == {"downloaded"}
        assert dict(origin.requests) == {at[f]: 1 for f in group}, name
        for f in group:
            assert (dest / Path(f).name).read_bytes() == files[at[f].removeprefix("/files/")]
        assert sorted(p.name for p in dest.iterdir()) == sorted(Path(f).name for f in group)


def test_each_group_has_the_official_names() -> None:
    """The names the research notes confirmed, spelled out once more than the table does."""
    from oidownload.dataset.releases import select_files

    def names(version: str, group: str) -> list[str]:
        return [Path(f).name for f in select_files(version, (group,))]

    assert names("v7", "segmentation") == [
        "train-annotations-object-segmentation.csv", "validation-annotations-object-segmentation.csv",
        "test-annotations-object-segmentation.csv", "classes-segmentation.txt", "bbox_labels_600_hierarchy.json"]
    assert select_files("v6", ("segmentation",))[0] == "v5/train-annotations-object-segmentation.csv"
    assert names("v6", "relationships") == names("v7", "relationships") == [
        "oidv6-train-annotations-vrd.csv", "oidv6-validation-annotations-vrd.csv", "oidv6-test-annotations-vrd.csv",
        "oidv6-attributes-description.csv", "oidv6-relationship-triplets.csv", "oidv6-relationships-description.csv"]
    assert names("v7", "points") == [
        "oidv7-train-annotations-point-labels.csv", "oidv7-val-annotations-point-labels.csv",
        "oidv7-test-annotations-point-labels.csv", "oidv7-class-descriptions.csv"]
    assert names("v7", "narratives") == [
        "open_images_train_v6_captions.jsonl", "open_images_validation_captions.jsonl",
        "open_images_test_captions.jsonl"]
    assert names("v7", "narratives-traces") == [
        *(f"open_images_train_v6_localized_narratives-0000{k}-of-00010.jsonl" for k in range(10)),
        "open_images_validation_localized_narratives.jsonl", "open_images_test_localized_narratives.jsonl"]
    assert len(names("v6", "masks")) == 48 and names("v6", "masks")[:2] == ["train-masks-0.zip", "train-masks-1.zip"]
    assert "points" not in _group_names("v6") and "points" in _group_names("v7")  # point labels are V7's
    for version in ("v3", "v6", "v7"):  # one folder: no two files of a version share a name
        every = [Path(f).name for f in select_files(version, tuple(_group_names(version)))]
        assert len(every) == len(set(every)), version


def _group_names(version: str) -> list[str]:
    from oidownload.dataset.releases import GROUPS

    return [g.name for g in GROUPS[version]]


def test_a_wildcard_reaches_the_asked_only_groups_only_when_it_matches_no_default_file() -> None:
    from oidownload.dataset.releases import select_files

    assert not [f for f in select_files("v7", ("validation-*",)) if f.endswith(".zip")]
    assert not [f for f in select_files("v7", ("*",)) if f.endswith(".zip") or "localized_narratives" in f]
    assert select_files("v7", ("validation-masks-*",)) == [
        f"v5/validation-masks/validation-masks-{c}.zip" for c in "0123456789abcdef"]
    assert select_files("v7", ("train-masks-3.zip",)) == ["v5/train-masks/train-masks-3.zip"]
    assert select_files("v7", ("*.jsonl",)) == list(_group("v7", "narratives"))  # captions; the traces need asking
    assert len(select_files("v7", ("*localized_narratives*",))) == 12
    assert select_files("v7", ("masks", "validation-*"))[:1] == ["v5/validation-images-with-rotation.csv"]


def test_mask_zip_urls_are_exposed_for_the_masks_feature() -> None:
    import pytest

    from oidownload.dataset.releases import (
        BASE_URL,
        MASK_DIGITS,
        MASK_SPLITS,
        MASKS_URL,
        mask_zip_url,
        select_files,
    )

    assert MASKS_URL == "https://storage.googleapis.com/openimages/v5/"
    assert mask_zip_url("validation", "A") == MASKS_URL + "validation-masks/validation-masks-a.zip"
    assert mask_zip_url("train", "0", "http://mirror/masks") == "http://mirror/masks/train-masks/train-masks-0.zip"
    # The group `metadata --only masks` fetches is the same set of URLs.
    assert [BASE_URL + f for f in select_files("v7", ("masks",))] == [
        mask_zip_url(s, c) for s in MASK_SPLITS for c in MASK_DIGITS]
    for split, digit in (("val", "0"), ("train", "g"), ("train", "00"), ("train", "")):
        with pytest.raises(ValueError):
            mask_zip_url(split, digit)


def test_list_names_every_group_with_its_files_hosts_and_known_sizes(tmp_path: Path) -> None:
    from oidownload.dataset.releases import GROUPS, NARRATIVES_BASE_URL
    from tests.conftest import run_cli

    res = run_cli("metadata", "--version", "v7", "--list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    headers = {line.split()[1]: line for line in lines if line.startswith("# ")}
    assert list(headers) == [g.name for g in GROUPS["v7"]]
    for name in NEW_GROUPS:
        assert ("only when asked" in headers[name]) == (name in ASKED_ONLY), headers[name]
    urls = {line.split()[0] for line in lines if not line.startswith("#")}
    assert "https://storage.googleapis.com/openimages/v5/test-masks/test-masks-f.zip" in urls
    assert "https://storage.googleapis.com/openimages/v7/oidv7-val-annotations-point-labels.csv" in urls
    assert NARRATIVES_BASE_URL + "open_images_test_localized_narratives.jsonl" in urls
    assert f"{NARRATIVES_BASE_URL}open_images_validation_captions.jsonl  # 10.1 MB" in lines
    assert "points" not in run_cli("metadata", "--version", "v6", "--list").stdout

    # A mirror: --base-url moves the narratives to its sub-path, --narratives-base-url anywhere.
    res = run_cli("metadata", "--list", "--only", "narratives", "--base-url", "http://mirror/oi")
    assert res.stdout.splitlines()[1] == "http://mirror/oi/localized-narratives/annotations/" \
        "open_images_train_v6_captions.jsonl  # 138 MB"
    res = run_cli("metadata", "--list", "--only", "narratives-traces", "--base-url", "http://mirror/oi",
                  "--narratives-base-url", "http://other/ln")
    assert res.stdout.splitlines()[-1] == "http://other/ln/open_images_test_localized_narratives.jsonl"


def test_narratives_base_url_redirects_only_the_narratives(tmp_path: Path, make_origin: StartOrigin) -> None:
    from oidownload.dataset.metadata import download_metadata

    captions = _group("v7", "narratives")
    origin = make_origin(Corpus.generate(0, mix="tiny"), extra_files={
        **{f"ln/{f}": f.encode() for f in captions}, "v5/classes-segmentation.txt": b"/m/01\n"})
    got = download_metadata("v7", tmp_path, base_url=f"{origin.base_url}/files/", only=("narratives", "classes-seg*"),
                            narratives_base_url=f"{origin.base_url}/files/ln", bars=False)
    assert [r.name for r in got] == ["classes-segmentation.txt", *captions]
    assert dict(origin.requests) == {"/files/v5/classes-segmentation.txt": 1, **{f"/files/ln/{f}": 1 for f in captions}}


def test_the_readme_table_names_every_group_and_whether_it_is_fetched_by_default() -> None:
    from oidownload.dataset.releases import GROUPS

    table = (ROOT / "README.md").read_text().split("| group | what | versions | by default |", 1)[1].split("\n\n", 1)[0]
    rows = {cells[1].strip("` "): cells for line in table.splitlines()[2:] if (cells := line.split("|"))}
    for version, groups in GROUPS.items():
        for g in groups:
            versions, default = rows[g.name][3].strip(), rows[g.name][4].strip()
            assert versions == "all" or version in versions.split(", "), (g.name, version)
            assert default.startswith("yes" if g.default else f"no: `--only {g.name}`"), g.name
    assert set(rows) == {g.name for groups in GROUPS.values() for g in groups}
