"""Issue 15 item 6: one small image cannot kill the run. Decode memory is bounded per
image before any pixel is decoded (a 155 KB PNG of 1 x 80,000,000 pixels); a pool
worker that dies is replaced, the images it held are tried once more, an image whose
worker dies twice ends as `worker_died`, and the run never hangs."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency
from tests.conftest import journal_rows
from tests.hostile import manifests
from tests.hostile.conftest import Hostile, raw, response

TALL_ID = "7a11000000000001"


@pytest.fixture(scope="module")
def tall_png() -> bytes:
    """1 x 80,000,000 grey pixels: 155 KB of PNG, 720 MB once decoded by Pillow."""
    buf = io.BytesIO()
    Image.new("L", (1, 80_000_000)).save(buf, "PNG")
    return buf.getvalue()


def _serve(hostile: Hostile, png: bytes) -> list[str]:
    hostile.route("/tall.png", raw(response("200 OK", {"Content-Type": "image/png"}, png)))
    md5 = base64.b64encode(hashlib.md5(png).digest()).decode()
    return manifests.row(TALL_ID, hostile.url("/tall.png"), size=len(png), md5=md5)


def _start(*args: object, preexec: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "oidownload", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def _memory_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB per process


def _pool_workers(pid: int) -> list[int]:
    """The pool's worker processes: children of the download, not multiprocessing's
    resource tracker."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                found.append(child)
    return sorted(set(found))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _journaled(out: Path) -> int:
    try:
        return len(journal_rows(out))
    except sqlite3.Error:  # not made yet
        return 0


def _wait(what: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = what()
        except (OSError, ValueError, sqlite3.Error):
            found = None
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


def test_a_tall_png_is_refused_before_it_is_decoded(tmp_path: Path, make_origin: StartOrigin, hostile: Hostile,
                                                    tall_png: bytes) -> None:
    assert len(tall_png) < 200_000
    corpus = Corpus.generate(30, mix="tiny", seed=221)
    origin = make_origin(corpus)
    manifest = manifests.write(tmp_path / "images.csv", corpus, origin.base_url, [(10, _serve(hostile, tall_png))])
    out = tmp_path / "out"
    proc = _start("download", manifest, "-o", out, "--resize", "640", "--processes", "2", "--progress", "none",
                  preexec=_memory_limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = journal_rows(out)
    status, detail, _ = rows[TALL_ID]
    assert status == "too_large" and "1x80000000 L" in detail and "--max-decode-mb" in detail
    assert all(rows[i][0] == "ok" for i in corpus.ids)


def test_a_dead_worker_is_replaced_and_the_run_never_hangs(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(400, mix="tiny", seed=222)
    origin = make_origin(corpus, latency=Latency(0.08))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    proc = _start("download", manifest, "-o", out, "--resize", "64", "--processes", "2", "--concurrency", "8",
                  "--progress", "none")
    try:
        killed = []
        for _ in range(3):  # idle workers too: one that held the pool's queue lock used to hang the run
            target = _journaled(out) + 40
            def grown(t: int = target) -> bool:
                return _journaled(out) >= t

            _wait(grown)  # each time into a pool at work again
            victim = _wait(lambda: [p for p in _pool_workers(proc.pid) if p not in killed])[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err.count("died (killed by SIGKILL)") == 3
    rows = journal_rows(out)
    assert len(rows) == 400 and all(s == "ok" for s, _, _ in rows.values())
    assert {p.stem for p in (out / "train").rglob("*.jpg")} == set(corpus.ids)


def test_an_image_whose_worker_dies_twice_is_worker_died(tmp_path: Path, make_origin: StartOrigin,
                                                        hostile: Hostile, tall_png: bytes) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=223)
    origin = make_origin(corpus)
    manifest = manifests.write(tmp_path / "images.csv", corpus, origin.base_url, [(5, _serve(hostile, tall_png))])
    out = tmp_path / "out"
    # Allowed to decode (it takes seconds of CPU): the worker is killed while it works on it.
    args = ("download", manifest, "-o", out, "--resize", "640", "--processes", "1", "--max-decode-mb", "900",
            "--progress", "none")
    proc = _start(*args)
    try:
        for _ in range(2):
            _wait(lambda: hostile.requests["/tall.png"] == 1)
            # Only the tall PNG takes hundreds of MB: the worker that holds it.
            busy = _wait(lambda: [p for p in _pool_workers(proc.pid) if _rss_mb(p) > 300])
            os.kill(busy[0], signal.SIGKILL)
            def gone(b: list[int] = busy) -> bool:
                return b[0] not in _pool_workers(proc.pid)

            _wait(gone)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = journal_rows(out)
    status, detail, _ = rows[TALL_ID]
    assert status == "worker_died" and "died 2 times" in detail and "SIGKILL" in detail
    assert all(rows[i][0] == "ok" for i in corpus.ids)
    again = subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert hostile.requests["/tall.png"] == 1  # final: not asked for again
