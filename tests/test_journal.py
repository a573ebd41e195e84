"""The journal's done-set: lookups in any order agree with a plain set (its finger makes
sorted lookups cheap, and must never make one wrong)."""

from __future__ import annotations

import array
import random

from oidownload.journal import DoneSet


def test_done_set_agrees_with_a_set_in_any_order() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        pool = sorted({rng.getrandbits(64) for _ in range(rng.randrange(0, 40))})
        done = sorted(rng.sample(pool, rng.randrange(0, len(pool) + 1)))
        ds, expected = DoneSet(array.array("Q", done)), set(done)
        queries = [format(v, "016x") for v in pool] + [format(rng.getrandbits(64), "016x") for _ in range(4)]
        if rng.random() < 0.5:
            rng.shuffle(queries)
        else:
            queries.sort()
        for q in queries * 2:  # and again: a repeated id is still found
            assert (q in ds) == (int(q, 16) in expected), q
    assert "not-hex-at-all!!" not in DoneSet(array.array("Q", [1]))
