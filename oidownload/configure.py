"""Checked download parameters (DownloadParams, from the command line or the API) → one
frozen Config: the selection worked out up front, contradictions refused, --from-lock
applied. The one builder both `oidownload download` and `oidownload.download` use."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from oidownload.core.config import (
    MB,
    Config,
    Fallback,
    ImageConfig,
    LogFormat,
    MaskConfig,
    NetConfig,
    Orientation,
    OutputConfig,
    OutputFormat,
    OutputKind,
    ProgressMode,
    ResizeMode,
    RunConfig,
    SampleFields,
    SelectConfig,
    SourceChoice,
    SourceConfig,
)
from oidownload.core.errors import ConfigError
from oidownload.core.ids import is_image_id
from oidownload.core.options import DEFAULT_QUALITY, SELECTION_KEYS, DownloadParams, SelectionParams
from oidownload.inputs.urls import url_problem
from oidownload.state.reader import default_state_dir

if TYPE_CHECKING:
    from oidownload.dataset.selection import Plan

# say(event, message, level=..., **fields): a line on stderr, a note kept by the API...
Say = Callable[..., None]


def say_nothing(event: str, message: str, *, level: str = "info", **fields: Any) -> None:
    pass


def plan_selection(inputs: tuple[Path, ...], p: SelectionParams, say: Say,
                   ids: frozenset[str] | None = None) -> Plan:
    """The id-level selection (--ids, classes, a seeded sample), worked out up front."""
    from oidownload.dataset.annotations import LabelSource
    from oidownload.dataset.classes import read_classes_file
    from oidownload.dataset.points import PointAnswer
    from oidownload.dataset.selection import ClassChoice, plan

    names = list(p["class_names"])
    if p["classes_file"]:
        names += read_classes_file(p["classes_file"])
    exclude = frozenset(
        attr for flag, attr in (("exclude_occluded", "IsOccluded"), ("exclude_truncated", "IsTruncated"),
                                ("exclude_group_of", "IsGroupOf"), ("exclude_depiction", "IsDepiction"),
                                ("exclude_inside", "IsInside"))
        if p[flag]  # type: ignore[literal-required]
    )
    if p["seed"] is not None and p["limit"] is None and p["limit_per_class"] is None:
        raise ConfigError("--seed samples --limit rows or --limit-per-class images: give one of them too")
    if (p["no_expand"] or p["with_parts"]) and not p["hierarchy"]:
        raise ConfigError("--no-expand and --with-parts need --hierarchy")
    choice = ClassChoice(
        tuple(names), class_descriptions=p["class_descriptions"], annotations=tuple(p["annotation_files"]),
        db=p["db"], hierarchy=p["hierarchy"], expand=not p["no_expand"], with_parts=p["with_parts"],
        filter={"label_source": LabelSource(p["label_source"]), "min_confidence": p["min_confidence"],
                "boxes_only": p["boxes_only"], "exclude": exclude,
                # relationships and points (issue 23)
                "point_answer": PointAnswer(p["point_answer"]), "min_yes_votes": p["min_yes_votes"]},
        limit_per_class=p["limit_per_class"],
        relationships=tuple(p["relationships"]), predicates=tuple(p["predicates"]), attributes=p["attributes_file"],
    )
    from oidownload.dataset.narratives import NarrativeChoice

    narratives = NarrativeChoice(p["with_narrative"], p["narrative_words"])  # narratives (issue 23)
    result = plan(inputs, subsets=frozenset(p["subsets"]), ids=read_ids(p["ids_file"]) if p["ids_file"] else ids,
                  choice=choice, limit=p["limit"], seed=p["seed"], narratives=narratives)
    for note in result.notes:
        say("selection", note)
    for warning in result.warnings:
        say("selection", warning, level="warning")
    return result


def read_ids(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --ids {path}: {exc.strerror or exc}") from None
    ids = set()
    for n, line in enumerate(text.splitlines(), 1):
        token = line.strip().split(",")[0].strip()
        if not token or token.startswith("#") or token == "ImageID":
            continue
        if not is_image_id(token):
            raise ConfigError(f"{path}:{n}: {token[:40]!r} is not a 16-hex-digit ImageID")
        ids.add(token.lower())
    return frozenset(ids)


def _absolute_db(url: str | None) -> str | None:
    """The --db as the journal remembers it: a relative SQLite path made absolute, so
    `annotations` finds it from any folder."""
    if url is None:
        return None
    from oidownload.dataset.db import sqlite_path

    path = sqlite_path(url)
    return str(path.resolve()) if path is not None else url


def _contradictions(p: DownloadParams, fmt: OutputFormat, say: Say) -> None:
    """Options that cannot all be meant: a usage error when one would be silently
    dropped and the output would not be what was asked, a warning when it is only moot."""
    orientation = Orientation(p["orientation"])
    if fmt is OutputFormat.KEEP and (p["resize"] is not None or orientation is Orientation.UPRIGHT):
        raise ConfigError("--format keep writes the fetched bytes unchanged: it cannot --resize or turn --orientation upright")
    if ResizeMode(p["resize_mode"]) is ResizeMode.FILL and p["resize"] is None:
        raise ConfigError("--resize-mode fill crops to NxN: give the size with --resize N")
    if p["keep_original"] and SourceChoice(p["source"]) is SourceChoice.THUMBNAIL:
        raise ConfigError("--keep-original keeps the verified original, which --source thumbnail never fetches: "
                          "drop one of them")
    if p["quality"] is not None and fmt in (OutputFormat.PNG, OutputFormat.KEEP):
        say("options", f"--quality applies to jpeg and webp; --format {fmt.value} ignores it", level="warning")


def build_config(p: DownloadParams, say: Say = say_nothing) -> Config:
    lock_ids: frozenset[str] | None = None
    if p.get("from_lock") is not None:
        from oidownload.provenance.rebuild import apply_lock

        p = cast(DownloadParams, dict(p))
        kept = p["from_lock"] = _lock_kept_apart(p)
        lock_ids = apply_lock(cast(dict[str, Any], p), kept, SELECTION_KEYS)
        if not p["inputs"]:
            p["inputs"] = (_manifest_from_lock(p),)
    if not p["inputs"]:
        raise ConfigError("Missing argument 'INPUTS...': give the image lists to download (or --from-lock LOCK)")
    fmt = OutputFormat(p["fmt"])
    orientation = Orientation(p["orientation"])
    _contradictions(p, fmt, say)
    for md5 in p["placeholder_md5"]:
        if not re.fullmatch(r"[A-Za-z0-9+/]{22}==", md5):
            raise ConfigError(f"--placeholder-md5 {md5!r} is not a base64 MD5")
    net = NetConfig(
        headers=_headers(p["headers"]),
        **({"user_agent": p["user_agent"]} if p["user_agent"] else {}),  # type: ignore[arg-type]
        concurrency=p["concurrency"], per_host=p["per_host"], connect_timeout=p["connect_timeout"],
        read_timeout=p["read_timeout"], total_timeout=p["timeout"], image_deadline=p["deadline"],
        retries=p["retries"], max_body_bytes=int(p["max_body_mb"] * MB), max_redirects=p["max_redirects"],
    )
    image = ImageConfig(
        resize=p["resize"], resize_mode=ResizeMode(p["resize_mode"]), format=fmt,
        quality=DEFAULT_QUALITY if p["quality"] is None else p["quality"],
        orientation=orientation, keep_original=p["keep_original"], placeholder_md5s=frozenset(p["placeholder_md5"]),
        max_decode_bytes=int(p["max_decode_mb"] * MB),
    )
    chosen = plan_selection(tuple(p["inputs"]), p, say, lock_ids)
    select = SelectConfig(
        subsets=frozenset(p["subsets"]),
        # A seeded sample is already cut to --limit; otherwise the first rows count.
        limit=None if p["seed"] is not None else p["limit"],
        retry_failed=p["retry_failed"], ids=chosen.ids,
        ids_from=chosen.ids_from if p["ids_file"] is None or chosen.ids_from != "--ids" else f"--ids {p['ids_file']}",
        classes=chosen.classes, annotations=tuple(a.resolve() for a in chosen.annotations),
        class_descriptions=chosen.class_descriptions.resolve() if chosen.class_descriptions else None,
        db=_absolute_db(chosen.db), options=_selection_options(p),
        from_lock=lock.resolve() if (lock := p.get("from_lock")) else None,
    )
    run = RunConfig(
        processes=p["processes"], max_bytes_in_flight=int(p["max_bytes_in_flight_mb"] * MB),
        grace=p["grace"], max_failure_rate=p["max_failure_rate"], max_runtime=p["max_runtime"],
        log_format=LogFormat(p["log_format"]), progress=ProgressMode(p["progress_mode"]),
        progress_interval=p["progress_interval"], resplit=p["resplit"],
        metrics_port=p["metrics_port"], metrics_addr=p["metrics_addr"], metrics_file=p["metrics_file"],
        metrics_linger=p["metrics_linger"] or 0.0,
    )
    out = str(p["out"])
    output = OutputConfig(out=out, state_dir=p["state_dir"] or default_state_dir(out), kind=OutputKind(p["output_format"]),
                          shard_size=p["shard_size"], fsync=p["fsync"])
    if output.kind is OutputKind.WEBDATASET:  # issue 23: captions, relationships and points in each sample
        output = dataclasses.replace(output, sample_fields=_sample_fields(chosen, output.state_dir, say))
    mirror = p["mirror_url"]
    if "://" not in mirror or mirror.startswith("file:"):
        # A local copy is fetched like the mirror itself, over HTTP: one line serves it.
        raise ConfigError(f"--mirror-url {mirror!r} is not an http(s) URL; to use a local copy of the mirror, serve "
                          "its folder: `python -m http.server 8000 --bind 127.0.0.1 --directory FOLDER` and pass "
                          "--mirror-url http://127.0.0.1:8000")
    # The rule every input URL meets, so that a mirror URL cannot fail each row later.
    why = url_problem(mirror) if re.fullmatch(r"[^\s?#]*", mirror) else "has a query or spaces"
    if why is not None:
        raise ConfigError(f"--mirror-url {mirror!r} {why}")
    source = SourceConfig(SourceChoice(p["source"]), mirror.rstrip("/"), Fallback(p["fallback"]) is Fallback.CVDF)
    if source.fallback and source.choice in (SourceChoice.CVDF, SourceChoice.THUMBNAIL):
        raise ConfigError(f"--fallback cvdf applies to --source original or auto, not {source.choice.value}")
    return Config(inputs=tuple(p["inputs"]), output=output, net=net, source=source, image=image, select=select, run=run,
                  masks=_masks(p, chosen, say))


# masks (issue 22)
def _masks(p: DownloadParams, chosen: Plan, say: Say) -> MaskConfig:
    """--masks: the masks of the selection, from its segmentation rows."""
    if not p.get("masks"):
        return MaskConfig()
    from oidownload.dataset.maskplan import mask_zips, wanted_masks
    from oidownload.dataset.selection import open_annotations

    annotations = tuple(chosen.annotations) or tuple(p["annotation_files"])
    db = chosen.db or p["db"]
    if not annotations and db is None:
        raise ConfigError("--masks needs the segmentation CSVs in --annotations (or a --db they were loaded into)")
    with open_annotations(annotations, db) as source:
        wanted = wanted_masks(source, chosen.ids, chosen.classes or None)
    n = sum(map(len, wanted.values()))
    say("masks", f"--masks: {n} mask(s) of {len(wanted)} image(s) to fetch", masks=n, images=len(wanted))
    return MaskConfig(wanted=wanted, zips=mask_zips(p["masks_url"]), url=p["masks_url"])


def _sample_fields(chosen: Plan, state_dir: Path, say: Say) -> Callable[[], SampleFields] | None:
    """What the shards' samples carry of the selection (issue 23): its captions,
    relationships and points, put in the state dir before the run; None without any."""
    import sqlite3

    from oidownload.dataset.samplefields import FILE_NAME, SampleFieldsFile, write_sample_fields
    from oidownload.dataset.selection import open_annotations

    path = Path(state_dir) / FILE_NAME
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        with open_annotations(chosen.annotations, chosen.db) as source:
            n = write_sample_fields(source, chosen, path)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot write what the shards' samples carry in {state_dir}: {why}") from None
    if n is None:
        return None
    if n.captions:
        say("selection", f"{n.captions} captions of the selected images go into the shards as <ImageID>.txt")
    if n.relationships or n.points:
        say("selection", f"{n.relationships} relationships and {n.points} points of the selected images go into "
                         "the shards' <ImageID>.json, in the frame each image is written in")
    for kind, bad in n.unreadable.items():
        say("selection", f"{bad} row(s) of the {kind} files with a value that is not a number were left out",
            level="warning")
    return functools.partial(SampleFieldsFile, path)


def _selection_options(p: DownloadParams) -> str:
    """The selection flags that were given, as JSON (paths made absolute), for the lock."""
    found: dict[str, Any] = {}
    explicit = p.get("explicit")
    for key in SELECTION_KEYS:
        value = p.get(key)
        if value in (None, False, (), []) or (explicit is not None and key not in explicit):
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, tuple):
            value = [str(v.resolve()) if isinstance(v, Path) else v for v in value]
        found[key] = value
    return json.dumps(found, sort_keys=True)


def _lock_kept_apart(p: DownloadParams) -> Path:
    """--from-lock naming OUT's own lock (a rebuild resumed in place): a copy in the state
    dir is compared with, since the run's end replaces the lock itself; the first copy
    stays, so that every resume compares with the lock the rebuild started from."""
    from oidownload.provenance.lock import lock_path

    given = p["from_lock"]
    assert given is not None
    state_dir = Path(p["state_dir"] or default_state_dir(str(p["out"])))
    own = lock_path(str(p["out"]), state_dir)
    try:
        if not own.exists() or not given.exists() or not os.path.samefile(given, own):
            return given
        kept = state_dir / "from.lock.jsonl.gz"
        if not kept.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(given, kept)
    except OSError as exc:
        raise ConfigError(f"cannot keep a copy of {given} in {state_dir}: {exc.strerror or exc}") from None
    return kept


def _manifest_from_lock(p: DownloadParams) -> Path:
    """The lock's URLs as an input list in the state dir, for --from-lock without INPUTS."""
    from oidownload.provenance.rebuild import write_manifest

    lock = p["from_lock"]
    assert lock is not None
    state_dir = p["state_dir"] or default_state_dir(str(p["out"]))
    path = Path(state_dir) / "from-lock-images.csv"
    try:
        write_manifest(lock, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    found = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()) or re.search(r"[\r\n\x00]", text):
            raise ConfigError(f"--header {value!r} is not 'Name: value'")
        found.append((name.strip(), text.strip()))
    return tuple(found)
