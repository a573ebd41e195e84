"""Visual relationships and point labels (issue 23): `select` with --relationship,
--predicate, `is` attributes and point-label classes picks exactly the images an
independent reading of the file (csv.DictReader) gives, from the CSVs and from --db
(SQLite and a real PostgreSQL server).

The relationship file is the two real VRD rows plus rows generated over the real V3
validation image list with the real triplets' MIDs; no real point-label row exists here
(tests/fixtures/README.md), so the point file is generated in the published V7 layout.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import V3, V4, journal_rows, rows_of, run_cli

IMAGES = V3 / "validation" / "images.csv"
DESCRIPTIONS = V3 / "class-descriptions.csv"
VRD = V4 / "oidv6-train-annotations-vrd.rows.csv"
MAN, WOMAN, GIRL, GUITAR, TABLE, CHAIR, DESK, GLASSES = (
    "/m/04yx4", "/m/03bt1vf", "/m/05r655", "/m/0342h", "/m/04bcr3", "/m/01mzpv", "/m/01y9k5", "/m/0jyfg")
SMILE, WOOD = "/m/019nj4", "/m/083vt"
TRIPLES = [(MAN, GUITAR, "plays"), (WOMAN, GUITAR, "plays"), (GIRL, TABLE, "at"), (GUITAR, TABLE, "on"),
           (CHAIR, TABLE, "under"), (MAN, GLASSES, "wears"), (TABLE, WOOD, "is"), (MAN, SMILE, "is"),
           (DESK, WOOD, "is"), (WOMAN, CHAIR, "on")]
POINT_HEADER = ["ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                "TextLabel"]


def image_ids() -> list[str]:
    return [r["ImageID"] for r in rows_of(IMAGES)]


def make_vrd(path: Path, n: int = 3000, seed: int = 7) -> Path:
    """The real rows, then n generated ones (boxes in [0, 1], the two of `is` alike)."""
    rng = random.Random(seed)
    ids = image_ids()
    with open(VRD, newline="", encoding="utf-8") as f:
        real = list(csv.reader(f))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerows(real)
        for _ in range(n):
            a, b, p = rng.choice(TRIPLES)
            b1 = _box(rng)
            b2 = b1 if p == "is" else _box(rng)
            w.writerow([rng.choice(ids), a, b, *b1, *b2, p])
    return path


def _box(rng: random.Random) -> list[str]:
    x0, x1 = sorted(rng.random() for _ in range(2))
    y0, y1 = sorted(rng.random() for _ in range(2))
    return [f"{x0:.6f}", f"{x1:.6f}", f"{y0:.6f}", f"{y1:.6f}"]


def make_points(path: Path, n: int = 3000, seed: int = 11) -> Path:
    rng = random.Random(seed)
    ids = image_ids()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(POINT_HEADER)
        for _ in range(n):
            yes, no, unsure = rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 1)
            answer = "yes" if yes > no + unsure else "no" if no > yes + unsure else "unsure"
            w.writerow([rng.choice(ids), f"{rng.random():.5f}", f"{rng.random():.5f}",
                        rng.choice([MAN, GUITAR, TABLE, CHAIR]), answer, rng.choice(["ih", "cgp"]), yes, no, unsure,
                        ""])
    return path


def attributes_file(path: Path, header: bool) -> Path:
    path.write_text(("MID,Name\n" if header else "") + f"{SMILE},Smiling\n{WOOD},Wooden\n/m/02gy9n,Transparent\n",
                    encoding="utf-8")
    return path


def expected(path: Path, test: object) -> set[str]:
    """The independent reading: the listed images with a row the test accepts."""
    listed = set(image_ids())
    return {r.get("ImageID") or r["ImageId"] for r in rows_of(path) if test(r)} & listed  # type: ignore[operator]


def selected(tmp_path: Path, *args: object) -> set[str]:
    dest = tmp_path / "sel.csv"
    res = run_cli("select", IMAGES, "-o", dest, *args)
    assert res.returncode == 0, res.stderr
    return {r["ImageID"] for r in rows_of(dest)}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kinds")
    return {"vrd": make_vrd(d / "vrd.csv"), "points": make_points(d / "points.csv"),
            "attributes": attributes_file(d / "oidv6-attributes-description.csv", header=True)}


CASES: list[tuple[list[str], object]] = [
    (["--relationship", "Man plays Guitar"],
     lambda r: (r["LabelName1"], r["LabelName2"], r["RelationshipLabel"]) == (MAN, GUITAR, "plays")),
    (["--relationship", "* on Table"], lambda r: r["LabelName2"] == TABLE and r["RelationshipLabel"] == "on"),
    (["--relationship", "Man * Guitar"], lambda r: (r["LabelName1"], r["LabelName2"]) == (MAN, GUITAR)),
    (["--predicate", "plays"], lambda r: r["RelationshipLabel"] == "plays"),
    (["--relationship", "Girl at Table", "--relationship", "/m/01mzpv under Table"],
     lambda r: (r["LabelName1"], r["LabelName2"], r["RelationshipLabel"]) in {(GIRL, TABLE, "at"),
                                                                             (CHAIR, TABLE, "under")}),
    (["--relationship", "Table is Wooden"],
     lambda r: (r["LabelName1"], r["LabelName2"], r["RelationshipLabel"]) == (TABLE, WOOD, "is")),
    (["--relationship", "* is Wooden", "--predicate", "wears"],
     lambda r: (r["LabelName2"], r["RelationshipLabel"]) == (WOOD, "is") or r["RelationshipLabel"] == "wears"),
]


@pytest.mark.parametrize(("args", "test"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_relationships_select_what_an_independent_reading_gives(files: dict[str, Path], tmp_path: Path,
                                                                args: list[str], test: object) -> None:
    want = expected(files["vrd"], test)
    assert want  # the generated file has such rows
    got = selected(tmp_path, "--annotations", files["vrd"], "--class-descriptions", DESCRIPTIONS,
                   "--attributes", files["attributes"], *args)
    assert got == want


def test_the_real_is_rows_select_with_an_attribute_file_without_header(tmp_path: Path) -> None:
    attrs = attributes_file(tmp_path / "oidv6-attributes-description.csv", header=False)
    ids = tmp_path / "ids.txt"
    ids.write_text("000ac95750ac7399\n", encoding="utf-8")
    lst = tmp_path / "images.csv"
    lst.write_text(IMAGES.read_text(encoding="utf-8").splitlines()[0] + "\n" + ",".join(
        ["000ac95750ac7399", "train", "https://c1.staticflickr.com/1/1/1_o.jpg", "", "", "", "", "", "1",
         "AAAAAAAAAAAAAAAAAAAAAA==", ""]) + "\n", encoding="utf-8")
    dest = tmp_path / "sel.csv"
    res = run_cli("select", lst, "-o", dest, "--annotations", VRD, "--class-descriptions", DESCRIPTIONS,
                  "--attributes", attrs, "--relationship", "Man is Smiling")
    assert res.returncode == 0, res.stderr
    assert [r["ImageID"] for r in rows_of(dest)] == ["000ac95750ac7399"]


@pytest.mark.parametrize(("query", "hint"), [("Man plays Guittar", "'Guitar'"), ("Table is Woden", "'Wooden'")])
def test_a_misspelled_name_gets_the_closest_names(files: dict[str, Path], tmp_path: Path, query: str,
                                                  hint: str) -> None:
    res = run_cli("select", IMAGES, "-o", tmp_path / "x.csv", "--annotations", files["vrd"],
                  "--class-descriptions", DESCRIPTIONS, "--attributes", files["attributes"], "--relationship", query)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "did you mean" in res.stderr and hint in res.stderr
    assert not (tmp_path / "x.csv").exists()


def test_hierarchy_expands_either_side(files: dict[str, Path], tmp_path: Path) -> None:
    """Person → Man, Woman, Girl... in the real 600-class hierarchy."""
    hierarchy = V4 / "bbox_labels_600_hierarchy.json"
    got = selected(tmp_path, "--annotations", files["vrd"], "--class-descriptions", DESCRIPTIONS,
                   "--hierarchy", hierarchy, "--relationship", "Person plays Musical instrument")
    want = expected(files["vrd"], lambda r: r["RelationshipLabel"] == "plays"
                    and r["LabelName1"] in {MAN, WOMAN} and r["LabelName2"] == GUITAR)
    assert got == want and want


POINT_CASES: list[tuple[list[str], object]] = [
    ([], lambda r: r["Label"] == GUITAR and r["EstimatedYesNo"] == "yes"),
    (["--point-answer", "no"], lambda r: r["Label"] == GUITAR and r["EstimatedYesNo"] == "no"),
    (["--point-answer", "any", "--min-yes-votes", "2"], lambda r: r["Label"] == GUITAR and int(r["YesVotes"]) >= 2),
]


@pytest.mark.parametrize(("args", "test"), POINT_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_point_classes_select_what_an_independent_reading_gives(files: dict[str, Path], tmp_path: Path,
                                                                args: list[str], test: object) -> None:
    want = expected(files["points"], test)
    assert want
    got = selected(tmp_path, "--annotations", files["points"], "--class-descriptions", DESCRIPTIONS,
                   "--class", "Guitar", *args)
    assert got == want


# -- the same from --db ------------------------------------------------------------------------------

DB_CASES = [CASES[0][0], CASES[1][0], CASES[5][0], ["--class", "Guitar"], ["--class", "Guitar", "--point-answer", "no"],
            ["--class", "Table", "--relationship", "* on Table"]]


def _db_equals_csv(db: str, files: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("db", "load", files["vrd"], files["points"], files["attributes"], DESCRIPTIONS, "--db", db)
    assert res.returncode == 0, res.stderr
    for args in DB_CASES:
        from_csv = selected(tmp_path, "--annotations", files["vrd"], "--annotations", files["points"],
                            "--class-descriptions", DESCRIPTIONS, "--attributes", files["attributes"], *args)
        from_db = selected(tmp_path, "--db", db, *args)
        assert from_db == from_csv and from_csv, args


def test_db_sqlite_selects_as_the_csvs(files: dict[str, Path], tmp_path: Path) -> None:
    _db_equals_csv(str(tmp_path / "oi.sqlite"), files, tmp_path)


def test_db_postgresql_selects_as_the_csvs(files: dict[str, Path], tmp_path: Path, pg_url: str) -> None:
    _db_equals_csv(pg_url, files, tmp_path)


def test_db_load_folder_skips_the_triplets_with_a_line(tmp_path: Path) -> None:
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "oidv6-relationship-triplets.csv").write_bytes((V4 / "oidv6-relationship-triplets.head.csv").read_bytes())
    (folder / "oidv6-train-annotations-vrd.csv").write_bytes(VRD.read_bytes())
    attributes_file(folder / "oidv6-attributes-description.csv", header=False)
    db = tmp_path / "oi.sqlite"
    res = run_cli("db", "load", folder, "--db", db)
    assert res.returncode == 0, res.stderr
    assert "triplets" in res.stderr and "skipped" in res.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM relationships").fetchone() == (2,)
        assert conn.execute("SELECT name FROM attributes WHERE mid = ?", (SMILE,)).fetchone() == ("Smiling",)


def test_the_api_selects_as_the_command(files: dict[str, Path], tmp_path: Path) -> None:
    import oidownload

    res = oidownload.select(IMAGES, tmp_path / "api.csv", annotations=[files["vrd"], files["points"]],
                            class_descriptions=DESCRIPTIONS, attributes=files["attributes"],
                            relationship=["Table is Wooden"], predicate="plays", class_="Guitar",
                            point_answer="any", min_yes_votes=1)
    got = {r["ImageID"] for r in rows_of(tmp_path / "api.csv")}
    rel = expected(files["vrd"], lambda r: (r["LabelName1"], r["LabelName2"], r["RelationshipLabel"])
                   == (TABLE, WOOD, "is") or r["RelationshipLabel"] == "plays")
    pts = expected(files["points"], lambda r: r["Label"] == GUITAR and int(r["YesVotes"]) >= 1)
    assert got == rel & pts and res.rows == len(got) > 0


def test_db_load_reports_bad_relationship_and_point_rows(tmp_path: Path) -> None:
    vrd, points = tmp_path / "vrd.csv", tmp_path / "points.csv"
    lines = VRD.read_text(encoding="utf-8").splitlines()
    vrd.write_text("\n".join([*lines, lines[1].replace("/m/019nj4", "not-a-mid"), lines[1].replace("0.049375", "x", 1)])
                   + "\n", encoding="utf-8")
    points.write_text(",".join(POINT_HEADER) + "\n0001eeaf4aed83f9,0.25,0.5,/m/0342h,yes,ih,2,0,1,\n"
                      "0001eeaf4aed83f9,0.25,half,/m/0342h,yes,ih,2,0,1,\n0001eeaf4aed83f9,0.1,0.1,/m/0342h,yes,ih,two,0,1,\n",
                      encoding="utf-8")
    db = tmp_path / "oi.sqlite"
    res = run_cli("db", "load", vrd, points, "--db", db)
    assert res.returncode == 0, res.stderr
    assert f"{vrd.resolve()}:4: LabelName2 'not-a-mid' is not a MID" in res.stderr
    assert f"{vrd.resolve()}:5:" in res.stderr and f"{points.resolve()}:3:" in res.stderr
    assert f"{points.resolve()}:4:" in res.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT kind, rows || '/' || bad_rows FROM loaded_files").fetchall()) == {
            "relationships": "2/2", "points": "1/2"}
    res = run_cli("db", "load", vrd, points, "--db", db)  # resume: nothing changed, nothing loaded again
    assert res.returncode == 0 and res.stderr.count("unchanged") == 2, res.stderr


def test_download_fetches_exactly_the_relationship_selection(files: dict[str, Path], tmp_path: Path,
                                                             make_origin: StartOrigin) -> None:
    """download shares select's plan: the images fetched are the independent reading's."""
    want = expected(files["vrd"], lambda r: (r["LabelName1"], r["LabelName2"], r["RelationshipLabel"])
                    == (GIRL, TABLE, "at"))
    ids = sorted(want)[:6]
    corpus = Corpus.generate(0, mix="tiny", seed=23, ids=[*ids, *sorted(set(image_ids()) - want)[:6]],
                             subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--progress", "none", "--annotations", files["vrd"],
                  "--class-descriptions", DESCRIPTIONS, "--relationship", "Girl at Table")
    assert res.returncode == 0, res.stderr
    assert sorted(journal_rows(out)) == ids and sum(origin.requests.values()) == len(ids)


@pytest.mark.parametrize(("text", "parts"), [
    ("Man plays Guitar", ("Man", "plays", "Guitar")),
    ("Coffee table on Floor", ("Coffee table", "on", "Floor")),
    ("* on Table", ("*", "on", "Table")),
    ("Man * Musical instrument", ("Man", "*", "Musical instrument")),
    ("  Table   is Wooden ", ("Table", "is", "Wooden")),
])
def test_a_query_splits_at_its_predicate(text: str, parts: tuple[str, str, str]) -> None:
    from oidownload.dataset.relationships import split_query

    assert split_query(text) == parts


@pytest.mark.parametrize(("text", "message"), [
    ("Man Guitar", "give 'SUBJECT PREDICATE OBJECT'"),
    ("Man on Table on Floor", "several words could be the predicate"),
    ("Man plyas Guitar", "did you mean 'plays'"),
])
def test_a_bad_query_says_why(text: str, message: str) -> None:
    from oidownload.core.errors import ConfigError
    from oidownload.dataset.relationships import split_query

    with pytest.raises(ConfigError, match=message):
        split_query(text)
