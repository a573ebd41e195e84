"""Credit for the CC BY licences: who made each downloaded image, and under which
licence, from the input lists' rows (HTML entities decoded). `annotations --format
attribution` writes ATTRIBUTION.csv (a cell a spreadsheet would run as a formula gets a
leading apostrophe) and a readable ATTRIBUTION.html grouped by licence, in which nothing
from the lists can run (every text escaped, only http(s) links).
"""

from __future__ import annotations

import contextlib
import csv
import html
import re
import sqlite3
from collections import Counter
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from oidownload.core.fsio import Tree
from oidownload.core.records import Row, Status, clean_text
from oidownload.inputs.rows import V3_COLUMNS, iter_rows
from oidownload.state.reader import StateDir, Written

COLUMNS = ("ImageID", "Location", "Title", "Author", "AuthorProfileURL", "License", "LicenseName", "OriginalURL",
           "OriginalLandingURL")
_AT = {name: V3_COLUMNS.index(name) for name in
       ("OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author", "Title")}
_CC = re.compile(r"https?://creativecommons\.org/(licenses|publicdomain)/([a-z-]+)/(\d+(?:\.\d+)*)/?", re.I)
_WEB_URL = re.compile(r"https?://[^\s\"'<>\\`]+", re.I)
UNKNOWN = "unknown (the input row is gone)"


@dataclass(frozen=True, slots=True)
class Credit:
    title: str
    author: str
    author_url: str
    license: str
    original_url: str
    landing_url: str

    @property
    def license_name(self) -> str:
        return license_name(self.license)


NO_CREDIT = Credit("", "", "", "", "", "")


def license_name(url: str) -> str:
    """'CC BY 2.0' for https://creativecommons.org/licenses/by/2.0/, CC0 for the public
    domain dedication; anything else is named by its URL."""
    m = _CC.fullmatch(url.strip())
    if m is None:
        return url.strip() or UNKNOWN
    kind, version = m.group(2).lower(), m.group(3)
    if m.group(1).lower() == "publicdomain":
        return f"CC0 {version}" if kind == "zero" else f"Public Domain Mark {version}"
    return f"CC {kind.upper()} {version}"


def _text(field: str, limit: int) -> str:
    # The lists publish Author and Title HTML-escaped (O&#x27;Neil, &amp;): the text is
    # what they stand for.
    return clean_text(html.unescape(field), limit).strip()


def credit_of(fields: list[str]) -> Credit:
    """The credit in an Open Images row (V3 or V4+ columns)."""
    if len(fields) < len(V3_COLUMNS):
        return NO_CREDIT
    return Credit(
        title=_text(fields[_AT["Title"]], 500), author=_text(fields[_AT["Author"]], 300),
        author_url=clean_text(fields[_AT["AuthorProfileURL"]], 2048).strip(),
        license=clean_text(fields[_AT["License"]], 300).strip(),
        original_url=clean_text(fields[_AT["OriginalURL"]], 2048).strip(),
        landing_url=clean_text(fields[_AT["OriginalLandingURL"]], 2048).strip(),
    )


def credits(state: StateDir, lists: Sequence[Path] | None = None,
            within: Container[str] = ()) -> Iterator[tuple[str, Credit]]:
    """(ImageID, credit) of every written image whose input row is still at hand; or,
    given `lists` (image CSVs, e.g. a piped input saved to a file), of the images
    `within` that they list."""
    if lists is not None:
        for path in lists:
            for row in iter_rows(path):
                if isinstance(row, Row) and row.image_id in within:
                    yield row.image_id, credit_of(row.fields)
        return
    for info in state.inputs():
        for joined in state.joined(info):
            if joined.entry.status == Status.OK and joined.fields is not None:
                yield joined.entry.image_id, credit_of(joined.fields)


@dataclass
class AttributionResult:
    csv: Path
    html: Path
    images: int
    by_license: Counter[str]
    uncredited: int  # written images whose input row is gone


def write_attribution(state: StateDir, images: dict[str, Written], tree: Tree,
                      lists: Sequence[Path] | None = None) -> AttributionResult:
    """ATTRIBUTION.csv (one row per written image, in the order of the input lists)
    and ATTRIBUTION.html (the same, grouped by licence). One pass over the credits:
    each image's list item goes into a temporary on-disk SQLite table beside its CSV
    row, and the page reads them back by licence through an index, so the time stays
    linear in the images (however many distinct licences) and the memory bounded."""
    by_license: Counter[str] = Counter()
    seen: set[str] = set()
    with contextlib.closing(_items_table()) as items:
        with tree.atomic_file("ATTRIBUTION.csv") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(COLUMNS)

            def add(image_id: str, location: str, credit: Credit) -> None:
                w.writerow(_row(image_id, location, credit))
                by_license[credit.license] += 1
                items.execute("INSERT INTO items VALUES (?, ?)", (credit.license, _item(location, credit)))

            for image_id, credit in credits(state, lists, images):
                if image_id in images and image_id not in seen:
                    seen.add(image_id)
                    add(image_id, images[image_id].location, credit)
            for image_id, image in images.items():
                if image_id not in seen:
                    add(image_id, image.location, NO_CREDIT)
        items.execute("CREATE INDEX by_license ON items (license)")
        with tree.atomic_file("ATTRIBUTION.html") as out:
            _write_html(out, items, by_license)
    return AttributionResult(tree.path / "ATTRIBUTION.csv", tree.path / "ATTRIBUTION.html", len(images), by_license,
                             len(images) - len(seen))


def _items_table() -> sqlite3.Connection:
    # "": a private temporary database that SQLite keeps on disk (in TMPDIR) once it
    # outgrows its cache, and deletes when closed. rowid keeps the lists' order.
    conn = sqlite3.connect("", isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE items (license TEXT NOT NULL, item TEXT NOT NULL)")
    conn.execute("BEGIN")
    return conn


# A spreadsheet runs a cell that starts with one of these as a formula (`=cmd|' /C
# calc'!A0`, `=HYPERLINK(…&A1)`): OWASP's advice for CSV files is a leading apostrophe,
# which spreadsheets show as text and hide.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def _row(image_id: str, location: str, c: Credit) -> list[str]:
    return [_cell(v) for v in (image_id, location, c.title, c.author, c.author_url, c.license, c.license_name,
                               c.original_url, c.landing_url)]


# -- the readable page ----------------------------------------------------------------------

_STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
h2{margin-top:2em;border-bottom:1px solid #ccc}li{margin:.2em 0}code{color:#555;font-size:90%}"""


def _link(url: str, text: str) -> str:
    """Escaped text, linked only to an http(s) URL: no javascript: or data: link can
    come from a list."""
    shown = html.escape(text)
    if not _WEB_URL.fullmatch(url):
        return shown
    return f'<a href="{html.escape(url, quote=True)}" rel="nofollow noopener noreferrer">{shown}</a>'


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _item(location: str, c: Credit) -> str:
    """One image's list item on the page."""
    title = _link(c.landing_url or c.original_url, c.title or "Untitled")
    author = _link(c.author_url, c.author or "unknown author")
    return f"<li>{title} by {author} <code>{html.escape(location)}</code></li>\n"


def _write_html(out: IO[str], items: sqlite3.Connection, by_license: Counter[str]) -> None:
    total = sum(by_license.values())
    order = sorted(by_license, key=lambda lic: (-by_license[lic], lic))
    out.write('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
              # Nothing here may run or load anything, whatever a list holds.
              "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
              '<meta name="referrer" content="no-referrer">\n'
              f"<title>Image credits</title><style>{_STYLE}</style></head><body>\n<h1>Image credits</h1>\n"
              f"<p>{_images(total)} from Open Images, each by the author named and used under the licence of its "
              "section. Titles link to each photo's page, authors to their profile.</p>\n<ul>\n")
    for n, lic in enumerate(order):
        out.write(f'<li><a href="#licence-{n}">{html.escape(license_name(lic))}</a>: {_images(by_license[lic])}</li>\n')
    out.write("</ul>\n")
    for n, lic in enumerate(order):
        heading = _link(lic, license_name(lic)) if lic else html.escape(UNKNOWN)
        out.write(f'<h2 id="licence-{n}">{heading}: {_images(by_license[lic])}</h2>\n<ol>\n')
        for (item,) in items.execute("SELECT item FROM items WHERE license = ? ORDER BY rowid", (lic,)):
            out.write(item)
        out.write("</ol>\n")
    out.write("</body></html>\n")
