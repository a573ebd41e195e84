"""--source original: the Flickr OriginalURL, whose body is OriginalSize bytes with the
base64 MD5 OriginalMD5. With --fallback, an original that is gone for good (404, 410,
unavailable, or not the bytes the row names) is fetched from the fallback source."""

from __future__ import annotations

import dataclasses

from oidownload.core.config import SourceConfig
from oidownload.core.records import Outcome, Row, Status
from oidownload.core.records import Source as Kind
from oidownload.sources import FetchPlan, Source, Tried, open_source, register

FALLBACK = "cvdf"  # the source --fallback names
# Failures that say the original will not come back; a retryable one is retried as it is.
_GONE = frozenset({Status.UNAVAILABLE, Status.MD5_MISMATCH, Status.SIZE_MISMATCH, Status.BAD_REDIRECT})


@register("original")
class Flickr(Source):
    name = "original"

    def __init__(self, cfg: SourceConfig) -> None:
        self.fallback = open_source(cfg, FALLBACK) if cfg.fallback else None

    def plan(self, row: Row) -> FetchPlan:
        return FetchPlan(self, Kind.ORIGINAL, row.original_url, row.original_size, row.original_md5)

    def again(self, row: Row, plan: FetchPlan, outcome: Outcome, tried: Tried) -> tuple[FetchPlan, Tried] | None:
        if self.fallback is None or tried.prior is not None or not gone(outcome):
            return None
        other = self.fallback.plan(row)
        if other is None:
            return None
        return other, dataclasses.replace(tried, attempts=outcome.attempts, prior=outcome)


def gone(outcome: Outcome) -> bool:
    """Whether a failed fetch of the original says it is gone for good."""
    if outcome.status is Status.HTTP_4XX:
        return outcome.http_status in (404, 410)
    return outcome.status in _GONE
