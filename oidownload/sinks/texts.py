"""What a webdataset sample carries beside its image (issue 23): `<ImageID>.txt` (the
first caption of its localized narratives) and, in its `<ImageID>.json`, `captions`,
`relationships` and `points` in the frame it was written in. The dataset layer works
them out (dataset/samplefields.py, from an SQLite file the selection writes before the
run, so the run holds none of it in memory) behind `SampleFields` (core/config.py),
which OutputConfig.sample_fields opens: the sink never imports the dataset layer.
"""

from __future__ import annotations

from typing import Any

from oidownload.core.config import SampleFields
from oidownload.core.records import Outcome


def add_sample_fields(fields: SampleFields | None, outcome: Outcome, sample: dict[str, Any]) -> bytes | None:
    """Adds the sample's fields to its JSON and returns its `.txt` member, if any. A key
    the sink already wrote is kept: those say what was written and from where."""
    if fields is None:
        return None
    for key, value in fields.fields(outcome).items():
        sample.setdefault(key, value)
    return fields.text(outcome)
