"""A real one-node Slurm cluster (started by .ci/run) runs examples/slurm-array.sbatch as
a 4-task array into one OUT; one task is cancelled mid-run and resubmitted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oidownload.core.shard import shard_of
from oidownload.testing import journals
from oidownload.testing.origin import Corpus, Latency, Origin
from tests.conftest import journal_rows, require, run_cli

ROOT = Path(__file__).parent.parent
SBATCH = ROOT / "examples" / "slurm-array.sbatch"

# An engine test (a real cluster, container or browser): out of the fast lane, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def slurm(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def wait_gone(job: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm("squeue", "-h", "-j", job, "-o", "%i"):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued after {timeout}s: {slurm('squeue')}")


def test_slurm_array_shards_one_out_and_survives_scancel(tmp_path: Path, make_origin: Callable[..., Origin]) -> None:
    require(shutil.which("sbatch") is not None and "SLURM_CONF" in os.environ, "a running Slurm (.ci/slurm-up.sh)")
    corpus = Corpus.generate(400, mix="tiny", seed=51)
    origin = make_origin(corpus, latency=Latency(0.08))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "INPUT": str(manifest), "OUT": str(out), "OIDOWNLOAD_CONCURRENCY": "2", "OIDOWNLOAD_RESIZE": "64",
    }

    def submit(array: str) -> str:
        return subprocess.run(
            ["sbatch", "--parsable", f"--array={array}", "--cpus-per-task=1", f"--output={logs}/%A_%a.log",
             "--export=ALL", str(SBATCH)],
            check=True, capture_output=True, text=True, env=env, timeout=60,
        ).stdout.strip().split(";")[0]

    job = submit("0-3")
    # Cancel task 1 once it is well under way.
    deadline = time.monotonic() + 120
    journal1 = out / ".oidownload" / "journal-1-of-4.sqlite"
    while time.monotonic() < deadline:
        if journal1.exists() and len(journal_rows_of(journal1)) >= 10:
            break
        time.sleep(0.2)
    slurm("scancel", f"{job}_1")
    wait_gone(job)
    after_cancel = len(journal_rows_of(journal1))
    assert 10 <= after_cancel < sum(1 for i in corpus.ids if shard_of(i, 4) == 1), "task 1 was not cut mid-run"

    # Resubmit the cancelled task as the same array task, so it keeps its share.
    slurm("scontrol", "requeue", f"{job}_1")
    # A requeued job waits a while before it is eligible again; let it start now.
    slurm("scontrol", "update", f"JobId={job}_1", "StartTime=now")
    wait_gone(job)
    logs_text = "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
    assert '"event": "summary"' in logs_text, logs_text[-2000:]

    # Every row once, in the journal of the shard that owns it, and on disk.
    per_shard = {k: set(journal_rows_of(out / ".oidownload" / f"journal-{k}-of-4.sqlite")) for k in range(4)}
    assert set().union(*per_shard.values()) == set(corpus.ids)
    assert sum(len(s) for s in per_shard.values()) == 400
    for k, ids in per_shard.items():
        assert all(shard_of(i, 4) == k for i in ids)
    assert all(status == "ok" for status, _, _ in journal_rows(out).values())
    assert {p.stem for p in (out / "train").rglob("*.jpg")} == set(corpus.ids)
    # No file was ever written by two tasks: each image was asked for by its own shard only.
    for i in corpus.ids:
        agents = origin.agents[f"/o/{i}_o.jpg"]
        assert agents and all(a.endswith(f"shard/{shard_of(i, 4)}-of-4") for a in agents), agents
    st = json.loads(run_cli("status", out, "--json").stdout)
    assert st["total"] == 400 and st["by_status"]["ok"]["count"] == 400
    assert sorted((s["shard"], s["state"]) for s in st["shards"]) == [(f"{k}-of-4", "finished") for k in range(4)]


def journal_rows_of(path: Path) -> dict[str, str]:
    return journals.statuses(path, read_only=True)
