"""Manifests that mix the origin's good rows with rows of our own (a hostile URL, a
duplicate ImageID with another URL), written as the bytes a user's CSV would hold."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from oidownload.testing.origin import Corpus

HEADER = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
          "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL"]


def row(image_id: str, url: str, *, size: int = 1234, md5: str = "AAAAAAAAAAAAAAAAAAAAAA==") -> list[str]:
    """A V3 row for a URL the origin does not serve (a hostile server's)."""
    return [image_id, "train", url, "", "", "", "", "", str(size), md5, ""]


def write(path: Path | bytes, corpus: Corpus, base_url: str, rows: Sequence[tuple[int, list[str]]] = (),
          ids: Sequence[str] | None = None) -> Path:
    """The corpus's rows (or those of `ids`, in that order, repeats kept) with extra
    rows inserted before the given 0-based data positions. `path` may be bytes (a
    file name that is not UTF-8)."""
    listed = [corpus.manifest_row(i, base_url) for i in (ids if ids is not None else corpus.ids)]
    for at, extra in sorted(rows, key=lambda r: -r[0]):
        listed.insert(at, extra)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(listed)
    with open(path, "wb") as f:
        f.write(buf.getvalue().encode("utf-8"))
    return Path(path.decode("utf-8", "surrogateescape")) if isinstance(path, bytes) else path
