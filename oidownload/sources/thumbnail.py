"""--source thumbnail: Thumbnail300KURL. Nothing to check it against: Flickr makes
thumbnails on the fly, so neither a size nor an MD5 is known."""

from __future__ import annotations

from oidownload.core.config import SourceConfig
from oidownload.core.records import Row
from oidownload.core.records import Source as Kind
from oidownload.sources import FetchPlan, Source, register


@register("thumbnail")
class Thumbnail(Source):
    name = "thumbnail"

    def __init__(self, cfg: SourceConfig) -> None:
        pass

    def plan(self, row: Row) -> FetchPlan | None:
        return FetchPlan(self, Kind.THUMBNAIL, row.thumbnail_url) if row.thumbnail_url else None
