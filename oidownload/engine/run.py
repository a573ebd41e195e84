"""One task's run, set up and judged: `run_download` checks the output and the state,
recovers the sink, opens the journal and the pool, runs the task (engine/task.py) in
a loop of its own, and turns how it ended into a `RunResult` and an exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oidownload.core.config import Config
from oidownload.core.errors import ConfigError, InputError, OutputError
from oidownload.core.exits import ExitCode, JobCounts, Verdict, finished_verdict
from oidownload.core.records import RETRYABLE, Outcome, Status, is_final
from oidownload.core.shard import Shard
from oidownload.engine.accel import pillow_build
from oidownload.engine.attempt import pool_slots
from oidownload.engine.cpus import usable_cpus
from oidownload.engine.fds import fit_concurrency
from oidownload.engine.maskrepair import run_repair
from oidownload.engine.metrics import Exporter, Metrics, check_file, expand_path, listen
from oidownload.engine.progress import Progress, Tally
from oidownload.engine.stopping import Stopper
from oidownload.engine.task import Task
from oidownload.engine.workers import start_workers
from oidownload.inputs.listing import empty_cause
from oidownload.inputs.rows import read_header
from oidownload.inputs.text import decode_errors
from oidownload.sinks import Sink, open_sink
from oidownload.state.journal import (
    DoneSet,
    Journal,
    journal_files,
    journal_path,
    other_done_sets,
    shard_counts,
    writer_alive,
)
from oidownload.state.reader import StateDir, default_state_dir
from oidownload.state.settings import META_KEY as SETTINGS_KEY
from oidownload.state.settings import check_rerun, written_settings

__all__ = ["Finish", "RunResult", "Stopper", "run_download"]


@dataclass
class RunResult:
    tally: Tally
    exit_code: int
    wall: float
    cpu: float
    message: str = ""
    # The job as the journal holds it after the run (this task's share, every run so far).
    job: JobCounts = dataclasses.field(default_factory=JobCounts)


# What runs after a run whose journal is complete; its counts go in the summary.
Finish = Callable[[Config, Progress, bool], dict[str, int] | None]  # (…, stopped: a signal or --max-runtime)


def _fit_descriptors(cfg: Config, progress: Progress) -> Config:
    """The config with a concurrency that fits the open-file limit, said when lowered."""
    fit = fit_concurrency(cfg.net.concurrency, pool_slots(cfg.run.processes or 1))
    if not fit.lowered:
        return cfg
    progress.log("warning", f"the open-file limit (ulimit -n {fit.limit}) fits {fit.concurrency} requests at once: "
                 f"--concurrency lowered from {cfg.net.concurrency}, so that the journal can always be written; "
                 "raise the limit (ulimit -n 4096) to go faster", concurrency=fit.concurrency, nofile=fit.limit)
    per_host = None if cfg.net.per_host is None else min(cfg.net.per_host, fit.concurrency)
    net = dataclasses.replace(cfg.net, concurrency=fit.concurrency, per_host=per_host)
    return dataclasses.replace(cfg, net=net)



def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _cpu_seconds(children: bool = True) -> float:
    """CPU seconds of this process (its threads included), and of the pool workers it
    reaped when `children`: the main process's share is what benchmarks/ tracks."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total


def _prepare_state(state_dir: Path, out: str) -> None:
    # Blame --state-dir only when it was given; else the journal's place follows from OUT.
    given = state_dir != default_state_dir(out)
    what = f"the state dir {state_dir}" if given else f"the journal folder {state_dir} (in OUT)"
    fix = "pick a writable --state-dir" if given else "pick another OUT, or keep the journal elsewhere with --state-dir"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what}: {exc.strerror or exc}; {fix}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{what} is not writable; fix its permissions or {fix}")


def _check_split(state_dir: Path, shard: Shard, resplit: bool) -> None:
    """One split of the rows per output, unless a re-split is asked for; and never two
    splits at once: their tasks would fetch the same images twice."""
    others = [p for p in journal_files(state_dir) if not p.name.endswith(f"-of-{shard.count}.sqlite")]
    if not others:
        return
    counts = "/".join(map(str, sorted(shard_counts(state_dir) - {shard.count})))
    busy = [p.name for p in others if writer_alive(p)]
    if busy:
        raise ConfigError(
            f"{state_dir} is being written with another split of the rows ({', '.join(busy[:3])}), but this run is "
            f"{shard.describe()}: both would fetch the same images. Wait for it to finish, or run with its split"
        )
    if shard.origin not in ("flags", "single task"):
        # A share worked out from the scheduler's environment: resubmitting one array task
        # as an array of one would otherwise make it take every row.
        raise ConfigError(
            f"{state_dir} holds a split {counts} ways (journal-*-of-N), but this task is {shard.describe()}. "
            f"To rerun one array task keep its array: `scontrol requeue JOBID_TASKID`, or pass --num-shards N "
            f"--shard-index I (or OIDOWNLOAD_NUM_SHARDS/OIDOWNLOAD_SHARD_INDEX)"
        )
    if not resplit:
        raise ConfigError(
            f"{state_dir} holds a split {counts} ways (journal-*-of-N), but this run is {shard.describe()}. "
            "Pass --resplit to split the same output another way (finished images are not fetched again), "
            f"or run with --num-shards {counts.split('/')[0]}"
        )


def _recover(journal: Journal, sink: Sink, shard: Shard, progress: Progress, *, crashed: bool) -> None:
    """What the sink finds committed, or lost, after the last run (`crashed`: it did
    not end cleanly), journaled before the run decides what is left to do."""
    found = sink.recover(journal.sink_state(), shard.owns, crashed)
    # Before the state that goes with it: a crash in between finds the same loss again.
    for lost in found.unproven:
        n = journal.unfound(lost.shard, lost.kept, f"{lost.why}: fetched again")
        if n:
            progress.log("recover", f"{lost.why}: {n} sample(s) journaled in it are not there and "
                         "are fetched again", level="warning", shard_file=lost.shard, lost=n)
    journal.record(found.committed, found.state)
    for warning in sink.warnings():
        progress.log("recover", warning, level="warning")
    if crashed:
        progress.log("recover", f"the last run of {shard.describe()} did not finish cleanly; "
                     f"cleaned up after it in {sink.describe()}")


def _remember(journal: Journal, cfg: Config, settings: dict[str, object]) -> None:
    """What the readers of the journal need of this run: the output, the settings, the
    inputs, and the selection (for `annotations`, `lock` and the croissant)."""
    journal.set_meta("output", json.dumps({"out": cfg.output.out, "kind": cfg.output.kind.value,
                                            "keep_original": cfg.image.keep_original}))
    journal.set_meta(SETTINGS_KEY, json.dumps(settings))
    if cfg.select.options:
        journal.set_meta("selection_options", cfg.select.options)
    if cfg.select.from_lock is not None:
        journal.set_meta("from_lock", str(cfg.select.from_lock))
    journal.register_inputs(cfg.inputs)
    sel = cfg.select
    if sel.annotations or sel.classes or sel.db:
        journal.set_meta("selection", json.dumps({
            "annotations": [str(a) for a in sel.annotations], "classes": sorted(sel.classes),
            "class_descriptions": str(sel.class_descriptions) if sel.class_descriptions else None,
            "db": sel.db,
        }))


def _rebuild(journal: Journal, sink: Sink, shard: Shard, progress: Progress) -> None:
    """A new journal next to an output that already holds images (the state dir was
    lost, or moved): record what the output holds, so none of it is fetched again."""
    batch: list[Outcome] = []
    found = 0
    for outcome in sink.rebuild(shard.owns):
        batch.append(outcome)
        if len(batch) >= 10_000:
            journal.record(batch)
            found += len(batch)
            batch = []
    journal.record(batch)
    found += len(batch)
    for warning in sink.warnings():
        progress.log("rebuild", warning, level="warning")
    if found:
        progress.log("rebuild", f"the journal was new: found {found} image(s) already in {sink.describe()}; "
                     "they are not fetched again", rebuilt=found)


def run_download(cfg: Config, shard: Shard, progress: Progress, stopper: Stopper | None = None,
                 finish: Finish | None = None) -> RunResult:
    """Runs one task's share to the end, a stop, or a fatal error. Fatal errors are
    raised (after the journal is flushed); everything else is in the result. `finish`
    runs once the journal is closed (the lock file and the --from-lock comparison: the
    engine does not know them); what it returns goes in the summary as `from_lock`."""
    if not cfg.inputs:
        raise InputError("no input CSV given")
    formats = [read_header(p) for p in cfg.inputs]  # a bad header stops us before any request
    state_dir = cfg.output.state_dir
    sink = open_sink(cfg.output, shard, cfg.run.grace)
    _prepare_state(state_dir, cfg.output.out)
    sink.prepare()
    _check_split(state_dir, shard, cfg.run.resplit)
    settings = written_settings(cfg)
    check_rerun(state_dir, cfg.output.out, settings)
    started = time.monotonic()
    cpu0 = _cpu_seconds()
    main0 = _cpu_seconds(children=False)
    if cfg.run.processes is None:
        cpus = usable_cpus()
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, processes=cpus.count))
        chosen = f"one per usable CPU: {cpus.why}"
    else:
        chosen = "--processes"
    processes = cfg.run.processes or 1
    workers = start_workers(cfg.image, sink.target, processes)
    run: Task | None = None
    exporter: Exporter | None = None
    mask_counts: dict[str, int] | None = None  # masks (issue 22): this task's, by status
    try:
        # Bound after the pool is forked, so that no worker holds the port open.
        exporter = _exporter(cfg, shard)
        journal = Journal(state_dir, shard, cfg.output.out)
        try:
            marker = state_dir / f"running-{shard.tag}"
            _recover(journal, sink, shard, progress, crashed=marker.exists())
            marker.touch()
            if journal.created:
                _rebuild(journal, sink, shard, progress)
            _remember(journal, cfg, settings)
            done = journal.done_set(retry_failed=cfg.select.retry_failed)
            others = other_done_sets(state_dir, shard, retry_failed=cfg.select.retry_failed)
            if others:
                done = DoneSet.merge([done, *others])
            kind = "thread" if workers.in_process else "process"
            progress.log(
                "start",
                f"{shard.describe()}; {len(cfg.inputs)} input file(s); output: {sink.describe()}; "
                f"state: {state_dir}; {len(done)} image(s) already done; "
                f"{processes} worker {kind}{'es' if kind == 'process' and processes > 1 else 's' if processes > 1 else ''} ({chosen})",
                shard_index=shard.index, num_shards=shard.count, done_at_start=len(done),
                output=cfg.output.out, state_dir=str(state_dir), processes=processes, workers=kind,
            )
            cfg = _fit_descriptors(cfg, progress)
            run = Task(cfg, shard, progress, journal, workers, formats, done, sink)
            run.stopper = stopper
            if exporter is not None:
                run.watch(exporter)
                if exporter.address:
                    progress.log("metrics", f"Prometheus metrics on {exporter.address}", metrics=exporter.address)
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                runner.run(run.main(len(done)))
            if run.halt.fatal is None and run.halt.code is None:
                # masks (issue 22): the masks owed for images written before this run
                run_repair(cfg, journal, sink.target, progress, shard.tag)
            if cfg.masks.enabled:
                mask_counts = journal.mask_counts()
        finally:
            try:
                sink.release()
            finally:
                journal.close()
    finally:
        workers.shutdown(kill=run is not None and run.halt.abandoned)
        if exporter is not None and exporter.sock is not None:
            exporter.sock.close()  # already closed unless the run failed before its loop
    if not run.halt.abandoned:
        marker.unlink(missing_ok=True)
    compared = (finish(cfg, progress, run.halt.code is not None)
                if finish is not None and run.halt.fatal is None else None)
    tally = progress.tally
    tally.skipped = run.intake.filter.done_skipped
    if run.intake.filter.duplicates or run.recorder.conflicts:
        progress.log("duplicates", f"{run.intake.filter.duplicates} row(s) repeated an ImageID already met and were skipped "
                     f"without a request (one outcome per ImageID, the first row wins); {run.recorder.conflicts} "
                     "disagreed with it (another OriginalURL or OriginalMD5): see conflicts.csv from `oidownload report`",
                     duplicates=run.intake.filter.duplicates, conflicts=run.recorder.conflicts)
    if decode_errors():
        progress.log("undecodable", f"{decode_errors()} run(s) of bytes in the input were not UTF-8 and were read as U+FFFD",
                     level="warning", undecodable=decode_errors())
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu0
    progress.summary(wall=wall, cpu=cpu, extra={"pillow": pillow_build().describe(),
                                                "main_cpu_s": round(_cpu_seconds(children=False) - main0, 3),
                                                **({"from_lock": compared} if compared is not None else {}),
                                                **({"masks": mask_counts} if mask_counts is not None else {}),
                                                **({"hosts": rows} if (rows := run.limiter.rows()) else {})})
    if run.halt.fatal is not None:
        raise run.halt.fatal
    if run.intake.errors and run.halt.code is None:
        raise InputError("; ".join(str(e) for e in run.intake.errors))
    verdict = _verdict(cfg, shard, run, tally)
    job = _job_counts(state_dir, shard)
    if verdict is None:
        verdict = finished_verdict(job, sum(n for s, n in tally.by_status.items() if s in RETRYABLE),
                                   cfg.run.max_failure_rate)
    return RunResult(tally, int(verdict.code), wall, cpu, verdict.message, job)


def _exporter(cfg: Config, shard: Shard) -> Exporter | None:
    """--metrics-port and --metrics-file, checked before any download: a port in use or
    a folder that takes no file stops the run here."""
    r = cfg.run
    if r.metrics_port is None and r.metrics_file is None:
        return None
    path = expand_path(r.metrics_file, shard) if r.metrics_file is not None else None
    if path is not None:
        check_file(path)
    sock = listen(r.metrics_addr, r.metrics_port) if r.metrics_port is not None else None
    return Exporter(Metrics(shard), sock, path)


def _verdict(cfg: Config, shard: Shard, run: Task, tally: Tally) -> Verdict | None:
    """The code of a run that was stopped or selected nothing; None for a finished run
    whose code depends on the job's counts."""
    if run.halt.code is not None:
        code = ExitCode(run.halt.code)
        if code == ExitCode.MAX_RUNTIME:
            return Verdict(code, "stopped at --max-runtime")
        return Verdict(code, f"{'interrupted' if code == ExitCode.SIGINT else 'terminated'}: "
                             f"the {tally.done} image(s) finished in this run are journaled")
    if tally.done or run.intake.filter.done_skipped:
        return None
    # This task's share of the selection is empty. In a cluster run that is normal when
    # the selection is small: the rows belong to other tasks. Only a selection that no
    # task's share holds is the user's mistake (a --subset that is not in the data,
    # classes no image of the input carries).
    sel = cfg.select
    why = empty_cause(cfg.inputs, subsets=sel.subsets, ids=sel.ids, ids_from=sel.ids_from)
    if why is None:
        return Verdict(ExitCode.OK, f"{shard.describe()} has no row of the selection: the other tasks own them"
                       if shard.count > 1 else "")
    return Verdict(ExitCode.NOTHING_SELECTED, f"nothing selected: {why}")


def _job_counts(state_dir: Path, shard: Shard) -> JobCounts:
    """The whole job of this task, from its journal: every row any run of it has seen."""
    rows = ok = final = 0
    for jc in StateDir(state_dir).counts(only=journal_path(state_dir, shard)):
        for c in jc.counts:
            rows += c.n
            if c.status == Status.OK:
                ok += c.n
            elif is_final(Status(c.status)):
                final += c.n
    return JobCounts(rows, ok, final)
