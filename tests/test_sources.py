"""The source registry: one source per --source value, and each source's rules (the
original's fallback, the mirror's ETag check, 403 run and refetch) without a server."""

from __future__ import annotations

import base64

import pytest

from oidownload.core.config import SourceChoice, SourceConfig
from oidownload.core.records import Outcome, Row, Status
from oidownload.core.records import Source as Kind
from oidownload.sources import Tried, open_source, source_names
from oidownload.sources.cvdf import MIRROR_403_LIMIT, etag_md5

MD5 = "rB6yoT3IgA1tc0yO/T4R8w=="


def _row(thumb: str = "https://c1.staticflickr.com/t.jpg") -> Row:
    return Row("000a1249af2bc5f0", "train", "https://farm.staticflickr.com/o.jpg", 1234, MD5, thumb,
               None, False, "in.csv", 2, [])


def test_every_source_choice_is_registered() -> None:
    assert source_names() == sorted(c.value for c in SourceChoice)
    for choice in SourceChoice:
        assert open_source(SourceConfig(choice)).name == choice.value


def test_plans() -> None:
    row = _row()
    original = open_source(SourceConfig(SourceChoice.ORIGINAL)).plan(row)
    assert original is not None and (original.source, original.expected_md5) == (Kind.ORIGINAL, MD5)
    assert open_source(SourceConfig(SourceChoice.THUMBNAIL)).plan(_row(thumb="")) is None
    auto = open_source(SourceConfig(SourceChoice.AUTO))
    assert getattr(auto.plan(row), "source", None) is Kind.THUMBNAIL
    assert getattr(auto.plan(_row(thumb="")), "source", None) is Kind.ORIGINAL
    mirror = open_source(SourceConfig(SourceChoice.CVDF, "https://mirror.test/"))
    plan = mirror.plan(row)
    assert plan is not None and plan.url == "https://mirror.test/train/000a1249af2bc5f0.jpg" and plan.check_etag


@pytest.mark.parametrize(("status", "http", "falls_back"), [
    (Status.HTTP_4XX, 404, True), (Status.HTTP_4XX, 403, False), (Status.UNAVAILABLE, None, True),
    (Status.MD5_MISMATCH, None, True), (Status.TIMEOUT, None, False),
])
def test_fallback_only_when_gone_for_good(status: Status, http: int | None, falls_back: bool) -> None:
    source = open_source(SourceConfig(SourceChoice.ORIGINAL, fallback=True))
    row = _row()
    plan = source.plan(row)
    assert plan is not None
    failed = Outcome(row.image_id, status, http_status=http, attempts=2)
    again = plan.via.again(row, plan, failed, Tried(0.0))
    assert (again is not None) is falls_back
    if again is not None:
        assert again[0].source is Kind.CVDF and again[1].prior is failed and again[1].attempts == 2
    no_fallback = open_source(SourceConfig(SourceChoice.ORIGINAL)).plan(row)
    assert no_fallback is not None and no_fallback.via.again(row, no_fallback, failed, Tried(0.0)) is None


def test_mirror_refetches_a_torn_copy_once() -> None:
    mirror = open_source(SourceConfig(SourceChoice.CVDF))
    row = _row()
    plan = mirror.plan(row)
    assert plan is not None
    torn = Outcome(row.image_id, Status.MD5_MISMATCH, attempts=1)
    again = mirror.again(row, plan, torn, Tried(0.0))
    assert again is not None and again[0] is plan and again[1].refetched
    assert mirror.again(row, plan, torn, again[1]) is None


def test_mirror_statuses_and_403_run() -> None:
    mirror = open_source(SourceConfig(SourceChoice.CVDF))
    gone = Outcome("x", Status.HTTP_4XX, http_status=404)
    assert mirror.failed(gone) is None and gone.status is Status.NOT_IN_MIRROR
    for _ in range(MIRROR_403_LIMIT - 1):
        refused = Outcome("x", Status.HTTP_4XX, http_status=403)
        assert mirror.failed(refused) is None and refused.status is Status.MIRROR_REFUSED
    plan = mirror.plan(_row())
    assert plan is not None
    mirror.checks(plan, None)  # a body came: the run of 403s is broken
    assert mirror.failed(Outcome("x", Status.HTTP_4XX, http_status=403)) is None
    for _ in range(MIRROR_403_LIMIT - 1):
        stop = mirror.failed(Outcome("x", Status.HTTP_4XX, http_status=403))
    assert stop is not None and "403 Forbidden" in str(stop)


def test_etag_check() -> None:
    mirror = open_source(SourceConfig(SourceChoice.CVDF))
    plan = mirror.plan(_row())
    assert plan is not None
    hexmd5 = base64.b64decode(MD5).hex()
    assert mirror.checks(plan, f'"{hexmd5}"') == (MD5, "the ETag", "")
    md5, by, note = mirror.checks(plan, f'"{hexmd5}-3"')
    assert md5 is None and by == "the ETag" and "not hash-checked" in note
    assert etag_md5(f'W/"{hexmd5.upper()}"') == MD5 and etag_md5(None) is None
