"""A multi-task download writes its lock and card once: the last task to finish writes
them for the whole output, and a task that finishes while another runs leaves them to
it, saying which."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

from oidownload.core.shard import shard_of
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault
from tests.conftest import run_cli


def test_three_tasks_write_the_lock_once_with_every_image_and_the_early_ones_say_who_will(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(15, mix="tiny", seed=33, subset="validation")
    owner = {i: shard_of(i, 3) for i in corpus.ids}
    assert set(owner.values()) == {0, 1, 2}
    # Task 1 has one image that trickles in (512 bytes every 0.6 s: about 13 s for the
    # smallest template), so it is still running while tasks 0 and 2 start and finish.
    slow = next(i for i, k in owner.items() if k == 1)
    corpus.entries[slow].fault = Fault.parse("trickle")
    corpus.entries[slow].original = min(range(len(corpus.originals)), key=lambda k: len(corpus.originals[k]))
    origin = make_origin(corpus, trickle_delay=0.6)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    lock = out / "oidownload.lock.jsonl.gz"
    args = ["download", str(manifest), "-o", str(out), "--resize", "64", "--num-shards", "3", "--progress", "none"]
    log1 = tmp_path / "task1.log"
    with open(log1, "w") as err:
        task1 = subprocess.Popen([sys.executable, "-m", "oidownload", *args, "--shard-index", "1"],
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not any(slow in path for path in origin.requests):  # task 1 is fetching its slow image
            assert task1.poll() is None and time.monotonic() < deadline, log1.read_text()
            time.sleep(0.05)
        for index in (0, 2):
            res = run_cli(*args, "--shard-index", index)
            assert res.returncode == 0, res.stderr
            assert "the lock and the card are left to task 1-of-3, still running" in res.stderr, res.stderr
            assert f"wrote {lock}" not in res.stderr
            assert not lock.exists() and not (out / "croissant.json").exists()
        assert task1.poll() is None, "task 1 ended before the others: the slow image was not slow enough"
        assert task1.wait(timeout=120) == 0, log1.read_text()
    finally:
        if task1.poll() is None:
            task1.kill()
            task1.wait()
    text = log1.read_text()
    assert f"wrote {lock} (15 images)" in text, text
    with gzip.open(lock, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert sorted(r["id"] for r in rows[1:-1]) == sorted(corpus.ids)
    assert rows[-1] == {"end": True, "images": 15, "counts": {"ok": 15}}
    assert (out / "croissant.json").exists()
    assert "lock: current" in run_cli("status", out).stdout
