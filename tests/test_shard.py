"""Sharding: stable, disjoint, balanced; the scheduler's environment; env-var options."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import pytest

from oidownload.core.errors import ConfigError
from oidownload.core.shard import Shard, resolve_shard, resolve_with_count, shard_of
from tests.conftest import V3, journal_rows, run_cli

PINNED = [6, 1, 11]
_RNG = random.Random(2)
IDS = [f"{_RNG.getrandbits(64):016x}" for _ in range(20000)]


def test_shards_are_disjoint_complete_and_balanced() -> None:
    for n in (2, 4, 7, 16):
        owners = collections.Counter(shard_of(i, n) for i in IDS)
        assert set(owners) == set(range(n))
        assert sum(owners.values()) == len(IDS)
        expected = len(IDS) / n
        assert all(abs(c - expected) < 0.1 * expected for c in owners.values())
        for i in IDS[:500]:
            assert [Shard(k, n).owns(i) for k in range(n)].count(True) == 1


def test_shards_do_not_depend_on_order_or_on_other_files() -> None:
    a = {i: shard_of(i, 8) for i in IDS}
    shuffled = IDS[:]
    random.Random(3).shuffle(shuffled)
    assert {i: shard_of(i, 8) for i in shuffled} == a
    assert all(shard_of(i.upper(), 8) == a[i] for i in IDS[:200])  # case does not matter
    # Pinned values: a change of hash would silently re-split clusters mid-run.
    assert [shard_of(i, 16) for i in ("000002b66c9c498e", "000002b97e5471a0", "ffffffffffffffff")] == PINNED


def test_sorted_real_ids_still_spread() -> None:
    import csv

    with open(V3 / "train" / "images.csv", newline="") as f:
        ids = [r["ImageID"] for r in csv.DictReader(f)]  # sorted, sharing long prefixes
    counts = collections.Counter(shard_of(i, 4) for i in ids)
    assert all(200 <= c <= 300 for c in counts.values())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "102", "SLURM_ARRAY_TASK_MIN": "100", "SLURM_ARRAY_TASK_MAX": "103"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "16",
          "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        ({}, (0, 1)),
    ],
)
def test_slurm_environment(env: dict[str, str], expected: tuple[int, int]) -> None:
    shard = resolve_shard(None, None, env)
    assert (shard.index, shard.count) == expected


def test_kubernetes_index_needs_a_count() -> None:
    assert (resolve_with_count(None, 8, {"JOB_COMPLETION_INDEX": "5"}).index, 8) == (5, 8)
    with pytest.raises(ConfigError, match="OIDOWNLOAD_NUM_SHARDS"):
        resolve_with_count(None, None, {"JOB_COMPLETION_INDEX": "5"})
    with pytest.raises(ConfigError, match="outside"):
        resolve_with_count(None, 4, {"JOB_COMPLETION_INDEX": "5"})


def test_flags_win_and_go_together() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_with_count(3, 5, env) == Shard(3, 5, "flags")
    with pytest.raises(ConfigError, match="go together"):
        resolve_shard(3, None, {})
    with pytest.raises(ConfigError, match="disagrees"):
        resolve_with_count(None, 8, env)


def test_shards_split_a_real_download_and_env_vars_set_options(tmp_path: Path, make_origin: object) -> None:
    from oidownload.testing.origin import Corpus

    corpus = Corpus.generate(60, mix="tiny", seed=41)
    origin = make_origin(corpus)  # type: ignore[operator]
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    for k in range(3):
        env = {"OIDOWNLOAD_NUM_SHARDS": "3", "JOB_COMPLETION_INDEX": str(k), "OIDOWNLOAD_FORMAT": "keep",
               "OIDOWNLOAD_LOG_FORMAT": "json", "OIDOWNLOAD_OUTPUT": str(out)}
        res = run_cli("download", manifest, env=env)
        assert res.returncode == 0, res.stderr
        assert f'"shard_index": {k}, "num_shards": 3' in res.stderr  # the shard used is printed
        assert '"event": "summary"' in res.stderr
    files = sorted((out / ".oidownload").glob("journal-*.sqlite"))
    assert [f.name for f in files] == [f"journal-{k}-of-3.sqlite" for k in range(3)]
    assert set(journal_rows(out)) == set(corpus.ids)
    assert all(origin.requests[f"/o/{i}_o.jpg"] == 1 for i in corpus.ids)
    for i in corpus.ids:
        (agent,) = origin.agents[f"/o/{i}_o.jpg"]
        assert agent.endswith(f"shard/{shard_of(i, 3)}-of-3")
    import json as json_mod

    st = json_mod.loads(run_cli("status", out, "--json").stdout)
    assert st["total"] == 60 and sorted(s["shard"] for s in st["shards"]) == ["0-of-3", "1-of-3", "2-of-3"]


def test_max_runtime_stops_cleanly_with_75_and_resumes(tmp_path: Path, make_origin: object) -> None:
    from oidownload.testing.origin import Corpus, Latency

    corpus = Corpus.generate(300, mix="tiny", seed=42)
    origin = make_origin(corpus, latency=Latency(0.1))  # type: ignore[operator]
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--concurrency", "2", "--max-runtime", "2s", "--progress", "none")
    assert res.returncode == 75, res.stderr
    assert "--max-runtime" in res.stderr
    first = len(journal_rows(out))
    assert 0 < first < 300
    res = run_cli("download", manifest, "-o", out, "--concurrency", "32", "--progress", "none")
    assert res.returncode == 0 and len(journal_rows(out)) == 300


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45m", 2700), ("7.5h", 27000), ("11h45m", 42300), ("1d2h", 93600), ("12:00:00", 43200),
     ("10:30", 630), ("bad", None), ("1h x", None), ("", None)],
)
def test_durations(text: str, seconds: float | None) -> None:
    from oidownload.core.values import parse_duration

    assert parse_duration(text) == seconds
