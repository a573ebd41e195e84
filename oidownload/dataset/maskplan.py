"""--masks (issue 22): which masks a download fetches, from the segmentation rows of its
selection (the CSVs among --annotations, or --db's `masks` table), and where each
(split, first hex digit) mask zip is.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

from oidownload.core.errors import ConfigError
from oidownload.core.records import MaskRef
from oidownload.dataset.annotations import AnnotationSource
from oidownload.dataset.kinds import SEGMENTATION
from oidownload.dataset.releases import MASK_DIGITS, MASK_SPLITS, mask_zip_url


def wanted_masks(source: AnnotationSource, ids: Container[str] | None,
                 classes: Container[str] | None) -> dict[str, tuple[MaskRef, ...]]:
    """Lower-case ImageID → its masks: the segmentation rows of the images `ids` (all
    when None), of the classes `classes` only when given (as boxes follow --class)."""
    tables = [t for t in source.tables() if t.kind is SEGMENTATION]
    if not tables:
        raise ConfigError("--masks needs the segmentation CSVs (…-annotations-object-segmentation.csv) among "
                          "--annotations, or loaded into --db")
    out: dict[str, list[MaskRef]] = {}
    for t in tables:
        i_path, i_id, i_label, i_box = (t.index(c) for c in ("MaskPath", "ImageID", "LabelName", "BoxID"))
        for fields in t.rows(ids):
            if classes is not None and fields[i_label] not in classes:
                continue
            refs = out.setdefault(fields[i_id].lower(), [])
            ref = MaskRef(fields[i_box], fields[i_label], fields[i_path])
            if ref not in refs:  # the same row in two files is one mask
                refs.append(ref)
    return {k: tuple(v) for k, v in out.items()}


def mask_zips(masks_url: str) -> dict[tuple[str, str], str]:
    """(split, digit) → the zip's URL or local path; for a local folder that holds the
    unpacked PNGs and no zips, the folder itself (each split and digit)."""
    local = "://" not in masks_url
    if local:
        folder = Path(masks_url)
        if not folder.is_dir():
            raise ConfigError(f"--masks-url {masks_url}: no such folder (give a URL, or a folder of mask zips or PNGs)")
        if not any(folder.glob("*-masks")) and not any(folder.glob("*.zip")):
            return {(s, d): str(folder) for s in MASK_SPLITS for d in MASK_DIGITS}
        masks_url = str(folder.resolve())
    return {(s, d): mask_zip_url(s, d, masks_url) for s in MASK_SPLITS for d in MASK_DIGITS}
