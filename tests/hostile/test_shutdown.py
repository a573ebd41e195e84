"""Issue 15 item 12: on a CPU-busy machine, every outcome recorded before the process
exits is in the journal: the files on disk, the journal and the summary agree, run
after run, whether the run ends by itself or by a signal. (The race itself, a flush
cancelled before its write started, is pinned down in tests/test_journal.py.)"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency
from tests.conftest import journal_rows
from tests.test_crash import wait_for_journal


def _spin(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x += 1


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """A busy loop in as many processes as there are cores, for the test's length."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_spin, args=(time.monotonic() + 120,), daemon=True) for _ in range(os.cpu_count() or 2)]
    for p in procs:
        p.start()
    yield
    for p in procs:
        p.kill()
        p.join()


def _ok_in_summary(stderr: str) -> int:
    found = re.search(r"^ok\s+(\d+)", stderr, re.M)
    return int(found.group(1)) if found else 0


def _check(out: Path, stderr: str, n_before: int) -> int:
    journal = journal_rows(out)
    ok = {i for i, (s, _, _) in journal.items() if s == "ok"}
    on_disk = {p.stem for p in out.glob("train/*/*.jpg")}
    assert on_disk == ok, f"{len(on_disk - ok)} written image(s) not journaled"
    assert len(ok) - n_before == _ok_in_summary(stderr), "the summary and the journal disagree"
    return len(ok)


def test_every_recorded_outcome_is_flushed_under_cpu_load(
        tmp_path: Path, make_origin: StartOrigin, cpu_load: None) -> None:
    corpus = Corpus.generate(240, mix="tiny", seed=201)
    origin = make_origin(corpus, latency=Latency(0.05))
    out = tmp_path / "out"
    done = 0
    # Small runs, each ending while outcomes are still arriving: by themselves, and by SIGTERM.
    for k in range(4):
        ids = corpus.ids[40 * k: 40 * (k + 1)]
        manifest = corpus.write_manifest(tmp_path / f"images-{k}.csv", origin.base_url, ids=ids)
        proc = subprocess.Popen([sys.executable, "-m", "oidownload", "download", manifest, "-o", out, "--format",
                                 "keep", "--progress", "none", "--concurrency", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if k % 2:
            wait_for_journal(out, done + 3 * k)  # stopped mid-run, once outcomes are arriving
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        # -SIGTERM: the signal came while the interpreter was tearing itself down, after the
        # run and its summary, when Python has put back the default handlers. What matters
        # here is that everything it recorded is journaled, which _check proves.
        assert proc.returncode in (0, 143, -signal.SIGTERM), err
        done = _check(out, err, done)
    assert done > 80
