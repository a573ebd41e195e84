"""Selection by class on the real Open Images fixtures, and the annotation export.

Expected sets are computed here by a plain, independent reading of the same files
(csv.DictReader), never copied from the code under test."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pytest
from PIL import Image

from oidownload.core.errors import ConfigError
from oidownload.dataset.classes import ClassDescriptions
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Origin
from tests.conftest import V3, journal_rows, run_cli

DESCRIPTIONS = V3 / "class-descriptions.csv"
VAL = V3 / "validation"


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mid_of(name: str) -> str:
    with open(DESCRIPTIONS, newline="", encoding="utf-8") as f:
        return next(m for m, n in csv.reader(f) if n == name)


def test_class_names_resolve_with_real_quoting() -> None:
    cd = ClassDescriptions.load(DESCRIPTIONS)
    assert len(cd.names) == 19995
    assert cd.resolve(["snowman"]) == {"/m/0152hh"}
    assert cd.resolve(["SNOWMAN", "/m/02fq_6"]) == {"/m/0152hh", "/m/02fq_6"}
    assert cd.resolve(["Lemon, lime and bitters"]) == {"/m/03hgsf0"}
    assert cd.resolve(['Fiat 500 "topolino"']) == {"/m/02wvth"}
    assert cd.resolve(["Lamb's quarters"]) == {"/m/03gtp5"}
    with pytest.raises(ConfigError, match="did you mean 'Snowman'"):
        cd.resolve(["Snowmen"])


@pytest.mark.parametrize("header", [True, False])
def test_v6_descriptions_with_or_without_header(tmp_path: Path, header: bool) -> None:
    p = tmp_path / "oidv6-class-descriptions.csv"
    p.write_text(("LabelName,DisplayName\n" if header else "") + '/m/0152hh,Snowman\n/m/03hgsf0,"Lemon, lime and bitters"\n')
    cd = ClassDescriptions.load(p)
    assert cd.names == {"/m/0152hh": "Snowman", "/m/03hgsf0": "Lemon, lime and bitters"}


def select(tmp_path: Path, *args: object) -> tuple[list[dict[str, str]], str]:
    dest = tmp_path / "selected.csv"
    res = run_cli("select", VAL / "images.csv", "-o", dest, "--class-descriptions", DESCRIPTIONS, *args)
    rows = rows_of(dest)
    assert res.returncode == (0 if rows else 4), res.stderr  # 4: nothing selected
    return rows, res.stderr


def test_select_by_box_class_matches_an_independent_count(tmp_path: Path) -> None:
    wheel = mid_of("Wheel")
    boxes = rows_of(VAL / "annotations-human-bbox.csv")
    expected = {r["ImageID"] for r in boxes if r["LabelName"] == wheel}
    got, _ = select(tmp_path, "--class", "wheel", "--annotations", VAL / "annotations-human-bbox.csv")
    assert {r["ImageID"] for r in got} == expected and len(expected) > 5
    source = {r["ImageID"]: r for r in rows_of(VAL / "images.csv")}
    assert all(r == source[r["ImageID"]] for r in got)  # the rows are copied as they are


def test_attribute_filters(tmp_path: Path) -> None:
    wheel = mid_of("Wheel")
    boxes = rows_of(VAL / "annotations-human-bbox.csv")
    expected = {r["ImageID"] for r in boxes if r["LabelName"] == wheel and r["IsOccluded"] != "1" and r["IsTruncated"] != "1"}
    got, _ = select(tmp_path, "--class", "Wheel", "--annotations", VAL / "annotations-human-bbox.csv",
                    "--exclude-occluded", "--exclude-truncated")
    assert {r["ImageID"] for r in got} == expected
    everything = {r["ImageID"] for r in boxes if r["LabelName"] == wheel}
    assert expected < everything


def test_a_class_name_with_a_comma_and_label_sources(tmp_path: Path) -> None:
    name = "Ford model b, model 18, & model 40"
    mid = mid_of(name)
    human = rows_of(VAL / "annotations-human.csv")
    machine = rows_of(VAL / "annotations-machine.csv")
    want_human = {r["ImageID"] for r in human if r["LabelName"] == mid and float(r["Confidence"]) >= 0.5}
    want_machine = {r["ImageID"] for r in machine if r["LabelName"] == mid and float(r["Confidence"]) >= 0.5}
    ann = ["--annotations", VAL / "annotations-human.csv", "--annotations", VAL / "annotations-machine.csv"]
    got, _ = select(tmp_path, "--class", name, *ann, "--label-source", "human")
    assert {r["ImageID"] for r in got} == want_human
    got, _ = select(tmp_path, "--class", name, *ann, "--label-source", "machine")
    assert {r["ImageID"] for r in got} == want_machine
    got, _ = select(tmp_path, "--class", name, *ann)
    assert {r["ImageID"] for r in got} == want_human | want_machine and want_human | want_machine
    classes = tmp_path / "classes.txt"
    classes.write_text(f"# by name, commas and all\n{name}\n")
    got, _ = select(tmp_path, "--classes-file", classes, *ann, "--label-source", "human")
    assert {r["ImageID"] for r in got} == want_human


def test_negative_human_labels_do_not_select(tmp_path: Path) -> None:
    human = rows_of(VAL / "annotations-human.csv")
    negatives = [r for r in human if r["Confidence"] == "0"]
    mid = negatives[0]["LabelName"]
    positives = {r["ImageID"] for r in human if r["LabelName"] == mid and r["Confidence"] == "1"}
    got, _ = select(tmp_path, "--class", mid, "--annotations", VAL / "annotations-human.csv")
    assert {r["ImageID"] for r in got} == positives
    got, _ = select(tmp_path, "--class", mid, "--annotations", VAL / "annotations-human.csv", "--min-confidence", "0")
    assert {r["ImageID"] for r in got} == {r["ImageID"] for r in human if r["LabelName"] == mid}


def test_boxes_only_and_v3_train_boxes_have_no_attributes(tmp_path: Path) -> None:
    person = mid_of("Person")
    train = V3 / "train"
    boxes = {r["ImageID"] for r in rows_of(train / "annotations-human-bbox.csv") if r["LabelName"] == person}
    dest = tmp_path / "t.csv"
    res = run_cli("select", train / "images.csv", "-o", dest, "--class", person, "--boxes-only",
                  "--annotations", train / "annotations-human-bbox.csv", "--annotations", train / "annotations-human.csv")
    assert res.returncode == 0, res.stderr
    assert {r["ImageID"] for r in rows_of(dest)} == boxes
    res = run_cli("select", train / "images.csv", "-o", dest, "--class", person, "--exclude-occluded",
                  "--annotations", train / "annotations-human-bbox.csv")
    assert res.returncode == 2 and "IsOccluded" in res.stderr


def test_unknown_class_suggests(tmp_path: Path) -> None:
    res = run_cli("select", VAL / "images.csv", "-o", tmp_path / "x.csv", "--class", "Weel",
                  "--class-descriptions", DESCRIPTIONS, "--annotations", VAL / "annotations-human-bbox.csv")
    assert res.returncode == 2 and "unknown class name 'Weel'" in res.stderr and "'Wheel'" in res.stderr


def test_seeded_sample_is_deterministic_and_order_free(tmp_path: Path) -> None:
    a, _ = select(tmp_path, "--limit", "25", "--seed", "7")
    b, _ = select(tmp_path, "--limit", "25", "--seed", "7")
    c, _ = select(tmp_path, "--limit", "25", "--seed", "8")
    assert len(a) == 25 and a == b and {r["ImageID"] for r in a} != {r["ImageID"] for r in c}
    rows = rows_of(VAL / "images.csv")
    reversed_csv = tmp_path / "reversed.csv"
    with open(reversed_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(reversed(rows))
    dest = tmp_path / "r.csv"
    assert run_cli("select", reversed_csv, "-o", dest, "--limit", "25", "--seed", "7").returncode == 0
    assert {r["ImageID"] for r in rows_of(dest)} == {r["ImageID"] for r in a}


# -- download a class, then export its annotations --------------------------------------------


@pytest.fixture
def wheel_download(tmp_path: Path, make_origin: StartOrigin) -> tuple[Path, Corpus, Origin, set[str]]:
    real = rows_of(VAL / "images.csv")
    corpus = Corpus.generate(0, mix="tiny", seed=31, ids=[r["ImageID"] for r in real], subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    wheel = mid_of("Wheel")
    expected = {r["ImageID"] for r in rows_of(VAL / "annotations-human-bbox.csv") if r["LabelName"] == wheel}
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--class", "Wheel", "--class-descriptions", DESCRIPTIONS,
                  "--annotations", VAL / "annotations-human-bbox.csv", "--resize", "100", "--progress", "none")
    assert res.returncode == 0, res.stderr
    return out, corpus, origin, expected


def test_download_by_class_fetches_only_those(wheel_download: tuple[Path, Corpus, Origin, set[str]]) -> None:
    out, _, origin, expected = wheel_download
    assert set(journal_rows(out)) == expected
    assert sum(origin.requests.values()) == len(expected)


def _source_boxes(ids: set[str], mid: str) -> dict[str, list[tuple[float, float, float, float]]]:
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in rows_of(VAL / "annotations-human-bbox.csv"):
        if r["ImageID"] in ids and r["LabelName"] == mid:
            boxes.setdefault(r["ImageID"], []).append((float(r["XMin"]), float(r["XMax"]), float(r["YMin"]), float(r["YMax"])))
    return boxes


def test_coco_export_loads_in_pycocotools(wheel_download: tuple[Path, Corpus, Origin, set[str]]) -> None:
    from pycocotools.coco import COCO

    out, _, _, expected = wheel_download
    res = run_cli("annotations", out, "--format", "coco")  # annotations and classes remembered
    assert res.returncode == 0, res.stderr
    coco = COCO(str(out / "annotations" / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["Wheel"]
    source = _source_boxes(expected, mid_of("Wheel"))
    assert len(coco.getImgIds()) == len(expected)
    n = 0
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(out / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        want = sorted(round((b[1] - b[0]) * img["width"] * (b[3] - b[2]) * img["height"], 1) for b in source[img["open_images_id"]])
        got = sorted(round(a["area"], 1) for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])))
        assert got == pytest.approx(want, abs=0.2)
        n += len(got)
    assert n == sum(len(v) for v in source.values())


def test_yolo_export_converts_back(wheel_download: tuple[Path, Corpus, Origin, set[str]]) -> None:
    out, _, _, expected = wheel_download
    res = run_cli("annotations", out, "--format", "yolo", "-d", out / "exported")
    assert res.returncode == 0, res.stderr
    assert (out / "exported" / "yolo" / "data.yaml").read_text().endswith('names:\n  0: "Wheel"\n')
    source = _source_boxes(expected, mid_of("Wheel"))
    for image_id in expected:
        lines = (out / "exported" / "yolo" / "labels" / "validation" / image_id[:3] / f"{image_id}.txt").read_text().splitlines()
        back = []
        for line in lines:
            k, cx, cy, w, h = line.split()
            assert k == "0"
            cx_, cy_, w_, h_ = float(cx), float(cy), float(w), float(h)
            back.append((cx_ - w_ / 2, cx_ + w_ / 2, cy_ - h_ / 2, cy_ + h_ / 2))
        assert_boxes_close(sorted(back), sorted(source[image_id]), 2e-6)


def test_csv_export_is_the_filtered_rows(wheel_download: tuple[Path, Corpus, Origin, set[str]]) -> None:
    out, _, _, expected = wheel_download
    res = run_cli("annotations", out, "--format", "csv")
    assert res.returncode == 0, res.stderr
    got = rows_of(out / "annotations" / "annotations-human-bbox.csv")
    wheel = mid_of("Wheel")
    want = [r for r in rows_of(VAL / "annotations-human-bbox.csv") if r["ImageID"] in expected and r["LabelName"] == wheel]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["ImageID"] == w["ImageID"] and g["LabelName"] == w["LabelName"]
        for c in ("XMin", "XMax", "YMin", "YMax"):
            assert float(g[c]) == pytest.approx(float(w[c]), abs=1e-6)


def test_boxes_follow_an_upright_turn(tmp_path: Path, make_origin: StartOrigin) -> None:
    wheel = mid_of("Wheel")
    boxes = rows_of(VAL / "annotations-human-bbox.csv")
    image_id = next(r["ImageID"] for r in boxes if r["LabelName"] == wheel)
    corpus = Corpus.generate(0, mix="tiny", seed=32, ids=[image_id], subset="validation")
    corpus.entries[image_id].rotation = "90.0"
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url, rotation_column=True)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--orientation", "upright", "--resize", "90", "--progress", "none")
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "coco", "--annotations", VAL / "annotations-human-bbox.csv",
                  "--class", wheel)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "annotations" / "coco.json").read_text())
    (img,) = doc["images"]
    with Image.open(io_bytes(corpus.original(image_id))) as src:
        assert (img["width"], img["height"]) == (round(src.height * 90 / max(src.size)), round(src.width * 90 / max(src.size)))
    # 90 degrees counter-clockwise: (x, y) -> (y, 1 - x)
    want = sorted(
        (b[2] * img["width"], (1 - b[1]) * img["height"], (b[3] - b[2]) * img["width"], (b[1] - b[0]) * img["height"])
        for b in _source_boxes({image_id}, wheel)[image_id]
    )
    got = sorted(tuple(a["bbox"]) for a in doc["annotations"])
    assert_boxes_close(got, want, 0.01)


def assert_boxes_close(got: Sequence[tuple[float, ...]], want: Sequence[tuple[float, ...]], tol: float) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert all(abs(a - b) <= tol for a, b in zip(g, w, strict=True)), (g, w)


def io_bytes(data: bytes) -> BinaryIO:
    import io

    return io.BytesIO(data)


def test_metadata_download_resumes_and_checks_sizes(tmp_path: Path, make_origin: StartOrigin) -> None:
    import random

    from oidownload.dataset.metadata import FILES
    from tests.test_metadata import _tgz

    rng = random.Random(5)  # incompressible members, so that a 1000-byte .part is a true prefix
    files = {Path(rel).name: _tgz({f"validation/{Path(rel).name}.csv": rng.randbytes(5000)}) for rel in FILES["v3"]}
    origin = make_origin(Corpus.generate(0, mix="tiny"), extra_files={rel: files[Path(rel).name] for rel in FILES["v3"]})
    dest = tmp_path / "meta"
    dest.mkdir()
    name = "annotations_human_bbox_2017_11.tar.gz"
    (dest / f"{name}.part").write_bytes(files[name][:1000])  # an interrupted earlier download
    res = run_cli("metadata", "--version", "v3", "-o", dest, "--base-url", f"{origin.base_url}/files/")
    assert res.returncode == 0, res.stderr
    for fname, data in files.items():  # kept apart from what they unpacked (tests/test_wrong_results.py)
        assert (dest / ".archives" / fname).read_bytes() == data
    assert "resumed" in res.stdout and not list(dest.rglob("*.part"))
    res = run_cli("metadata", "--version", "v3", "-o", dest, "--base-url", f"{origin.base_url}/files/")
    assert res.stdout.count("already there") == 2 * len(files)  # the archives and what they unpacked


@pytest.mark.parametrize("code", range(1, 9))
def test_box_transform_matches_pillows_turns(code: int) -> None:
    """A painted box, turned by Pillow the way the worker turns images, lands where the
    export puts it; also through a fill crop."""
    from oidownload.dataset.geometry import to_written_frame
    from oidownload.engine.process import _EXIF_TRANSPOSE
    from oidownload.state.reader import Written

    w, h = 200, 100
    box = (0.1, 0.35, 0.2, 0.7)  # xmin, xmax, ymin, ymax
    im = Image.new("L", (w, h), 0)
    im.paste(255, (round(box[0] * w), round(box[2] * h), round(box[1] * w), round(box[3] * h)))
    for crop in (None, (0.25, 0.0, 0.75, 1.0)):
        src = im if crop is None else im.crop((round(crop[0] * w), 0, round(crop[2] * w), h))
        turned = src.transpose(_EXIF_TRANSPOSE[code]) if code != 1 else src
        x0, y0, x1, y1 = turned.getbbox()  # type: ignore[misc]
        got = to_written_frame(box, Written("0" * 16, "t", "", "jpg", turned.width, turned.height, code, crop, "original", True, 0))
        assert got is not None
        want = (x0 / turned.width, x1 / turned.width, y0 / turned.height, y1 / turned.height)
        assert all(abs(a - b) < 0.011 for a, b in zip(got, want, strict=True)), (code, crop, got, want)
