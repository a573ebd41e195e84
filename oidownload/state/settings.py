"""The settings that change the bytes a run writes, as one flat record: remembered in
every journal, and compared before a rerun into the same output, so one OUT never mixes
images of two sizes, formats or sources without a word.

`written_settings(cfg)` → the record; `differences(old, new)` → one line per setting that
differs, in the flags a user types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oidownload.core.config import Config, OutputFormat, OutputKind, ResizeMode
from oidownload.core.errors import ConfigError, InputError
from oidownload.state.reader import StateDir

META_KEY = "settings"

# Setting → the flag that sets it, in the order a message lists them.
FLAGS = {
    "source": "--source", "fallback": "--fallback", "resize": "--resize", "resize_mode": "--resize-mode",
    "format": "--format", "quality": "--quality", "orientation": "--orientation",
    "output_format": "--output-format", "keep_original": "--keep-original", "shard_size": "--shard-size",
}


def written_settings(cfg: Config) -> dict[str, Any]:
    """Only what changes the bytes: --quality of a PNG and --resize-mode without --resize
    change nothing, so they are left out rather than refused on a rerun."""
    img = cfg.image
    lossy = img.format in (OutputFormat.JPEG, OutputFormat.WEBP)
    return {
        "source": cfg.source.choice.value,
        "fallback": "cvdf" if cfg.source.fallback else "none",
        "resize": img.resize,
        "resize_mode": img.resize_mode.value if img.resize is not None else ResizeMode.NONE.value,
        "format": img.format.value,
        "quality": img.quality if lossy else None,
        "orientation": img.orientation.value,
        "output_format": cfg.output.kind.value,
        "keep_original": img.keep_original,
        "shard_size": cfg.output.shard_size if cfg.output.kind is OutputKind.WEBDATASET else None,
    }


def _as_flag(key: str, value: Any) -> str:
    flag = FLAGS.get(key, key)
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {flag}"
    return f"{flag} {value}"


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'--resize 640 (this run: --resize 320)' for each setting both know and disagree on."""
    return [f"{_as_flag(k, old[k])} (this run: {_as_flag(k, new[k])})"
            for k in FLAGS if k in old and k in new and old[k] != new[k]]


def same_flags(old: Mapping[str, Any]) -> str:
    """The flags that reproduce `old`, for the message's first way out."""
    return " ".join(_as_flag(k, v) for k, v in old.items()
                    if k in FLAGS and v is not None and v is not False)


def remembered(state_dir: Path) -> list[dict[str, Any]]:
    """The settings each journal of the state dir recorded; a journal older than this
    record still names its output format and --keep-original."""
    state = StateDir(state_dir)
    found: list[dict[str, Any]] = []
    try:
        state.check()
        values = [(key, value) for key in (META_KEY, "output") for value in state.meta(key)]
    except InputError:
        return found  # a journal that cannot be read: opening it for the run says why
    for key, value in values:
        try:
            d = json.loads(value)
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        if key == "output":
            d = {k: v for k, v in (("output_format", d.get("kind")), ("keep_original", d.get("keep_original")))
                 if v is not None}
        found.append(d)
    return found


def check_rerun(state_dir: Path, out: str, settings: Mapping[str, Any]) -> None:
    """Refuses a run whose byte-changing settings differ from any earlier run's into
    the same output, naming each difference and the two ways out; a resume with the
    same settings passes in silence."""
    for old in remembered(state_dir):
        diff = differences(old, settings)
        if diff:
            raise ConfigError(
                f"{out} was downloaded with other settings than this run's: {'; '.join(diff)}. One output holds "
                f"images made one way: rerun with the same flags ({same_flags(old) or 'the defaults'}), "
                "or download into another output folder (-o)")
