"""What a run got, written down: the SHA-256 of every written image in the journal,
the lock file (oidownload.lock.jsonl.gz) streamed from the journals, `verify --lock`
on a copy, `download --from-lock` elsewhere, and the Croissant card."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oidownload.journal import Journal, id_to_int
from oidownload.shard import Shard
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


def _lock(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[0], rows[1:-1], rows[-1]


def test_every_run_writes_a_lock_with_a_line_per_image_and_lock_rewrites_it(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, manifest, origin, corpus = _download(tmp_path, make_origin, 8)
    head, lines, end = _lock(out / "oidownload.lock.jsonl.gz")
    assert head["kind"] == "oidownload-lock-v1" and head["pillow"].startswith("Pillow")
    assert head["settings"]["resize"] == 64 and head["settings"]["output_format"] == "files"
    [inp] = head["inputs"]
    assert inp["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest() and inp["size"] == manifest.stat().st_size
    assert end == {"end": True, "images": 8, "counts": {"ok": 8}}
    assert [line["id"] for line in lines] == sorted(corpus.ids)
    rows = _journal(out)
    for line in lines:
        r = rows[line["id"]]
        data = (out / line["location"]).read_bytes()
        assert line["sha256"] == hashlib.sha256(data).hexdigest() and line["size"] == len(data)
        assert (line["width"], line["height"]) == (r["width"], r["height"])
        assert line["source"] == "original" and line["md5_matched"] is True
        assert line["url"] == f"{origin.base_url}/o/{line['id']}_o.jpg" and line["subset"] == "validation"
    st = run_cli("status", out)
    assert "lock: current" in st.stdout, st.stdout
    (out / "oidownload.lock.jsonl.gz").unlink()
    res = run_cli("lock", out)
    assert res.returncode == 0, res.stderr
    assert "8 images (8 ok)" in res.stdout
    assert _lock(out / "oidownload.lock.jsonl.gz")[1] == lines


def _big_journal(out: Path, n: int) -> None:
    """A journal of n written images, made straight in SQLite (no images needed to
    write their lock)."""
    journal = Journal(out / ".oidownload", Shard(0, 1), str(out))
    journal.set_meta("output", json.dumps({"out": str(out), "kind": "files"}))
    journal.close()
    conn = sqlite3.connect(out / ".oidownload" / "journal-0-of-1.sqlite")
    rng = random.Random(25)
    rows = []
    for _ in range(n):
        image_id = f"{rng.getrandbits(64):016x}"
        rows.append((id_to_int(image_id), "ok", 1, "", 200, 1000, 900, 64, 48, 1, 0.1, "train", "jpg", "original", 1,
                     None, None, 1.0, 1, None, f"train/{image_id[:3]}/{image_id}.jpg", hashlib.sha256(image_id.encode()).hexdigest(),
                     f"http://127.0.0.1:9/o/{image_id}_o.jpg"))
    with conn:
        conn.executemany("INSERT OR IGNORE INTO outcomes(id, status, final, detail, http_status, nbytes, out_bytes, width, "
                         "height, attempts, seconds, subset, ext, source, verified, input, line, finished, orientation, "
                         "crop, location, sha256, url) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.close()


def test_a_kill_while_the_lock_is_written_leaves_the_previous_lock_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _big_journal(out, 30_000)
    res = run_cli("lock", out)
    assert res.returncode == 0, res.stderr
    lock = out / "oidownload.lock.jsonl.gz"
    before = lock.read_bytes()
    for _ in range(3):  # the kill must land while the temporary lock is being written
        proc = subprocess.Popen([sys.executable, "-m", "oidownload", "lock", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = [p for p in out.glob(".oidownload.lock.jsonl.gz.*") if p.stat().st_size > 0]
            if tmp:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert lock.read_bytes() == before
    _, lines, end = _lock(lock)
    assert end["images"] == 30_000 and len(lines) == 30_000
