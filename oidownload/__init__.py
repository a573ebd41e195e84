"""oidownload: turn Open Images CSV lists into verified, resized, sharded image files.

From Python: `oidownload.download(inputs, output, **options)` (or `await
oidownload.download_async(...)`), with the CLI's long option names in snake_case.
"""

__version__ = "0.1.0"

from .api import DownloadResult, download, download_async
from .errors import ConfigError, InputError, OidownloadError, OutputError

__all__ = [
    "ConfigError", "DownloadResult", "InputError", "OidownloadError", "OutputError",
    "__version__", "download", "download_async",
]
