"""`db load` under hostile files, in SQLite and a real PostgreSQL server alike: values too
long for an index, lines of megabytes, a quote that never closes, NUL bytes, and a
libpq key=value string with a password given as --db. Each is a bad row (named) or a
clear refusal; the rest loads and the indexes build."""

from __future__ import annotations

import gzip
import io
import random
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from oidownload.inputs.text import MAX_LINE
from tests.conftest import V3, run_cli
from tests.test_db import DESCRIPTIONS, count, load, query

LABELS_HEADER = "ImageID,Source,LabelName,Confidence\n"
GOOD = "0001eeaf4aed83f9,verification,/m/0k4j,1\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """As tests/test_db.py's: each test in both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oi.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def _noise(n: int, seed: int) -> str:
    """n characters a MID may hold, random so that PostgreSQL cannot compress them small."""
    rng = random.Random(seed)
    return "".join(rng.choices("0123456789abcdefghijklmnopqrstuvwxyz_", k=n))


def test_a_mid_too_long_for_an_index_is_a_bad_row_and_later_loads_still_finish(db_url: str, tmp_path: Path) -> None:
    """A 60 KB LabelName once committed, and then every run failed at the index build."""
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_HEADER + GOOD
                      + f"0001eeaf4aed83f9,verification,/m/{_noise(60_000, 1)},1\n"  # line 3
                      + f"0001eeaf4aed83f9,{'v' * 5000},/m/0k4j,1\n"  # line 4: a Source no word is
                      + GOOD)
    boxes = tmp_path / "boxes.csv"  # the general path (not the label files' block path)
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     "0001eeaf4aed83f9,freeform,/m/0k4j,1,0.1,0.2,0.3,0.4\n"
                     f"0001eeaf4aed83f9,freeform,/m/{_noise(60_000, 2)},1,0.1,0.2,0.3,0.4\n")
    res = load(db_url, DESCRIPTIONS, labels, boxes)
    assert f"{labels.resolve()}:3: LabelName '/m/" in res.stderr and "is not a MID" in res.stderr
    assert f"{labels.resolve()}:4: Source 'vvvv" in res.stderr
    assert f"{boxes.resolve()}:3: LabelName '/m/" in res.stderr
    assert count(db_url, "labels") == 2 and count(db_url, "boxes") == 1
    assert "labels_mid" in {r[0] for r in _indexes(db_url)}
    labels.write_text(labels.read_text() + GOOD)
    res = load(db_url, labels)  # a later run finishes too
    assert count(db_url, "labels") == 3


def _indexes(url: str) -> list[tuple[str]]:
    if url.startswith("sqlite:"):
        return [(str(r[0]),) for r in query(url, "SELECT name FROM sqlite_master WHERE type = 'index'")]
    return [(str(r[0]),) for r in query(url, "SELECT indexname FROM pg_indexes")]


def test_lines_of_megabytes_are_bad_rows_never_a_traceback(db_url: str, tmp_path: Path) -> None:
    """Lines are bounded as the download bounds them (rows.MAX_LINE): a longer one is a bad
    row, read past in pieces; a class name over the csv module's field limit too."""
    huge = "0001eeaf4aed83f9,verification,/m/" + "x" * (3 << 20) + ",1\n"
    labels = tmp_path / "labels.csv.gz"
    with gzip.open(labels, "wt") as f:
        f.write(LABELS_HEADER + GOOD + huge + GOOD)
    classes = tmp_path / "class-descriptions.csv"
    classes.write_text("/m/0k4j,Car\n"
                       f"/m/0a,{'n' * 200_000}\n"  # line 2
                       f"/m/0b,\"{'q' * 40_000}\n" + f"{'q' * 40_000}\n" * 3 + "...\"\n"  # 5 lines of 40 KB: 200 KB
                       "/m/0c,Bus\n")
    images = tmp_path / "images.csv"
    good_images = (V3 / "validation" / "images.csv").read_text().splitlines(keepends=True)
    images.write_text(good_images[0] + good_images[1] + "0" * (2 << 20) + "\n" + good_images[2])
    res = load(db_url, classes, labels, images)
    assert "Traceback" not in res.stderr
    assert f"{labels.resolve()}:3: the line is longer than {MAX_LINE} characters" in res.stderr
    assert f"{classes.resolve()}:2: the line is longer than {MAX_LINE} characters" in res.stderr
    assert f"{classes.resolve()}:3: " in res.stderr
    assert f"{images.resolve()}:3: the line is longer than {MAX_LINE} characters" in res.stderr
    assert count(db_url, "labels") == 2 and count(db_url, "images") == 2
    assert {r[0] for r in query(db_url, "SELECT mid FROM classes")} == {"/m/0k4j", "/m/0c"}

    first = tmp_path / "first.csv.gz"  # a first line of megabytes: no header this is
    with gzip.open(first, "wt") as f:
        f.write("I" * (3 << 20) + "\n" + GOOD)
    res = run_cli("db", "load", first, "--db", db_url)
    assert res.returncode == 1 and "not a file oidownload can load" in res.stderr and "Traceback" not in res.stderr


def test_a_quote_that_never_closes_in_class_descriptions_is_one_bad_row(db_url: str, tmp_path: Path) -> None:
    classes = tmp_path / "class-descriptions.csv"
    good = [f"/m/0{i:03d},Class {i}\n" for i in range(40)]
    classes.write_text("".join(good[:5]) + '/m/0zzz,"Never closed\n' + "".join(good[5:]))
    res = load(db_url, classes)
    assert f"{classes.resolve()}:6: a quoted field never closes" in res.stderr
    assert count(db_url, "classes") == 40


def test_a_nul_byte_is_a_bad_row_and_the_rest_loads(db_url: str, tmp_path: Path) -> None:
    """SQLite kept a NUL; PostgreSQL stopped the whole file. Now both refuse the row."""
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_HEADER + GOOD
                      + "0001eeaf4aed83f9,verifi\0cation,/m/0k4j,1\n"  # line 3
                      + "0001eeaf4aed83f9,verification,/m/0k\0j,1\n"  # line 4
                      + GOOD)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     "0001eeaf4aed83f9,free\0form,/m/0k4j,1,0.1,0.2,0.3,0.4\n"
                     "0001eeaf4aed83f9,freeform,/m/0k4j,1,0.1,0.2,0.3,0.4\n")
    classes = tmp_path / "class-descriptions.csv"
    classes.write_text("/m/0k4j,Car\n/m/0a,Nul\0Name\n/m/0b,Bus\n")
    images = tmp_path / "images.csv"
    rows = (V3 / "validation" / "images.csv").read_text().splitlines(keepends=True)
    images.write_text(rows[0] + rows[1].replace("American Airlines", "American\0Airlines") + rows[2])
    res = load(db_url, classes, labels, boxes, images)
    assert "Traceback" not in res.stderr
    assert f"{labels.resolve()}:3: Source " in res.stderr and f"{labels.resolve()}:4: LabelName " in res.stderr
    assert f"{boxes.resolve()}:2: Source " in res.stderr
    assert f"{classes.resolve()}:2: DisplayName holds a NUL byte" in res.stderr
    assert f"{images.resolve()}:2: Title holds a NUL byte" in res.stderr
    assert count(db_url, "labels") == 2 and count(db_url, "boxes") == 1 and count(db_url, "images") == 1
    assert count(db_url, "classes") == 2


@pytest.mark.parametrize("command", ["db load", "select"])
def test_a_libpq_key_value_db_with_a_password_is_refused_and_no_file_made(command: str, tmp_path: Path) -> None:
    conninfo = "host=127.0.0.1 port=5432 password=hunter2 dbname=oi"
    args = (["db", "load", str(DESCRIPTIONS)] if command == "db load"
            else ["select", str(V3 / "validation" / "images.csv"), "-o", str(tmp_path / "x.csv"), "--class", "Car"])
    res = subprocess.run([sys.executable, "-m", "oidownload", *args, "--db", conninfo],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "key=value" in res.stderr and "PGPASSWORD" in res.stderr
    assert "hunter2" not in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_flag_out_of_range_is_a_bad_row(db_url: str, tmp_path: Path) -> None:
    """A huge IsOccluded was an OverflowError traceback in SQLite and stopped the file in
    PostgreSQL (out of range for smallint)."""
    boxes = tmp_path / "boxes.csv"
    head = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
    row = "0001eeaf4aed83f9,freeform,/m/0k4j,1,0.1,0.2,0.3,0.4,{},0,0,0,0\n"
    boxes.write_text(head + row.format("99999999999999999999999") + row.format("40000") + row.format("1")
                     + row.format("") + row.format("-1"))
    res = load(db_url, boxes)
    assert f"{boxes.resolve()}:2: IsOccluded '99999999999999999999999' is not 0, 1, -1 or empty" in res.stderr
    assert f"{boxes.resolve()}:3: IsOccluded '40000' is not 0, 1, -1 or empty" in res.stderr
    assert sorted(query(db_url, "SELECT coalesce(is_occluded, 9) FROM boxes")) == [(-1,), (1,), (9,)]


def test_over_long_lines_inside_an_archive(tmp_path: Path) -> None:
    """A member is read as a stream: an over-long first line (a header-less class file)
    is read past there too, its tail never taken for a line of its own."""
    archive = tmp_path / "meta.tar.gz"
    members = {
        "v3/class-descriptions.csv": f"/m/0k4j,{'n' * 200_000}\n/m/0a,Car\n/m/0b,\"open\n/m/0c,Bus\n",
        "v3/labels.csv": LABELS_HEADER + GOOD + "z" * (3 << 20) + "\n" + GOOD,
    }
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    url = f"sqlite:///{tmp_path / 'oi.sqlite'}"
    res = load(url, archive)
    where = f"{archive.resolve()}!v3"
    assert f"{where}/class-descriptions.csv:1: the line is longer than {MAX_LINE} characters" in res.stderr
    assert f"{where}/class-descriptions.csv:3: a quoted field never closes" in res.stderr
    assert f"{where}/labels.csv:3: the line is longer than {MAX_LINE} characters" in res.stderr
    assert sorted(query(url, "SELECT mid, name FROM classes")) == [("/m/0a", "Car"), ("/m/0c", "Bus")]
    assert count(url, "labels") == 2


def _limit_memory() -> None:
    # Reading a whole endless line dies of MemoryError within this; bounded lines never come close.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_an_endless_first_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "oidownload", "db", "load", "/dev/zero", "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory)
    assert res.returncode == 1 and "/dev/zero: not a file oidownload can load" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "x.db").exists()
