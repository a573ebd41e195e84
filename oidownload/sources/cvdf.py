"""--source cvdf: <mirror>/<subset>/<ImageID>.jpg on the CVDF mirror, a public S3 bucket
of about 1.9M re-encoded copies (at most 1024 px). Its body is fetched as stored and
checked by the ETag, which is the object's hex MD5 for a single-part upload.

A mirror's 404 is final (it lacks the image); its 403 never is, and a run of them stops
the run; a copy whose MD5 disagrees with its ETag is fetched once more (a torn transfer).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from oidownload.core.config import SourceConfig
from oidownload.core.errors import OidownloadError
from oidownload.core.records import Outcome, Row, Status, clean_text
from oidownload.core.records import Source as Kind
from oidownload.sources import Checks, FetchPlan, Source, Tried, register

MIRROR_403_LIMIT = 5  # 403s in a row from the mirror that stop the run
_ETAG_MD5 = re.compile(r'(?:W/)?"?([0-9a-fA-F]{32})"?')


@register("cvdf")
class Cvdf(Source):
    name = "cvdf"

    def __init__(self, cfg: SourceConfig) -> None:
        self.base = cfg.mirror_url.rstrip("/")
        self.mirror_url = cfg.mirror_url
        self.refusals = 0  # 403s in a row

    def plan(self, row: Row) -> FetchPlan:
        return FetchPlan(self, Kind.CVDF, f"{self.base}/{row.subset}/{row.image_id}.jpg", check_etag=True)

    def checks(self, plan: FetchPlan, etag: str | None) -> Checks:
        self.refusals = 0
        md5 = etag_md5(etag)
        if md5 is None:
            return None, "the ETag", f"not hash-checked: the ETag {clean_text(etag or 'none', 80)} is not an MD5"
        return md5, "the ETag", ""

    def failed(self, outcome: Outcome) -> OidownloadError | None:
        """A private bucket or a wrong --mirror-url answers 403 to everything: after a few
        in a row the run stops instead of failing every row."""
        if outcome.http_status in (404, 410):
            outcome.status = Status.NOT_IN_MIRROR
        elif outcome.http_status == 403:
            outcome.status = Status.MIRROR_REFUSED
            self.refusals += 1
            if self.refusals >= MIRROR_403_LIMIT:
                return OidownloadError(
                    f"the mirror at {self.mirror_url} answered 403 Forbidden to {self.refusals} "
                    "requests in a row: is --mirror-url right, and is the bucket public? Rows it refused are "
                    "tried again by the next run")
            return None
        self.refusals = 0
        return None

    def again(self, row: Row, plan: FetchPlan, outcome: Outcome, tried: Tried) -> tuple[FetchPlan, Tried] | None:
        if outcome.status is not Status.MD5_MISMATCH or tried.refetched:
            return None
        return plan, dataclasses.replace(tried, attempts=outcome.attempts, refetched=True)


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
