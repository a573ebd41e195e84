"""Seeded samples, the same whatever the row order, the files or the shards: `sample`
(--limit N --seed S) and `per_class` (--limit-per-class N): for each requested class,
the N images that carry it with the smallest `sample_key` among those the inputs hold.

Memory is O(classes x N): one bounded heap per class. An image the annotations name
but the input lists lack (train annotations applied to the validation list) cannot be
downloaded, so it is skipped, and the next keys are sought in a further pass over the
annotations, a few at most; what stays short is reported.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

from oidownload.dataset.annotations import AnnotationSource, ClassFilter

# Passes over the annotations before a class short of images is reported as such; each
# pass seeks twice as many candidates as the last (at most MAX_WIDEN x N a class).
MAX_PASSES = 5
MAX_WIDEN = 16


@dataclass
class ClassCount:
    picked: int = 0
    not_listed: int = 0  # candidates the annotations name but no input list holds
    exhausted: bool = False  # every image that carries it was seen


@dataclass
class Balanced:
    ids: set[str] = field(default_factory=set)
    per_class: dict[str, ClassCount] = field(default_factory=dict)
    passes: int = 0


def sample_key(seed: int, image_id: str) -> bytes:
    """A stable pseudo-random rank: the same seed picks the same images whatever the
    order of the rows, the number of input files or the number of shards."""
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def sample(ids: Iterable[str], limit: int, seed: int) -> frozenset[str]:
    return frozenset(heapq.nsmallest(limit, ids, key=lambda i: sample_key(seed, i)))


def _key(seed: int, image_id: str) -> int:
    return int.from_bytes(sample_key(seed, image_id), "big")


def per_class(
    source: AnnotationSource,
    flt: ClassFilter,
    owners: Mapping[str, Iterable[str]],
    n: int,
    seed: int,
    listed: Callable[[set[str]], set[str]],
    within: Container[str] | None = None,
) -> Balanced:
    """owners maps each selected MID to the requested classes it counts for; listed(ids)
    answers which of ids the input lists hold (one pass over them)."""
    classes = sorted({c for cs in owners.values() for c in cs})
    out = Balanced(per_class={c: ClassCount() for c in classes})
    owner_of = {mid: tuple(cs) for mid, cs in owners.items()}
    floor = dict.fromkeys(classes, -1)  # keys at or below have been decided
    open_ = set(classes)
    for round_ in range(MAX_PASSES):
        if not open_:
            break
        out.passes += 1
        cap = {c: min((n - out.per_class[c].picked) << round_, MAX_WIDEN * n) for c in open_}
        heaps: dict[str, list[tuple[int, str]]] = {c: [] for c in open_}  # max-heaps by -key
        members: dict[str, set[str]] = {c: set() for c in open_}
        for image_id, mid in source.matches(flt, within):
            for c in owner_of.get(mid, ()):
                if c not in heaps:
                    continue
                k = _key(seed, image_id)
                if k <= floor[c] or image_id in members[c]:
                    continue
                h = heaps[c]
                if len(h) < cap[c]:
                    heapq.heappush(h, (-k, image_id))
                    members[c].add(image_id)
                elif k < -h[0][0]:
                    _, gone = heapq.heapreplace(h, (-k, image_id))
                    members[c].discard(gone)
                    members[c].add(image_id)
        wanted = {i for h in heaps.values() for _, i in h}
        present = listed(wanted)
        for c in sorted(open_):
            count = out.per_class[c]
            ranked = sorted((-nk, i) for nk, i in heaps[c])
            for k, image_id in ranked:
                floor[c] = k
                if image_id in present:
                    out.ids.add(image_id)
                    count.picked += 1
                    if count.picked == n:
                        break
                else:
                    count.not_listed += 1
            if count.picked == n:
                open_.discard(c)
            elif len(ranked) < cap[c]:
                count.exhausted = True  # fewer images carry it than were sought
                open_.discard(c)
    return out
