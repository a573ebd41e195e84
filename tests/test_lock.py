"""What a run got, written down: the SHA-256 of every written image in the journal,
the lock file (oidownload.lock.jsonl.gz) streamed from the journals, `verify --lock`
on a copy, `download --from-lock` elsewhere, and the Croissant card."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oidownload.testing.origin import Corpus, Origin
from tests.conftest import run_cli

StartOrigin = Callable[..., Origin]


def _download(tmp_path: Path, make_origin: StartOrigin, n: int, *extra: object,
              corpus: Corpus | None = None) -> tuple[Path, Path, Origin, Corpus]:
    corpus = corpus or Corpus.generate(n, mix="tiny", seed=25, subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--resize", "64", "--progress", "none", *extra)
    assert res.returncode == 0, res.stderr
    return out, manifest, origin, corpus


def _journal(out: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((out / ".oidownload").glob("journal-*.sqlite")):
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        for r in conn.execute("SELECT * FROM outcomes"):
            found[format(r["id"] % (1 << 64), "016x")] = dict(r)
        conn.close()
    return found


def test_the_journal_holds_the_sha256_and_url_of_every_written_image(tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, origin, _ = _download(tmp_path, make_origin, 6)
    rows = _journal(out)
    assert len(rows) == 6
    for image_id, r in rows.items():
        data = (out / r["location"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["url"] == f"{origin.base_url}/o/{image_id}_o.jpg"
