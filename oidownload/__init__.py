"""oidownload: turn Open Images CSV lists into verified, resized, sharded image files.

From Python, with each command's long option names in snake_case:
`oidownload.download(inputs, output, **options)` (or `await oidownload.download_async(...)`),
`oidownload.status(out)`, `oidownload.select(inputs, output, **options)` and
`oidownload.annotations(out, format="coco", **options)`.
"""

__version__ = "0.1.0"

from oidownload.api import (
    DownloadResult,
    JobStatus,
    SelectResult,
    download,
    download_async,
    export_annotations,
    select,
    status,
)
from oidownload.core.errors import ConfigError, InputError, OidownloadError, OutputError
from oidownload.exports import ExportResult

# Bound after the imports, which load the submodule oidownload/annotations.py and set
# this name to it: `oidownload.annotations` is the function; the module is still
# imported by its full name (`from oidownload.annotations import ...`).
annotations = export_annotations

__all__ = [
    "ConfigError", "DownloadResult", "ExportResult", "InputError", "JobStatus", "OidownloadError", "OutputError",
    "SelectResult", "__version__", "annotations", "download", "download_async", "select", "status",
]
