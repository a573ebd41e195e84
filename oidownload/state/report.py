"""Reading OUT back: `status` (counts, bytes, rate and ETA over every task's journal,
while a run goes or after it) and `report` (success and failure CSVs: the input
columns plus status, detail and attempts).

Read-only on the journals; the report streams each input file once, merged with the
journal rows sorted by line (`StateDir.joined`), so it runs in constant memory on the
9M-row lists.
"""

from __future__ import annotations

import csv
import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oidownload.core.errors import InputError, OutputError
from oidownload.core.fsio import Place
from oidownload.core.records import Status, is_final
from oidownload.inputs.rows import V3_COLUMNS, V4_COLUMNS, read_header
from oidownload.inputs.text import STDIN, is_stream
from oidownload.state.journal import InputIdentity, writer_alive
from oidownload.state.reader import InputInfo, ProgressRow, StateDir, StatusCount

# A running task refreshes its progress row every few seconds; older than this and
# the process is gone (SIGKILL, node lost).
STALE_AFTER = 60.0


@dataclass
class ShardStatus:
    tag: str
    state: str  # running / stopped / stale / finished
    done: int
    planned: int | None
    rate: float | None
    updated: float | None
    host: str = ""
    pid: int | None = None
    hosts: str | None = None  # the per-host limits that moved, when last written

    @property
    def eta(self) -> float | None:
        if self.state != "running" or not self.rate or self.planned is None:
            return None
        return max(0, self.planned - self.done) / self.rate


@dataclass
class OutStatus:
    out: Path
    counts: dict[str, StatusCount] = field(default_factory=dict)
    shards: list[ShardStatus] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # written images per source
    unchecked: dict[str, int] = field(default_factory=dict)  # of those, the ones no hash checked

    @property
    def total(self) -> int:
        return sum(c.n for c in self.counts.values())

    @property
    def rate(self) -> float:
        return sum(s.rate or 0.0 for s in self.shards if s.state == "running")

    @property
    def eta(self) -> float | None:
        etas = [s.eta for s in self.shards if s.state == "running"]
        known = [e for e in etas if e is not None]
        return max(known) if known else None

    def as_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "total": self.total,
            "by_status": {k: {"count": c.n, "bytes": c.bytes, "final": is_final(Status(k))} for k, c in self.counts.items()},
            "bytes": sum(c.bytes for c in self.counts.values()),
            "ok_by_source": dict(self.sources),
            "ok_unchecked_by_source": dict(self.unchecked),
            "rate_per_s": round(self.rate, 2),
            "eta_s": None if self.eta is None else round(self.eta),
            "shards": [
                {"shard": s.tag, "state": s.state, "done": s.done, "planned": s.planned,
                 "rate_per_s": None if s.rate is None else round(s.rate, 2),
                 "eta_s": None if s.eta is None else round(s.eta), "host": s.host, "pid": s.pid,
                 **({"hosts": s.hosts} if s.hosts else {})}
                for s in self.shards
            ],
        }


def _shard_state(p: ProgressRow, journal: Path, done: int, now: float) -> ShardStatus:
    if p.running and writer_alive(journal):
        state = "running" if now - p.updated < STALE_AFTER else "stale"
    elif p.running:
        state = "stopped"  # killed: the journal says running but nobody holds the lock
    else:
        # A run that did not read its whole share leaves no count (an estimate would
        # read as the share's size): it stopped.
        state = "stopped" if p.planned is None or done < p.planned else "finished"
    return ShardStatus(p.shard, state, done, p.planned, p.rate, p.updated, p.host, p.pid, p.hosts)


def running_tasks(out: str | Path, state_dir: Path | None = None) -> list[str]:
    """The tags of OUT's tasks still running now, by `status`'s rule: the progress row
    says running and a live process holds the journal (a stale task counts: it holds it
    still, and will finish or die). A task that holds its journal but has not written
    its first progress row yet (its first half second) is running too."""
    state = StateDir.open(out, state_dir)
    now = time.time()
    running = []
    for jc in state.counts():
        if not jc.progress:
            if writer_alive(jc.path):
                running.append(jc.path.stem.removeprefix("journal-"))
            continue
        running += [p.shard for p in jc.progress if _shard_state(p, jc.path, 0, now).state in ("running", "stale")]
    return running


def out_status(out: str | Path, state_dir: Path | None = None) -> OutStatus:
    state = StateDir.open(out, state_dir)
    status = OutStatus(Path(out))
    now = time.time()
    for jc in state.counts():
        path, counts, progress = jc.path, jc.counts, jc.progress
        for src, n in jc.sources.items():
            status.sources[src] = status.sources.get(src, 0) + n
        for src, n in jc.unchecked.items():
            status.unchecked[src] = status.unchecked.get(src, 0) + n
        for c in counts:
            prev = status.counts.get(c.status)
            status.counts[c.status] = StatusCount(c.status, c.n + (prev.n if prev else 0), c.bytes + (prev.bytes if prev else 0))
        done = sum(c.n for c in counts)
        for p in progress:
            status.shards.append(_shard_state(p, path, done, now))
    if state.split():
        # Shards of different splits overlap: count each ImageID once.
        distinct = state.distinct_counts()
        status.counts = {c.status: c for c in distinct.counts}
        status.sources, status.unchecked = distinct.sources, distinct.unchecked
    order = {s.value: i for i, s in enumerate(Status)}
    status.counts = dict(sorted(status.counts.items(), key=lambda kv: order.get(kv[0], 99)))
    return status


# -- report -----------------------------------------------------------------------------

REPORT_EXTRA = ("status", "detail", "http_status", "attempts", "source", "location")


@dataclass
class ReportResult:
    success: Path
    failure: Path
    conflicts: Path
    ok: int = 0
    failed: int = 0
    conflicted: int = 0  # rows that lost to an earlier row of their ImageID
    warnings: list[str] = field(default_factory=list)


def _changed(info: InputInfo) -> str | None:
    """Why the input at the recorded path is not the file the download read, or None."""
    path = info.path
    if str(path) == STDIN or is_stream(path) or info.display.startswith("/dev/fd/"):
        name = "standard input" if info.display == STDIN else info.display
        return f"{name} was a pipe, read once; its rows carry only what the journal knows"
    if not path.exists():
        return f"{info.display} is gone; its rows carry only what the journal knows"
    if info.size is None:
        return None  # read from a pipe, or a journal from before identities were kept
    now = InputIdentity.of(path)
    if (now.size, now.head_md5) != (info.size, info.head_md5):
        return f"{info.display} changed since the download; rows are matched by ImageID"
    return None


def write_report(out: str | Path, dest: Path | None = None, state_dir: Path | None = None) -> ReportResult:
    """success.csv, failure.csv and conflicts.csv under dest (default OUT/report/): the
    input columns of each journaled row, joined by file and line and checked by ImageID,
    plus what became of it. conflicts.csv holds the rows that lost to an earlier row
    of their ImageID (another OriginalURL or OriginalMD5)."""
    state = StateDir.open(out, state_dir)
    if dest is None and "://" in str(out):
        raise InputError(f"{out} is not a local folder: pass -d/--dest for the report")
    place = Place.of(out, "report", dest)
    try:
        tree = place.open()  # OUT/report a symlink: refused, never written through
    except OSError as exc:
        raise OutputError(f"cannot create {place.path}: {exc.strerror or exc}") from None
    dest = place.path
    result = ReportResult(dest / "success.csv", dest / "failure.csv", dest / "conflicts.csv")
    inputs = state.inputs()
    columns = list(V3_COLUMNS)
    for info in inputs:
        try:
            if not is_stream(info.path) and len(read_header(info.path).value) == len(V4_COLUMNS):
                columns = list(V4_COLUMNS)
        except InputError:
            pass
    header = [*columns, *REPORT_EXTRA]
    try:
        with (tree, tree.atomic_file(result.success.name) as fs, tree.atomic_file(result.failure.name) as ff,
              tree.atomic_file(result.conflicts.name) as fc):
            ok_w, fail_w = csv.writer(fs, lineterminator="\n"), csv.writer(ff, lineterminator="\n")
            conflict_w = csv.writer(fc, lineterminator="\n")
            for w in (ok_w, fail_w, conflict_w):
                w.writerow(header)
            for info in inputs:
                why = _changed(info)
                if why:
                    result.warnings.append(why)
                mismatched = 0
                for joined in state.joined(info, heapq.merge(state.entries(info.display),
                                                             state.conflicts(info.display))):
                    entry, fields = joined.entry, joined.fields
                    if fields is None:
                        fields = [entry.image_id]  # keep what the journal knows
                        mismatched += joined.mismatched
                    fields = (fields + [""] * len(columns))[: len(columns)]
                    extra = [entry.status, entry.detail, "" if entry.http_status is None else entry.http_status,
                             entry.attempts, entry.source, entry.location]
                    if entry.status == "conflict":
                        conflict_w.writerow([*fields, *extra])
                        result.conflicted += 1
                    elif entry.status == Status.OK:
                        ok_w.writerow([*fields, *extra])
                        result.ok += 1
                    else:
                        fail_w.writerow([*fields, *extra])
                        result.failed += 1
                if mismatched:
                    result.warnings.append(f"{info.display}: {mismatched} rows no longer match their line's ImageID; "
                                           "they carry only the journal's fields")
    except OSError as exc:
        raise OutputError(f"cannot write the report in {dest}: {exc.strerror or exc}") from None
    return result
