"""`oidownload bench` runs end to end and prints well-formed JSON (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_bench_prints_one_json_line_per_scenario(synth_cache: Path) -> None:
    res = run_cli("bench", "-n", "20", "--mix", "tiny")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["scenario"] for r in lines] == ["originals-fit640", "thumbnails-keep"]
    for r in lines:
        assert r["images"] == 20 and r["ok"] == 20 and r["failed"] == 0
        for key in ("images_per_s", "mb_per_s", "cpu_ms_per_image", "peak_rss_mb", "peak_tree_rss_mb"):
            assert isinstance(r[key], float | int) and r[key] > 0
