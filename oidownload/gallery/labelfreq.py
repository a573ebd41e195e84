"""The Open Images README's label-frequency view, per split of the download: for each
class, its human-verified image-level labels among the downloaded images, positive
(Confidence 1) and negative (Confidence 0), ordered by positives then negatives, on a
log axis, green and red. Pure: collected entries in, one Figure per split out.
"""

from __future__ import annotations

import collections

from oidownload.dataset.annotations import MACHINE_SOURCES
from oidownload.gallery.collect import Collected
from oidownload.gallery.stats import Figure

# The README's colours: green for positive, red for negative.
POSITIVE_COLOUR = "#3a9a45"
NEGATIVE_COLOUR = "#d0413a"
# Bars drawn per split: 600 classes of pairs would be a chart nobody reads; the table has all.
TOP_LABELS = 100


def label_frequency(data: Collected) -> list[Figure]:
    """A figure per split (in name order) of the downloaded images, when label files were read."""
    if not data.label_files:
        return []
    human = {k for k, s in enumerate(data.label_sources) if s not in MACHINE_SOURCES}
    counts: dict[str, collections.Counter[tuple[int, bool]]] = {}
    for e in data.entries:
        per = counts.setdefault(e.written.subset, collections.Counter())
        for c, confidence, source in e.labels:
            if source in human and confidence in (0.0, 1.0):
                per[c, confidence == 1.0] += 1
    mids, names = data.classes.mids, data.classes.names
    out = []
    for k, split in enumerate(sorted(counts)):
        per = counts[split]
        classes = {c for c, _ in per}
        order = sorted(classes, key=lambda c: (-per[c, True], -per[c, False], names[c].casefold(), mids[c]))
        rows: list[tuple[str, str, tuple[int, ...]]] = [(mids[c], names[c], (per[c, True], per[c, False])) for c in order]
        drawn = min(TOP_LABELS, len(rows))
        more = f" The chart shows the first {drawn} classes; the table has all {len(rows)}." if drawn < len(rows) else ""
        out.append(Figure(
            f"labels-{k}", f"Label frequency: {split}", ("positive", "negative"), rows, log=True, drawn=drawn,
            note=f"Human-verified image-level labels of the {split} images downloaded, per class: positive "
                 "(confidence 1, green) and negative (confidence 0, red), ordered by positives, then negatives, "
                 "as in the Open Images README. Log scale." + more,
            columns=("MID",), extra={mids[c]: [mids[c]] for c in order}, colours=(POSITIVE_COLOUR, NEGATIVE_COLOUR)))
    return out
