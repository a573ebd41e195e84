"""The reader, on the real Open Images rows and on every kind of malformed CSV."""

from __future__ import annotations

import csv
import gzip
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from oidownload.core.errors import InputError
from oidownload.core.records import BadRow, Row
from oidownload.inputs.csvrecords import estimate_rows
from oidownload.inputs.rows import V3_COLUMNS, Format, iter_rows, read_header
from tests.conftest import V3, V4

V3_FILES = [V3 / "train" / "images.csv", V3 / "validation" / "images.csv"]
V4_FILES = [V4 / "train-images-boxable-with-rotation.head.csv", V4 / "validation-images-with-rotation.row.csv"]


def _independent(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("path", V3_FILES + V4_FILES, ids=lambda p: p.name)
def test_every_real_row_parses_field_by_field(path: Path) -> None:
    expected = _independent(path)
    rows = list(iter_rows(path))
    assert [r for r in rows if isinstance(r, BadRow)] == []
    assert len(rows) == len(expected) > 0
    sample = random.Random(7).sample(range(len(rows)), min(60, len(rows)))
    for i in sample:
        row, want = rows[i], expected[i]
        assert isinstance(row, Row)
        assert row.image_id == want["ImageID"]
        assert row.subset == want["Subset"]
        assert row.original_url == want["OriginalURL"]
        assert row.original_size == int(want["OriginalSize"])
        assert row.original_md5 == want["OriginalMD5"]
        assert row.thumbnail_url == want["Thumbnail300KURL"]
        assert row.fields[7] == want["Title"]
        assert row.line == i + 2  # the header is line 1 and no real row spans lines
        if "Rotation" in want:
            assert row.has_rotation_column
            assert row.rotation == (None if want["Rotation"] in ("", "nan") else int(float(want["Rotation"])))
        else:
            assert not row.has_rotation_column and row.rotation is None


def test_real_quirks_html_entities_empty_thumbnails_and_query_strings() -> None:
    rows = {r.image_id: r for r in iter_rows(V3 / "train" / "images.csv") if isinstance(r, Row)}
    oneil = rows["000002b97e5471a0"]
    assert oneil.fields[6] == "Daniel X. O&#x27;Neil"
    assert oneil.author == "Daniel X. O'Neil"
    assert oneil.original_size == 7054258
    assert oneil.original_md5 == "CyvuYIfw90WAr8y0a1PaOw=="
    expected_empty = sum(1 for r in _independent(V3 / "train" / "images.csv") if r["Thumbnail300KURL"] == "")
    assert expected_empty > 0
    assert sum(1 for r in rows.values() if r.thumbnail_url == "") == expected_empty

    v4 = [r for r in iter_rows(V4 / "train-images-boxable-with-rotation.head.csv") if isinstance(r, Row)]
    assert v4[1].thumbnail_url.endswith("_z.jpg?zz=1")
    assert v4[0].rotation == 0 and v4[0].author == "Michael Beat"
    empty_rotation = next(iter(iter_rows(V4 / "validation-images-with-rotation.row.csv")))
    assert isinstance(empty_rotation, Row) and empty_rotation.rotation is None and empty_rotation.has_rotation_column


def test_header_detection() -> None:
    assert read_header(V3_FILES[0]) is Format.V3
    assert read_header(V4_FILES[0]) is Format.V4


def _write(tmp_path: Path, text: str | bytes, name: str = "images.csv") -> Path:
    p = tmp_path / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    p.write_bytes(text)
    return p


HEADER = ",".join(V3_COLUMNS) + "\n"
GOOD = (
    "000002b66c9c498e,train,https://c7.staticflickr.com/6/5499/1_o.jpg,https://www.flickr.com/photos/x/1,"
    "https://creativecommons.org/licenses/by/2.0/,https://www.flickr.com/people/x/,\"A\",\"T\",141489,"
    "XKWUMkcNib71Ge6Yq1/0/g==,https://c7.staticflickr.com/6/5499/1_z.jpg\n"
)


def _good(image_id: str) -> str:
    return GOOD.replace("000002b66c9c498e", image_id)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("ImageID,Subset,OriginalURL\n" + GOOD, "unknown header"),
        ("image_id,url\nabc,http://x/\n", "ImageID,Subset,OriginalURL,OriginalLandingURL"),
        ("\x00\x01\x02garbage\n", "unknown header"),
    ],
)
def test_bad_headers_stop_before_anything(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_header(_write(tmp_path, content))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_header(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a directory"):
        read_header(tmp_path)


def test_header_only_has_no_rows(tmp_path: Path) -> None:
    assert list(iter_rows(_write(tmp_path, HEADER))) == []


def test_bom_is_accepted(tmp_path: Path) -> None:
    rows = list(iter_rows(_write(tmp_path, b"\xef\xbb\xbf" + (HEADER + GOOD).encode())))
    assert len(rows) == 1 and isinstance(rows[0], Row)


def test_gzip_by_magic_not_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, gzip.compress((HEADER + GOOD + _good("00000000000000ff")).encode()), "list.csv")
    rows = list(iter_rows(path))
    assert [r.image_id for r in rows if isinstance(r, Row)] == ["000002b66c9c498e", "00000000000000ff"]
    assert estimate_rows(path) == 2


def test_row_estimate_without_a_second_read(tmp_path: Path) -> None:
    body = HEADER + "".join(_good(f"{i:016x}") for i in range(5000))
    plain = _write(tmp_path, body, "big.csv")
    packed = _write(tmp_path, gzip.compress(body.encode()), "big.csv.gz")
    for path in (plain, packed):
        assert abs(estimate_rows(path) - 5000) < 50


def test_truncated_gzip_reads_what_it_can_then_says_so(tmp_path: Path) -> None:
    body = HEADER + "".join(_good(f"{i:016x}") for i in range(3000))
    data = gzip.compress(body.encode())
    path = _write(tmp_path, data[: len(data) * 2 // 3], "images.csv.gz")
    got: list[Row | BadRow] = []
    with pytest.raises(InputError, match="truncated or corrupt"):
        for row in iter_rows(path):
            got.append(row)
    assert 0 < len(got) < 3000
    assert all(isinstance(r, Row) for r in got)


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        (GOOD.replace("000002b66c9c498e", "../../etc/passwd"), "is not 16 hex digits"),
        (GOOD.replace("000002b66c9c498e", "/etc/passwd00000"), "is not 16 hex digits"),
        (GOOD.replace("000002b66c9c498e", "000002b66c9c49\x008"), "is not 16 hex digits"),
        (GOOD.replace("000002b66c9c498e", "0" * 4000), "is not 16 hex digits"),
        (GOOD.replace("000002b66c9c498e", "000002b66c9c498g"), "is not 16 hex digits"),
        (GOOD.replace(",train,", ",../x,"), "Subset"),
        (GOOD.replace(",train,", ",original,"), "Subset"),
        (GOOD.replace("https://c7.staticflickr.com/6/5499/1_o.jpg", "file:///etc/passwd"), "OriginalURL"),
        (GOOD.replace("https://c7.staticflickr.com/6/5499/1_o.jpg", "ftp://x/y.jpg"), "OriginalURL"),
        (GOOD.replace("https://c7.staticflickr.com/6/5499/1_z.jpg", "javascript:alert(1)"), "Thumbnail300KURL"),
        (GOOD.replace("141489", "14.5"), "OriginalSize"),
        (GOOD.replace("141489", "-1"), "OriginalSize"),
        (GOOD.replace("XKWUMkcNib71Ge6Yq1/0/g==", "5c6594324"), "OriginalMD5"),
        (GOOD.replace("XKWUMkcNib71Ge6Yq1/0/g==", "XKWUMkcNib71Ge6Yq1/0/g!="), "OriginalMD5"),
        (GOOD.replace(",141489,", ",141489,extra,"), "expected 11 fields, found 12"),
        ("000002b66c9c498e,train\n", "expected 11 fields, found 2"),
    ],
)
def test_bad_rows_carry_file_line_and_reason_and_the_run_goes_on(tmp_path: Path, row: str, detail: str) -> None:
    path = _write(tmp_path, HEADER + _good("1111111111111111") + row + _good("2222222222222222"))
    rows = list(iter_rows(path))
    assert [r.image_id for r in rows if isinstance(r, Row)] == ["1111111111111111", "2222222222222222"]
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert len(bad) == 1
    assert bad[0].line == 3
    assert f"{path}:3:" in bad[0].detail and detail in bad[0].detail


def test_broken_quoting_loses_only_the_broken_row(tmp_path: Path) -> None:
    broken = _good("3333333333333333").replace('"A"', '"A')  # a quote that never closes
    lines = [_good(f"{i:016x}") for i in range(40)]
    lines.insert(5, broken)
    rows = list(iter_rows(_write(tmp_path, HEADER + "".join(lines))))
    ok = [r for r in rows if isinstance(r, Row)]
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert len(ok) == 40  # every good row after the broken one is still read
    assert len(bad) == 1 and bad[0].line == 7 and "never closes" in bad[0].detail


def test_multiline_quoted_title_is_one_row(tmp_path: Path) -> None:
    row = _good("4444444444444444").replace('"T"', '"first line\nsecond ""quoted"" line"')
    rows = list(iter_rows(_write(tmp_path, HEADER + row + _good("5555555555555555"))))
    assert [r.line for r in rows] == [2, 4]
    first = rows[0]
    assert isinstance(first, Row) and first.title == 'first line\nsecond "quoted" line'


def test_stray_bytes_and_nul_do_not_stop_the_run(tmp_path: Path) -> None:
    title_bytes = _good("6666666666666666").encode().replace(b'"T"', b'"caf\xe9 \xff"')
    nul_id = _good("7777777777777777").encode().replace(b"7777777777777777", b"77777777\x0077777777")
    data = HEADER.encode() + title_bytes + nul_id + _good("8888888888888888").encode()
    rows = list(iter_rows(_write(tmp_path, data)))
    assert isinstance(rows[0], Row) and "\ufffd" in rows[0].title
    assert isinstance(rows[1], BadRow) and "not 16 hex digits" in rows[1].detail
    assert isinstance(rows[2], Row)


def test_crlf_line_endings(tmp_path: Path) -> None:
    text = (HEADER + _good("9999999999999999") + _good("aaaaaaaaaaaaaaaa")).replace("\n", "\r\n")
    rows = list(iter_rows(_write(tmp_path, text)))
    assert [r.image_id for r in rows if isinstance(r, Row)] == ["9999999999999999", "aaaaaaaaaaaaaaaa"]
    assert all(isinstance(r, Row) and r.thumbnail_url.endswith(".jpg") for r in rows)


@pytest.mark.parametrize(("value", "expected"), [("0.0", 0), ("90.0", 90), ("270", 270), ("", None), ("nan", None)])
def test_rotation_values(tmp_path: Path, value: str, expected: int | None) -> None:
    header = HEADER.strip() + ",Rotation\n"
    path = _write(tmp_path, header + _good("bbbbbbbbbbbbbbbb").strip() + f",{value}\n")
    (row,) = list(iter_rows(path))
    assert isinstance(row, Row) and row.rotation == expected


def test_odd_rotation_is_a_bad_row(tmp_path: Path) -> None:
    header = HEADER.strip() + ",Rotation\n"
    (row,) = list(iter_rows(_write(tmp_path, header + _good("bbbbbbbbbbbbbbbb").strip() + ",45.0\n")))
    assert isinstance(row, BadRow) and "Rotation" in row.detail


def _reference(path: Path, skip: object) -> list[tuple[int, object]]:
    """The reader as the plain generator chain (the rule the one-loop reader follows)."""
    from oidownload.inputs.csvrecords import records
    from oidownload.inputs.text import bounded_lines, open_text

    with open_text(path) as f:
        lines = bounded_lines(f)
        next(lines, None)
        return list(records(lines, skip, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_one_loop_reader_gives_what_the_generator_chain_gives(tmp_path: Path, seed: int) -> None:
    # Every kind of record mixed at random: plain, quoted with commas, spread over lines
    # (closing and never closing), over-long (in and out of a quoted record), blank,
    # CRLF, quoted ids, and ids the skip test drops.
    from oidownload.inputs.csvrecords import MAX_RECORD_LINES, iter_records
    from oidownload.inputs.text import MAX_LINE

    rng = random.Random(seed)
    pieces: list[Callable[[int], str]] = [
        lambda i: f"{i:016x},train,http://a/{i}.jpg\n",
        lambda i: f'{i:016x},train,"a title, with a comma",x\n',
        lambda i: f'{i:016x},"a title\nover\r\nlines",x\n',
        lambda i: f'"{i:016x}",train,x\r\n',
        lambda i: "\n",
        lambda i: f'{i:016x},"never closes\n',
        lambda i: f'{i:016x},"' + "\n" * (MAX_RECORD_LINES + 2) + 'x",y\n',
        lambda i: f"{i:016x}," + "z" * (MAX_LINE + 10) + "\n",
        lambda i: f'{i:016x},"open\n' + "q" * (MAX_LINE * 2) + '\nrest",x\n',
        lambda i: f'{i:016x},a"b,c\n',
    ]
    weights = [40, 10, 5, 5, 3, 1, 1, 1, 1, 2]
    text = "ImageID,Subset,OriginalURL\n" + "".join(
        rng.choices(pieces, weights)[0](i) for i in range(400)
    )
    path = tmp_path / "mixed.csv"
    path.write_text(text, encoding="utf-8", newline="")

    def calls(log: list[str]) -> object:
        def skip(raw: str) -> bool:
            log.append(raw)
            return raw.endswith(("3", "7"))
        return skip

    want_log: list[str] = []
    got_log: list[str] = []
    want = _reference(path, calls(want_log))
    got = list(iter_records(path, calls(got_log)))  # type: ignore[arg-type]
    assert got == want
    assert got_log == want_log
    assert len(want) > 100
    assert any(isinstance(v, str) for _, v in want)  # the bad records were met
