"""Hierarchy-aware classes and balanced per-class subsets, on the real fixtures.

Expected sets come from an independent walk of the JSON (plain recursion over the
dicts) and a plain csv.DictReader of the annotations, never from the code under test."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import V3, V4, journal_rows, run_cli
from tests.test_select import mid_of, rows_of

HIERARCHY = V4 / "bbox_labels_600_hierarchy.json"
DESCRIPTIONS = V3 / "class-descriptions.csv"
VAL = V3 / "validation"
BOXES = VAL / "annotations-human-bbox.csv"


def under(mid: str, *, parts: bool) -> set[str]:
    """Every MID under any occurrence of mid in the JSON, mid included."""
    keys = ("Subcategory", "Part") if parts else ("Subcategory",)
    found: set[str] = set()

    def collect(node: dict[str, object]) -> None:
        found.add(node["LabelName"])  # type: ignore[arg-type]
        for k in keys:
            for kid in node.get(k, []):  # type: ignore[attr-defined]
                collect(kid)

    def search(node: dict[str, object]) -> None:
        if node["LabelName"] == mid:
            collect(node)
        for k in ("Subcategory", "Part"):
            for kid in node.get(k, []):  # type: ignore[attr-defined]
                search(kid)

    search(json.loads(HIERARCHY.read_text()))
    return found


def depth_below(mid: str) -> int:
    def depth(node: dict[str, object]) -> int:
        return 1 + max((depth(k) for k in node.get("Subcategory", [])), default=-1)  # type: ignore[attr-defined]

    best = 0

    def search(node: dict[str, object]) -> None:
        nonlocal best
        if node["LabelName"] == mid:
            best = max(best, depth(node))
        for k in ("Subcategory", "Part"):
            for kid in node.get(k, []):  # type: ignore[attr-defined]
                search(kid)

    search(json.loads(HIERARCHY.read_text()))
    return best


def select(tmp_path: Path, *args: object, images: Path = VAL / "images.csv") -> tuple[set[str], str]:
    dest = tmp_path / "selected.csv"
    res = run_cli("select", images, "-o", dest, "--class-descriptions", DESCRIPTIONS, *args)
    assert res.returncode == 0, res.stderr
    return {r["ImageID"] for r in rows_of(dest)}, res.stderr


def images_with(mids: set[str], path: Path = BOXES) -> set[str]:
    return {r["ImageID"] for r in rows_of(path) if r["LabelName"] in mids and float(r["Confidence"]) >= 0.5}


def test_vehicle_selects_its_subcategories_at_any_depth(tmp_path: Path) -> None:
    vehicle = mid_of("Vehicle")
    assert depth_below(vehicle) >= 2  # Vehicle > Land vehicle > Car > Limousine
    want_mids = under(vehicle, parts=False)
    assert {mid_of("Car"), mid_of("Limousine"), mid_of("Van")} <= want_mids
    assert mid_of("Auto part") not in want_mids  # a Part of Land vehicle, not a kind of it
    want = images_with(want_mids)
    got, err = select(tmp_path, "--class", "Vehicle", "--hierarchy", HIERARCHY, "--annotations", BOXES)
    assert got == want and len(want) > len(images_with({vehicle}))
    assert f"{len(want_mids)} classes" in err
    plain, _ = select(tmp_path, "--class", "Vehicle", "--hierarchy", HIERARCHY, "--no-expand", "--annotations", BOXES)
    assert plain == images_with({vehicle})
    with_parts, _ = select(tmp_path, "--class", "Vehicle", "--hierarchy", HIERARCHY, "--with-parts",
                           "--annotations", BOXES)
    parts_mids = under(vehicle, parts=True)
    assert mid_of("Wheel") in parts_mids and with_parts == images_with(parts_mids) and with_parts > got


def test_parts_of_a_person_only_with_parts(tmp_path: Path) -> None:
    person = mid_of("Person")
    sub, parts = under(person, parts=False), under(person, parts=True)
    assert mid_of("Man") in sub and mid_of("Arm") not in sub and mid_of("Arm") in parts
    got, _ = select(tmp_path, "--class", person, "--hierarchy", HIERARCHY, "--annotations", BOXES)
    assert got == images_with(sub)
    got, _ = select(tmp_path, "--class", person, "--hierarchy", HIERARCHY, "--with-parts", "--annotations", BOXES)
    assert got == images_with(parts) and images_with(parts) > images_with(sub)


def test_a_class_under_several_parents_is_reached_from_each() -> None:
    from oidownload.dataset.hierarchy import Hierarchy

    doc = json.loads(HIERARCHY.read_text())
    parents: dict[str, set[str]] = {}

    def walk(node: dict[str, object]) -> None:
        for kid in node.get("Subcategory", []):  # type: ignore[attr-defined]
            parents.setdefault(kid["LabelName"], set()).add(node["LabelName"])  # type: ignore[arg-type]
            walk(kid)

    walk(doc)
    child, ps = next((c, p) for c, p in sorted(parents.items()) if len(p) >= 2)
    tree = Hierarchy.load(HIERARCHY)
    for p in ps:
        assert child in tree.descendants(p)
        assert tree.descendants(p) == under(p, parts=False)


def test_classes_prints_the_subtree_with_names() -> None:
    res = run_cli("classes", "--hierarchy", HIERARCHY, "--class", "Car", "--class-descriptions", DESCRIPTIONS)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"Car ({mid_of('Car')})"
    assert {line.strip() for line in lines[1:]} == {f"Limousine ({mid_of('Limousine')})", f"Van ({mid_of('Van')})"}
    assert all(line.startswith("  ") for line in lines[1:])
    # Parts are listed with --with-parts only, as download selects them (tests/test_conventions.py).
    res = run_cli("classes", "--hierarchy", HIERARCHY, "--class-descriptions", DESCRIPTIONS, "--with-parts")
    shown = {line.strip().removeprefix("[part] ").rsplit(" (", 1)[1].rstrip(")") for line in res.stdout.splitlines()}
    assert shown == under(json.loads(HIERARCHY.read_text())["LabelName"], parts=True)
    assert "[part] Human body" in res.stdout


@pytest.mark.parametrize("doc, why", [
    ("[1, 2]", "a JSON list"),
    ('{"LabelName": "/m/0bl9f", "Subcategory": {"LabelName": "/m/0k4j"}}', "Subcategory is not a list"),
    ('{"LabelName": "Car"}', "is not a MID"),
    ('{"LabelName": "/m/0bl9f", "Children": []}', "unknown key 'Children'"),
    ("{not json", "not JSON"),
])
def test_a_hierarchy_of_another_shape_is_refused(tmp_path: Path, doc: str, why: str) -> None:
    bad = tmp_path / "h.json"
    bad.write_text(doc)
    res = run_cli("select", VAL / "images.csv", "-o", tmp_path / "x.csv", "--class", "/m/0k4j",
                  "--hierarchy", bad, "--annotations", BOXES)
    assert res.returncode == 1 and why in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_class_not_in_the_hierarchy_is_selected_by_itself(tmp_path: Path) -> None:
    human = rows_of(VAL / "annotations-human.csv")
    tree_mids = under(json.loads(HIERARCHY.read_text())["LabelName"], parts=True)
    mid = next(r["LabelName"] for r in human if r["LabelName"] not in tree_mids and r["Confidence"] == "1")
    got, err = select(tmp_path, "--class", mid, "--hierarchy", HIERARCHY, "--annotations", VAL / "annotations-human.csv")
    assert got == images_with({mid}, VAL / "annotations-human.csv")
    assert f"({mid}) is not in the hierarchy: selected by itself" in err


# -- balanced subsets -------------------------------------------------------------------------


def key(seed: int, image_id: str) -> bytes:
    """The documented rank: the first 8 bytes of BLAKE2b over 'seed:ImageID'."""
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def expected_per_class(classes: dict[str, set[str]], listed: set[str], n: int, seed: int) -> set[str]:
    """classes: requested class → the MIDs it selects; listed: ids in the input list."""
    boxes = rows_of(BOXES)
    out: set[str] = set()
    for mids in classes.values():
        have = sorted({r["ImageID"] for r in boxes if r["LabelName"] in mids} & listed, key=lambda i: key(seed, i))
        out |= set(have[:n])
    return out


def test_limit_per_class_is_the_n_smallest_keys_of_each_class(tmp_path: Path) -> None:
    names = ["Wheel", "Car", "Dog", "Cello"]
    listed = {r["ImageID"] for r in rows_of(VAL / "images.csv")}
    want = expected_per_class({n: {mid_of(n)} for n in names}, listed, 4, 11)
    args = [a for n in names for a in ("--class", n)]
    got, err = select(tmp_path, *args, "--annotations", BOXES, "--limit-per-class", 4, "--seed", 11)
    assert got == want
    cello_images = len(images_with({mid_of("Cello")}))
    assert cello_images < 4  # so one class is short
    assert f"Cello ({mid_of('Cello')}): {cello_images} of 4 (fewer available)" in err
    assert f"Wheel ({mid_of('Wheel')}): 4 of 4" in err and "had fewer than 4: Cello" in err
    other, _ = select(tmp_path, *args, "--annotations", BOXES, "--limit-per-class", 4, "--seed", 12)
    assert other != got


def test_limit_per_class_does_not_depend_on_row_order_or_files(tmp_path: Path) -> None:
    rows = rows_of(BOXES)
    header = list(rows[0])
    parts = [tmp_path / "b1.csv", tmp_path / "b2.csv"]
    shuffled = sorted(rows, key=lambda r: hashlib.md5(repr(r).encode()).digest())
    for i, part in enumerate(parts):
        with open(part, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            w.writeheader()
            w.writerows(shuffled[i::2])
    common = ["--class", "Vehicle", "--class", "Person", "--hierarchy", HIERARCHY, "--limit-per-class", 3, "--seed", 5]
    a, _ = select(tmp_path, *common, "--annotations", BOXES)
    b, _ = select(tmp_path, *common, "--annotations", parts[1], "--annotations", parts[0])
    assert a == b and 5 <= len(a) <= 6  # an image may carry both classes
    vehicle, person = under(mid_of("Vehicle"), parts=False), under(mid_of("Person"), parts=False)
    listed = {r["ImageID"] for r in rows_of(VAL / "images.csv")}
    assert a == expected_per_class({"v": vehicle, "p": person}, listed, 3, 5)


def test_limit_per_class_skips_images_missing_from_the_input_list(tmp_path: Path) -> None:
    """Annotations that name images the list lacks: the picks come from the list only,
    still the smallest keys, and the shortfall is reported."""
    images = rows_of(VAL / "images.csv")
    wheel = mid_of("Wheel")
    wheel_ids = sorted({r["ImageID"] for r in rows_of(BOXES) if r["LabelName"] == wheel}, key=lambda i: key(3, i))
    dropped = set(wheel_ids[:6])  # the six best-ranked Wheel images are not in this list
    part = tmp_path / "images.csv"
    with open(part, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(images[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(r for r in images if r["ImageID"] not in dropped)
    got, err = select(tmp_path, "--class", "Wheel", "--annotations", BOXES, "--limit-per-class", 5, "--seed", 3,
                      images=part)
    assert got == set(wheel_ids[6:11])
    assert f"Wheel ({wheel}): 5 of 5; " in err and "are not in the input list" in err


def test_limit_per_class_must_be_positive(tmp_path: Path) -> None:
    for bad in ("0", "-3"):
        res = run_cli("select", VAL / "images.csv", "-o", tmp_path / "x.csv", "--class", "/m/083wq",
                      "--annotations", BOXES, "--limit-per-class", bad)
        assert res.returncode == 2 and "--limit-per-class" in res.stderr


def test_shards_of_a_balanced_download_add_up_to_the_selection(tmp_path: Path, make_origin: StartOrigin) -> None:
    real = rows_of(VAL / "images.csv")
    corpus = Corpus.generate(0, mix="tiny", seed=41, ids=[r["ImageID"] for r in real], subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    opts = ["--class", "Vehicle", "--class", "Person", "--class-descriptions", DESCRIPTIONS, "--hierarchy", HIERARCHY,
            "--annotations", BOXES, "--limit-per-class", 4, "--seed", 9]
    want, _ = select(tmp_path, *opts, images=manifest)
    out = tmp_path / "out"
    for i in range(2):
        res = run_cli("download", manifest, "-o", out, *opts, "--num-shards", 2, "--shard-index", i,
                      "--progress", "none", "--resize", 32)
        assert res.returncode == 0, res.stderr
    assert set(journal_rows(out)) == want and len(want) >= 7
    assert sum(origin.requests.values()) == len(want)


def test_annotations_of_a_hierarchy_download_carry_the_subcategories(tmp_path: Path, make_origin: StartOrigin) -> None:
    real = rows_of(VAL / "images.csv")
    corpus = Corpus.generate(0, mix="tiny", seed=43, ids=[r["ImageID"] for r in real], subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--class", "Vehicle", "--hierarchy", HIERARCHY,
                  "--class-descriptions", DESCRIPTIONS, "--annotations", BOXES, "--resize", 32, "--progress", "none")
    assert res.returncode == 0, res.stderr
    vehicle = under(mid_of("Vehicle"), parts=False)
    assert set(journal_rows(out)) == images_with(vehicle)
    for args in ([], ["--class", "Vehicle", "--hierarchy", HIERARCHY]):
        res = run_cli("annotations", out, "--format", "csv", "-d", tmp_path / "ann", *args)
        assert res.returncode == 0, res.stderr
        got = rows_of(tmp_path / "ann" / BOXES.name)
        want = [r for r in rows_of(BOXES) if r["LabelName"] in vehicle]
        assert [(r["ImageID"], r["LabelName"]) for r in got] == [(r["ImageID"], r["LabelName"]) for r in want]
        assert {r["LabelName"] for r in got} > {mid_of("Vehicle")}  # Car, Land vehicle... too
