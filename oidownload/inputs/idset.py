"""The ImageIDs a run has already met, each with a fingerprint of the row it came from,
in about 17 bytes an id (52 MB for 3M ids; a Python set of str takes ~100 an id): so
that a second row of an id is skipped without a request, and a row that disagrees
with the first is told.
"""

from __future__ import annotations

# 65,536 buckets by the id's top 16 bits; a bucket packs entries of 10 bytes (the other
# 48 bits of the id, then a 32-bit fingerprint) one after another. A lookup is one
# C-speed `find` over a bucket (about 140 entries at 9M ids): no sorting, no merging.
_BUCKET_BITS = 16
_REST_BITS = 64 - _BUCKET_BITS
_REST_MASK = (1 << _REST_BITS) - 1
_REST = _REST_BITS // 8
_ENTRY = _REST + 4


class SeenIds:
    def __init__(self) -> None:
        self._buckets: list[bytearray | None] = [None] * (1 << _BUCKET_BITS)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def first(self, image_id: str, fingerprint: int) -> int | None:
        """None when the 16-hex-digit id is new (it is remembered with this 32-bit
        fingerprint); otherwise the fingerprint of the row it was first met in."""
        key = int(image_id, 16)
        rest = (key & _REST_MASK).to_bytes(_REST, "little")
        bucket = self._buckets[key >> _REST_BITS]
        if bucket is None:
            bucket = self._buckets[key >> _REST_BITS] = bytearray()
        else:
            at = bucket.find(rest)
            while at >= 0:
                if at % _ENTRY == 0:  # not a match straddling two entries
                    return int.from_bytes(bucket[at + _REST : at + _ENTRY], "little")
                at = bucket.find(rest, at + 1)
        bucket += rest
        bucket += (fingerprint & 0xFFFFFFFF).to_bytes(4, "little")
        self._n += 1
        return None
