"""The closed sets of values an option takes (StrEnums): the option table offers their
values as choices and Config holds them. Data only."""

from __future__ import annotations

import enum


class SourceChoice(enum.StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"
    AUTO = "auto"
    CVDF = "cvdf"


class Fallback(enum.StrEnum):
    NONE = "none"
    CVDF = "cvdf"


class ResizeMode(enum.StrEnum):
    FIT = "fit"
    FILL = "fill"
    NONE = "none"


class OutputFormat(enum.StrEnum):
    JPEG = "jpeg"
    WEBP = "webp"
    PNG = "png"
    KEEP = "keep"


class Orientation(enum.StrEnum):
    RAW = "raw"
    UPRIGHT = "upright"


class OutputKind(enum.StrEnum):
    FILES = "files"
    WEBDATASET = "webdataset"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class ProgressMode(enum.StrEnum):
    AUTO = "auto"
    BAR = "bar"
    LOG = "log"
    NONE = "none"
