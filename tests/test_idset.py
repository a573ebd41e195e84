"""SeenIds, the in-run set of ImageIDs with the fingerprint of their first row."""

from __future__ import annotations

import random

from oidownload.inputs.idset import SeenIds


def test_first_sighting_then_the_first_fingerprint() -> None:
    seen = SeenIds()
    rng = random.Random(5)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(50_000)]
    for n, image_id in enumerate(ids):
        assert seen.first(image_id, n) is None
    assert len(seen) == 50_000
    for n, image_id in enumerate(ids):
        assert seen.first(image_id, 10**9 + n) == n  # the first row's, not this one's
    assert len(seen) == 50_000


def test_a_match_straddling_two_entries_is_not_a_sighting() -> None:
    seen = SeenIds()
    # Same bucket (top 16 bits 0xabcd). Packed: 6 bytes of id, then 4 of fingerprint, so
    # the bytes 01..06 appear across the first entry's fingerprint and the second's id.
    seen.first("abcd000000000000", 0x04030201)
    seen.first("abcd000000000605", 7)
    straddled = "abcd" + (0x060504030201).to_bytes(6, "little")[::-1].hex()
    assert seen.first(straddled, 9) is None
    assert seen.first(straddled, 1) == 9
