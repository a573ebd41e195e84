"""`download --from-lock LOCK`: rebuilds a lock's dataset somewhere else, with the same
ImageIDs and the same byte-changing settings, and says per image how the result
compares with the lock:

    identical         the same SHA-256
    different         written from the same source, other bytes (a re-made thumbnail,
                      another Pillow build, an origin file that changed)
    different_source  written from another source than the lock's (the mirror's copy
                      where the lock had the original)
    missing           gone everywhere (not written this time)
"""

from __future__ import annotations

import csv
import heapq
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oidownload.core.config import Config
from oidownload.core.errors import ConfigError, OidownloadError
from oidownload.core.fsio import atomic_file
from oidownload.engine.progress import Progress
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.provenance.lock import Lock, write_lock
from oidownload.sinks import is_remote
from oidownload.state.report import running_tasks

VERDICTS = ("identical", "different", "different_source", "missing")
META_KEY = "from_lock"

# Lock setting → the download parameter that sets it.
_PARAMS = {
    "source": "source", "fallback": "fallback", "resize": "resize", "resize_mode": "resize_mode", "format": "fmt",
    "quality": "quality", "orientation": "orientation", "output_format": "output_format",
    "keep_original": "keep_original", "shard_size": "shard_size",
}
_FLAGS = {
    "source": "--source", "fallback": "--fallback", "resize": "--resize", "resize_mode": "--resize-mode",
    "fmt": "--format", "quality": "--quality", "orientation": "--orientation", "output_format": "--output-format",
    "keep_original": "--keep-original", "shard_size": "--shard-size",
}

_SELECTION_FLAGS = {"subsets": "--subset", "ids_file": "--ids", "class_names": "--class",
                    "annotation_files": "--annotations", "narrative_words": "--narrative-contains"}  # narratives: issue 23


def _flag(param: str, value: Any) -> str:
    flag = _FLAGS.get(param, "--" + param.replace("_", "-"))
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"no {flag}" if value is None else f"{flag} {value}"


def apply_lock(p: dict[str, Any], lock_file: Path, selection_keys: tuple[str, ...]) -> frozenset[str]:
    """Takes the lock's settings into the download parameters `p`, refusing an option
    given explicitly with another value (naming both); returns the lock's written
    ImageIDs, which become the selection."""
    lock = Lock.open(lock_file)
    explicit: frozenset[str] = p.get("explicit", frozenset())
    for key in selection_keys:
        if key in explicit and p.get(key) not in (None, False, (), []):
            flag = _SELECTION_FLAGS.get(key, "--" + key.replace("_", "-"))
            raise ConfigError(f"--from-lock {lock_file} selects the lock's ImageIDs: {flag} cannot be combined with it")
    settings = lock.header.get("settings") or {}
    for name, param in _PARAMS.items():
        if name not in settings:
            continue
        value = settings[name]
        if value is None and name in ("quality", "shard_size"):
            continue  # a setting that changes nothing for these bytes: the default stands
        if name == "resize_mode" and settings.get("resize") is None:
            continue
        given = p.get(param)
        if param in explicit and _norm(given) != _norm(value):
            raise ConfigError(f"{_flag(param, given)} conflicts with the lock's {_flag(param, value)} ({lock_file}): "
                              "--from-lock rebuilds with the lock's settings; leave the option out")
        p[param] = value
    ids = frozenset(str(line["id"]) for line in lock.lines() if line.get("status") == "ok")
    if not ids:
        raise ConfigError(f"the lock {lock_file} lists no written image: nothing to rebuild")
    return ids


# Stands in for a row whose lock line knows no OriginalMD5 (a lock of an output made
# before it was kept): an original fetched for it fails md5_mismatch, and says why.
_UNKNOWN_MD5 = "AAAAAAAAAAAAAAAAAAAAAA=="


def write_manifest(lock_file: Path, path: Path) -> int:
    """An images.csv (V3 columns) of the lock's written images, with the URL each was
    fetched from and the OriginalMD5 and OriginalSize the lock kept: a rebuild needs no
    input list. Licence, author and title are not in a lock: those columns are empty."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(V3_COLUMNS)
        for line in Lock.open(lock_file).lines():
            url = str(line.get("url") or "")
            if line.get("status") != "ok" or not url:
                continue
            thumb = url if line.get("source") == "thumbnail" else ""
            w.writerow([line["id"], line.get("subset") or "", url, "", "", "", "", "",
                        str(line.get("original_size") or 0), line.get("original_md5") or _UNKNOWN_MD5, thumb])
            n += 1
    return n


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Compared:
    image_id: str
    verdict: str
    lock: Mapping[str, Any]
    now: Mapping[str, Any] | None


def verdict(old: Mapping[str, Any], new: Mapping[str, Any] | None) -> str:
    if new is None or new.get("status") != "ok":
        return "missing"
    if old.get("sha256") and new.get("sha256") == old.get("sha256"):
        return "identical"
    if new.get("source") != old.get("source"):
        return "different_source"
    return "different"


def compare(old_lock: Path, new_lock: Path) -> Iterator[Compared]:
    """Each image the old lock wrote, against what the new one says, in ImageID order
    (both locks are sorted by it): one pass over each, flat memory."""
    old = ((int(line["id"], 16), 0, line) for line in Lock.open(old_lock).lines() if line.get("status") == "ok")
    new = ((int(line["id"], 16), 1, line) for line in Lock.open(new_lock).lines())
    for _, group in itertools.groupby(heapq.merge(old, new, key=lambda t: (t[0], t[1])), key=lambda t: t[0]):
        items = list(group)
        was = next((line for _, side, line in items if side == 0), None)
        if was is None:
            continue  # written now, not asked for by the lock (another input's row)
        now = next((line for _, side, line in items if side == 1), None)
        yield Compared(str(was["id"]), verdict(was, now), was, now)


def counts(compared: Iterator[Compared]) -> dict[str, int]:
    found = dict.fromkeys(VERDICTS, 0)
    for c in compared:
        found[c.verdict] += 1
    return found


def describe(found: Mapping[str, int]) -> str:
    return ", ".join(f"{found[v]} {v.replace('_', ' ')}" for v in VERDICTS)


CSV_COLUMNS = ("ImageID", "verdict", "lock_source", "source", "lock_sha256", "sha256", "lock_size", "size",
               "status", "detail")


def write_csv(path: Path, old_lock: Path, new_lock: Path) -> dict[str, int]:
    """One row per image of the old lock: how this output's copy compares."""
    found = dict.fromkeys(VERDICTS, 0)
    with atomic_file(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for c in compare(old_lock, new_lock):
            found[c.verdict] += 1
            now = c.now or {}
            w.writerow([c.image_id, c.verdict, c.lock.get("source") or "", now.get("source") or "",
                        c.lock.get("sha256") or "", now.get("sha256") or "", c.lock.get("size") or "",
                        now.get("size") or "", now.get("status") or "not journaled", now.get("detail") or ""])
    return found


def _last_writer(cfg: Config) -> str | None:
    """Another task of the output still running (its tag), which will write the lock in
    its turn; None when this task is the last and writes it.

    The rule, and why two tasks ending together never both leave it: a task stops
    counting as running (`running_tasks`: its journal's writer lock is released) when
    `run_download` closes its journal, before it calls this. So of two tasks that end
    at the same moment, the one that looks second finds the other no longer running,
    and writes. Both may write (each replaces the lock atomically with the same
    content): a wasted pass, never a missing lock. A task killed before its end leaves
    no live writer, so it holds back no one."""
    try:
        others = running_tasks(cfg.output.out, cfg.output.state_dir)
    except OidownloadError:
        return None  # the journals cannot be read: writing the lock says why
    return others[0] if others else None


def finish_run(cfg: Config, progress: Progress, stopped: bool = False) -> dict[str, int] | None:
    """The end of every download (`run_download`'s finish): the lock and the Croissant
    card, rewritten by the last task of the output to finish (one pass over the whole
    output, not one per task); a failure is said, and costs the run nothing
    (`oidownload lock OUT` writes them again). With --from-lock, returns each verdict's
    count against that lock, for the summary."""
    if stopped and is_remote(cfg.output.out):
        # A stop is asked to end within --grace; uploads to a bucket that may be the reason
        # for the stop could take many times that. The next run, or `oidownload lock`, writes them.
        progress.log("lock", f"the lock and the card are not written to {cfg.output.out} after a stop: the next run "
                     "writes them, or `oidownload lock` now", level="warning")
        return None
    writer = _last_writer(cfg)
    if writer is not None:
        progress.log("lock", f"the lock and the card are left to task {writer}, still running: the last task of "
                     f"{cfg.output.out} to finish writes them (`oidownload lock` writes them now)", writer=writer)
        return None
    try:
        res = write_lock(cfg.output.out, cfg.output.state_dir, grace=cfg.run.grace)
    except Exception as exc:  # whatever it was, the images and the journal are done: say it, go on
        progress.log("lock", f"the lock file was not written: {type(exc).__name__}: {exc}", level="warning")
        return None
    progress.log("lock", f"wrote {res.path} ({res.lines} images) in {res.seconds:.1f}s", path=str(res.path),
                 images=res.lines)
    if cfg.select.from_lock is None:
        return None
    try:
        found = counts(compare(cfg.select.from_lock, res.path))
    except OidownloadError as exc:
        progress.log("from-lock", f"not compared with {cfg.select.from_lock}: {exc}", level="warning")
        return None
    progress.log("from-lock", f"compared with {cfg.select.from_lock}: `oidownload report` lists each image in "
                 "from-lock.csv")
    return found
