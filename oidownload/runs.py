"""What `download`, `select` and `annotations` do, shared by the commands and the API:
each takes checked parameters and returns its result; neither prints a fatal error nor
picks an exit code (the commands' boundary and the API's exceptions do)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oidownload.configure import Say, build_config, plan_selection
from oidownload.core.errors import ConfigError, OidownloadError
from oidownload.core.exits import RESUMABLE, ExitCode
from oidownload.core.options import DownloadParams, SelectionParams
from oidownload.state.reader import StateDir, local_dest
from oidownload.state.remembered import RememberedSelection

if TYPE_CHECKING:
    from oidownload.core.config import Config
    from oidownload.engine.run import RunResult, Stopper
    from oidownload.exports import ExportResult


def check_folder(path: Path | None, what: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise OidownloadError(f"{what} {path} is a file, not a folder; pick another path")


def check_new_file(dest: Path) -> None:
    """An output file's folder must exist and be writable, and the file not be a folder:
    said in one line before any work, rather than found by the first write."""
    if dest.is_dir():
        raise OidownloadError(f"cannot write {dest}: it is a folder; give a file name")
    parent = dest.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe != parent:
        if probe.exists() and not probe.is_dir():
            raise OidownloadError(f"cannot write {dest}: {probe} is a file, not a folder; pick another path")
        missing = parent  # the first folder on the way that is not there, as the user wrote it
        while missing.parent != probe and missing.parent != missing:
            missing = missing.parent
        raise OidownloadError(f"cannot write {dest}: the folder {missing} does not exist; "
                              "create it first or pick another path")
    if not parent.is_dir():
        raise OidownloadError(f"cannot write {dest}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OidownloadError(f"cannot write {dest}: the folder {parent} is not writable; "
                              "fix its permissions or pick another path")


def announce(say: Say, exit_code: int, message: str, resume: str) -> None:
    """The run's verdict on stderr, at the level its code deserves, with how to resume
    when running again carries on."""
    code = ExitCode(exit_code)
    if not message:
        return
    fields: dict[str, Any] = {"exit_code": int(code)}
    if code in RESUMABLE:
        message = f"{message}; to resume, {resume}"
        fields["resume"] = resume
    level = "info" if code == ExitCode.OK else "error" if code == ExitCode.TOO_MANY_FAILURES else "warning"
    say(code.name.lower(), message, level=level, **fields)


def execute(params: DownloadParams, stopper: Stopper | None, resume: str) -> tuple[Config, RunResult]:
    """One download from its parameters, with its verdict said at the end; the CLI and
    the API both run through here. `resume` says how to run it again."""
    from oidownload.core.config import LogFormat, ProgressMode
    from oidownload.core.shard import resolve_with_count
    from oidownload.engine.progress import Progress
    from oidownload.engine.run import run_download
    from oidownload.provenance.rebuild import finish_run
    from oidownload.sinks import is_remote

    check_folder(params["state_dir"], "--state-dir")
    if not is_remote(str(params["out"])):
        check_folder(Path(params["out"]), "-o/--output")
    progress = Progress(ProgressMode(params["progress_mode"]), LogFormat(params["log_format"]),
                        params["progress_interval"])
    try:
        cfg = build_config(params, progress.log)
        shard = resolve_with_count(params["shard_index"], params["num_shards"], os.environ)
        result = run_download(cfg, shard, progress, stopper, finish=finish_run)
    finally:
        progress.close()
    announce(progress.log, result.exit_code, result.message, resume)
    return cfg, result


def run_select(inputs: tuple[Path, ...], dest: Path, p: SelectionParams, say: Say) -> tuple[int, str | None]:
    """`select`'s work, for the command and the API: (rows written, why nothing was
    selected or None)."""
    from oidownload.core.fsio import is_stream_target
    from oidownload.inputs.listing import empty_cause, write_selected

    if str(dest) == "-":
        dest = Path("/dev/stdout")  # `-o -`: the rows go to stdout, the counts to stderr
    if not is_stream_target(dest):
        check_new_file(dest)
    chosen = plan_selection(inputs, p, say)
    limit = None if p["seed"] is not None else p["limit"]
    n = write_selected(inputs, dest, subsets=frozenset(p["subsets"]), ids=chosen.ids, limit=limit)
    if n:
        return n, None
    ids_from = f"--ids {p['ids_file']}" if chosen.ids_from == "--ids" else chosen.ids_from
    why = empty_cause(inputs, subsets=frozenset(p["subsets"]), ids=chosen.ids, ids_from=ids_from)
    return 0, why or "no row of the input is well-formed"


def run_annotations(out: str, fmt: str, annotation_files: tuple[Path, ...], db: str | None,
                    class_descriptions: Path | None, class_names: tuple[str, ...], hierarchy: Path | None,
                    with_parts: bool, dest: Path | None, image_lists: tuple[Path, ...],
                    state_dir: Path | None, *, narrative_traces: bool = False, with_narrative: bool = False,
                    narrative_words: tuple[str, ...] = (), relationships: tuple[str, ...] = (),
                    predicates: tuple[str, ...] = (), attributes: Path | None = None) -> ExportResult:
    """`annotations`' work, for the command and the API. --relationship and --predicate
    (issue 23) keep only the relationships they match."""
    from oidownload.dataset.hierarchy import Hierarchy, expand
    from oidownload.dataset.narratives import NarrativeChoice, narrative_ids
    from oidownload.dataset.selection import class_names as names_of
    from oidownload.dataset.selection import open_annotations
    from oidownload.exports import EXPORTERS, export

    if not EXPORTERS[fmt].beside_images:  # hf writes beside the images, not in a dest
        dest = local_dest(out, dest, "-d/--dest")
    check_folder(dest, "-d/--dest")
    remembered = RememberedSelection.read(StateDir.open(out, state_dir))
    files = list(annotation_files)
    if not files and db is None:
        files, db = list(remembered.annotations), remembered.db
    files = list(dict.fromkeys(files))
    descriptions = class_descriptions or remembered.class_descriptions
    if narrative_traces and fmt not in ("coco", "csv"):  # narratives (issue 23)
        raise ConfigError(f"--narrative-traces: --format {fmt} carries no traces; coco and csv do")
    with open_annotations(tuple(files), db, narrative_traces=narrative_traces) as source:
        names = names_of(source, descriptions)
        classes: frozenset[str] | None = None
        if class_names:
            if names is None and any(not n.startswith("/") for n in class_names):
                raise ConfigError("class names need --class-descriptions or --db")
            classes = frozenset(names.resolve(class_names) if names else class_names)
            if hierarchy is not None:
                classes = expand(sorted(classes), Hierarchy.load(hierarchy), with_parts=with_parts).mids
        elif hierarchy is not None and not (relationships or predicates):
            raise ConfigError("--hierarchy needs --class here: a download's classes are remembered expanded")
        else:
            classes = remembered.classes
        only = None
        told = NarrativeChoice(with_narrative, narrative_words)  # narratives (issue 23)
        if told.active:
            only = frozenset(narrative_ids(source, told))
        wanted = None
        if relationships or predicates:  # relationships and points (issue 23)
            from oidownload.dataset.relationships import Resolver, attribute_names, queries

            tree = Hierarchy.load(hierarchy) if hierarchy is not None else None
            wanted = queries(Resolver(names, attribute_names(source, attributes), tree, with_parts),
                             relationships, predicates)
        return export(out, fmt, source, dest=dest, names=names, classes=classes,
                      state_dir=state_dir, image_lists=list(image_lists) or None, only=only, relationships=wanted)

