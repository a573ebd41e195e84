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


def test_benchmark_script_prints_json_lines(synth_cache: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "benchmarks" / "bench.py"
    res = subprocess.run(
        [sys.executable, str(script), "--n", "12", "--mix", "tiny", "--runs", "1", "--latency-ms", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in events] == ["setup", "run", "result"]
    ceiling = events[0]["ceiling"]
    assert ceiling["images_per_s_2core"] > 0
    stages = ceiling["stages_ms"]
    assert set(stages) == {"md5", "decode", "resize", "encode"} and stages["decode"] > 0
    assert abs(sum(stages.values()) - ceiling["cpu_ms_per_image"]) < 0.05  # the stages are the whole work
    run = events[1]
    assert run["tool"] == "oidownload" and run["ok"] == 12
    assert run["efficiency"] > 0 and run["cpu_ms_per_image"] > 0 and run["peak_tree_rss_mb"] > 0
    assert events[2]["oidownload"]["images_per_s"] == run["images_per_s"]
