"""Where an image comes from: for a row and the user's choice, which URL to fetch and
what to expect of it. The one place that knows the sources.

    original   the Flickr OriginalURL: OriginalSize bytes whose base64 MD5 is OriginalMD5
    thumbnail  Thumbnail300KURL: nothing to check (Flickr makes them on the fly)
    cvdf       <mirror>/<subset>/<ImageID>.jpg on the CVDF mirror, a public S3 bucket of
               about 1.9M re-encoded copies (at most 1024 px): checked by the ETag, which
               is the object's hex MD5 for a single-part upload

`--fallback cvdf` takes the mirror copy when the original is gone for good.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from oidownload.core.config import SourceChoice, SourceConfig
from oidownload.core.records import Row, Source, Status

_ETAG_MD5 = re.compile(r'(?:W/)?"?([0-9a-fA-F]{32})"?')


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """One URL for one row, and what its body must be."""

    source: Source
    url: str
    expected_size: int | None = None  # checked against Content-Length before the body, then the body
    expected_md5: str | None = None  # base64, checked by the worker
    check_etag: bool = False  # the ETag names the body's MD5 (when it is a plain one)

    @property
    def expectation(self) -> str:
        """What the body is checked against, for failure details."""
        if self.source is Source.ORIGINAL:
            return "OriginalMD5"
        return "the ETag" if self.check_etag else "nothing"


def mirror_url(row: Row, base: str) -> str:
    return f"{base.rstrip('/')}/{row.subset}/{row.image_id}.jpg"


def plan_fetch(row: Row, cfg: SourceConfig) -> FetchPlan | None:
    """The plan for a row under the user's --source; None when the row has no URL for it."""
    choice = cfg.choice
    if choice is SourceChoice.CVDF:
        return mirror_plan(row, cfg)
    if choice is SourceChoice.THUMBNAIL or (choice is SourceChoice.AUTO and row.thumbnail_url):
        return FetchPlan(Source.THUMBNAIL, row.thumbnail_url) if row.thumbnail_url else None
    return FetchPlan(Source.ORIGINAL, row.original_url, row.original_size, row.original_md5)


def mirror_plan(row: Row, cfg: SourceConfig) -> FetchPlan:
    return FetchPlan(Source.CVDF, mirror_url(row, cfg.mirror_url), check_etag=True)


def wants_fallback(cfg: SourceConfig, plan: FetchPlan, status: Status, http_status: int | None) -> bool:
    """Whether a failed fetch of the original goes to the mirror: only when the
    original is gone for good. A retryable failure is retried as it is."""
    if not cfg.fallback or plan.source is not Source.ORIGINAL:
        return False
    if status is Status.HTTP_4XX:
        return http_status in (404, 410)
    return status in (Status.UNAVAILABLE, Status.MD5_MISMATCH, Status.SIZE_MISMATCH, Status.BAD_REDIRECT)


def etag_md5(etag: str | None) -> str | None:
    """The base64 MD5 an ETag names, or None when it is not one (a multipart upload's
    ETag, `"<hex>-<parts>"`, is not the MD5 of the object)."""
    if not etag:
        return None
    m = _ETAG_MD5.fullmatch(etag.strip())
    if m is None:
        return None
    try:
        return base64.b64encode(binascii.unhexlify(m.group(1))).decode("ascii")
    except binascii.Error:
        return None
