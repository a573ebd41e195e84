"""Issue 28 section 3: an object store whose answers fail or never come. The summary,
the exit code and the journal say the same; a hung store never holds the process past
its grace, its --max-runtime or a second signal."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from oidownload.testing.origin import Corpus, Origin
from tests.conftest import run_cli
from tests.hostile.fakes3 import FakeS3

StartOrigin = Callable[..., Origin]


def _summary(stderr: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([a-z_0-9]+)\s+(\d+)\s", stderr, re.M)}


def _journal(state: Path) -> dict[str, str]:
    import sqlite3

    rows: dict[str, str] = {}
    for path in state.glob("journal-*.sqlite"):
        conn = sqlite3.connect(path)
        for rid, status in conn.execute("SELECT id, status FROM outcomes"):
            rows[format(rid % (1 << 64), "016x")] = status
        conn.close()
    return rows


def test_a_failed_upload_is_not_counted_as_written(tmp_path: Path, make_origin: StartOrigin, fake_s3: FakeS3) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=2801)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    refused = set(corpus.ids[:4])
    fake_s3.fail = lambda key: "SlowDown" if Path(key).stem in refused else None
    state = tmp_path / "state"
    res = run_cli("download", manifest, "-o", "s3://out/run", "--state-dir", state, "--progress", "log",
                  env=fake_s3.env)
    assert res.returncode == 5, res.stderr  # retryable failures are left
    summary = _summary(res.stderr)
    assert summary.get("ok") == 26 and summary.get("write_error") == 4, res.stderr
    journal = _journal(state)
    assert sorted(i for i, s in journal.items() if s == "write_error") == sorted(refused)
    assert sum(s == "ok" for s in journal.values()) == 26
    assert len([k for k in fake_s3.keys("out") if k.endswith(".jpg")]) == 26
