"""--per-host: auto grows on a host bound by its round trip and stays polite to one that
sheds load; a fixed N is honoured exactly. Counted at the server (the origin's
`flight`), which also tests the origin's own bandwidth cap and concurrency limit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency, Origin
from tests.conftest import journal_rows, run_cli

THUMBS = ("--source", "thumbnail", "--format", "keep", "--progress", "none")

# Documented in README.md ("how fast, and why"): against a host that refuses above K in
# flight, a doubling may briefly send up to 2K; more than K + OVERSHOOT are in flight
# for less than OVERSHOOT_S in all.
OVERSHOOT = 8
OVERSHOOT_S = 1.0


def _run(tmp_path: Path, origin: Origin, corpus: Corpus, *args: str, name: str = "out") -> tuple[Path, str]:
    bases = origin.base_urls if origin.hosts > 1 else origin.base_url
    manifest = corpus.write_manifest(tmp_path / f"{name}.csv", bases)
    out = tmp_path / name
    res = run_cli("download", manifest, "-o", out, *THUMBS, *args)
    assert res.returncode == 0, res.stderr
    rows = journal_rows(out)
    assert len(rows) == len(corpus.entries) and {r[0] for r in rows.values()} == {"ok"}, res.stderr[-2000:]
    return out, res.stderr


def test_a_fixed_per_host_is_honoured_exactly(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(120, mix="tiny", seed=5)
    origin = make_origin(corpus, latency=Latency(0.05))
    _run(tmp_path, origin, corpus, "--per-host", "4", "--concurrency", "64")
    (flight,) = origin.flight.values()
    assert flight.peak == 4


@pytest.mark.parametrize("overload", ["503", "429"])
def test_a_host_that_refuses_above_k_is_not_flooded(tmp_path: Path, make_origin: StartOrigin, overload: str) -> None:
    k = 12
    corpus = Corpus.generate(500, mix="tiny", seed=6)
    origin = make_origin(corpus, latency=Latency(0.05, 0.2), max_in_flight=k, overload=overload)
    out, _ = _run(tmp_path, origin, corpus)
    assert "(cut " in run_cli("status", out).stdout
    (flight,) = origin.flight.values()
    assert flight.peak <= 2 * k + OVERSHOOT
    assert flight.seconds_above(k + OVERSHOOT) < OVERSHOOT_S
    assert origin.overloaded > 0  # it did probe above K, and came back


def test_auto_grows_on_a_high_latency_host(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(700, mix="tiny-thumbs", seed=7)
    origin = make_origin(corpus, latency=Latency(0.2, 0.1))
    out, stderr = _run(tmp_path, origin, corpus, "--progress", "log", "--progress-interval", "0.5")
    (flight,) = origin.flight.values()
    assert flight.peak > 16
    # Why the run is as fast as it is: the host grew, said on the progress line and by status.
    assert "in flight per host: 127.0.0.1 " in stderr and "(grew)" in stderr, stderr
    status = run_cli("status", out)
    assert status.returncode == 0 and "in flight per host: 127.0.0.1 " in status.stdout, status.stdout
    as_json = json.loads(run_cli("status", out, "--json").stdout)
    assert "(grew)" in as_json["shards"][0]["hosts"]


def test_auto_keeps_each_of_many_hosts_under_64(tmp_path: Path, make_origin: StartOrigin) -> None:
    """The Flickr-like mix: rows spread over 8 hosts, each with some latency."""
    corpus = Corpus.generate(2000, mix="tiny-thumbs", seed=8)
    origin = make_origin(corpus, latency=Latency(0.05, 0.3), hosts=8)
    _run(tmp_path, origin, corpus)
    assert len(origin.flight) == 8
    assert max(f.peak for f in origin.flight.values()) <= 64


def test_the_origins_bandwidth_cap_is_shared_by_all_connections(make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=9)
    rate = 400_000.0
    origin = make_origin(corpus, bandwidth=rate)
    total = sum(len(corpus.thumbnail(i)) for i in corpus.ids)

    async def fetch_all() -> float:
        async with aiohttp.ClientSession() as session:
            async def one(image_id: str) -> None:
                async with session.get(f"{origin.base_url}/t/{image_id}_z.jpg") as resp:
                    assert resp.status == 200 and len(await resp.read()) == len(corpus.thumbnail(image_id))

            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in corpus.ids))
            return time.monotonic() - t0

    took = asyncio.run(fetch_all())
    assert total / rate * 0.95 <= took <= total / rate * 1.5 + 0.5, (total, took)
