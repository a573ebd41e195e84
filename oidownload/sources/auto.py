"""--source auto: the thumbnail when the row has one, else the original (with its
fallback). Its plans are the thumbnail's or the original's, which the engine asks."""

from __future__ import annotations

from oidownload.core.config import SourceConfig
from oidownload.core.records import Row
from oidownload.sources import FetchPlan, Source, register
from oidownload.sources.flickr import Flickr
from oidownload.sources.thumbnail import Thumbnail


@register("auto")
class Auto(Source):
    name = "auto"

    def __init__(self, cfg: SourceConfig) -> None:
        self.thumbnail = Thumbnail(cfg)
        self.original = Flickr(cfg)

    def plan(self, row: Row) -> FetchPlan | None:
        return self.thumbnail.plan(row) if row.thumbnail_url else self.original.plan(row)
