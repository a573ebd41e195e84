"""Reading OUT back: `status` (counts, bytes, rate and ETA over every task's journal,
while a run goes or after it) and `report` (success and failure CSVs: the input
columns plus status, detail and attempts).

Read-only on the journals; the report streams each input file once, merging it with
the journal rows sorted by line, so it runs in constant memory on the 9M-row lists.
"""

from __future__ import annotations

import csv
import fcntl
import heapq
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError
from .journal import ProgressRow, StatusCount, connect, int_to_id, journal_files, read_counts
from .layout import relative_path, state_dir
from .records import Status, is_final
from .rows import V3_COLUMNS, V4_COLUMNS, iter_records, read_header

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
            "rate_per_s": round(self.rate, 2),
            "eta_s": None if self.eta is None else round(self.eta),
            "shards": [
                {"shard": s.tag, "state": s.state, "done": s.done, "planned": s.planned,
                 "rate_per_s": None if s.rate is None else round(s.rate, 2),
                 "eta_s": None if s.eta is None else round(s.eta), "host": s.host, "pid": s.pid}
                for s in self.shards
            ],
        }


def _lock_held(journal: Path) -> bool:
    """Whether a live process holds the journal's writer lock."""
    lock = journal.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _shard_state(p: ProgressRow, journal: Path, done: int, now: float) -> ShardStatus:
    if p.running and _lock_held(journal):
        state = "running" if now - p.updated < STALE_AFTER else "stale"
    elif p.running:
        state = "stopped"  # killed: the journal says running but nobody holds the lock
    else:
        planned_left = p.planned is not None and done < p.planned
        state = "stopped" if planned_left else "finished"
    return ShardStatus(p.shard, state, done, p.planned, p.rate, p.updated, p.host, p.pid)


def out_status(out: Path) -> OutStatus:
    files = journal_files(out)
    if not files:
        raise InputError(f"{out} has no journal (no {state_dir(out)}/journal-*.sqlite): nothing was downloaded there yet")
    status = OutStatus(out)
    now = time.time()
    for path in files:
        try:
            counts, progress = read_counts(path)
        except sqlite3.Error as exc:
            raise InputError(f"cannot read the journal {path}: {exc}") from None
        for c in counts:
            prev = status.counts.get(c.status)
            status.counts[c.status] = StatusCount(c.status, c.n + (prev.n if prev else 0), c.bytes + (prev.bytes if prev else 0))
        done = sum(c.n for c in counts)
        for p in progress:
            status.shards.append(_shard_state(p, path, done, now))
    order = {s.value: i for i, s in enumerate(Status)}
    status.counts = dict(sorted(status.counts.items(), key=lambda kv: order.get(kv[0], 99)))
    return status


# -- report -----------------------------------------------------------------------------

REPORT_EXTRA = ("status", "detail", "http_status", "attempts", "path")


@dataclass(frozen=True, order=True, slots=True)
class _Entry:
    line: int
    image_id: str
    status: str
    detail: str
    http_status: int | None
    attempts: int
    path: str


def _entries(journal: Path, input_path: str) -> Iterator[_Entry]:
    conn = connect(journal, readonly=True)
    try:
        row = conn.execute("SELECT id FROM inputs WHERE path=?", (input_path,)).fetchone()
        if row is None:
            return
        cur = conn.execute(
            "SELECT line, id, status, detail, http_status, attempts, subset, ext FROM outcomes WHERE input=? "
            "UNION ALL SELECT line, NULL, 'bad_row', detail, NULL, 0, '', '' FROM bad_rows WHERE input=? "
            "ORDER BY 1",
            (row[0], row[0]),
        )
        for line, rid, status, detail, http, attempts, subset, ext in cur:
            image_id = int_to_id(rid) if rid is not None else ""
            path = relative_path(subset, image_id, ext) if status == "ok" and ext else ""
            yield _Entry(line, image_id, status, detail, http, attempts, path)
    finally:
        conn.close()


def input_paths(files: list[Path]) -> list[str]:
    """The input CSVs the journals name, in order of first use."""
    seen: dict[str, None] = {}
    for path in files:
        conn = connect(path, readonly=True)
        try:
            for (p,) in conn.execute("SELECT path FROM inputs ORDER BY id"):
                seen.setdefault(p, None)
        finally:
            conn.close()
    return list(seen)


@dataclass
class ReportResult:
    success: Path
    failure: Path
    ok: int = 0
    failed: int = 0
    missing_inputs: list[str] = field(default_factory=list)


def write_report(out: Path, dest: Path | None = None) -> ReportResult:
    """success.csv and failure.csv under dest (default OUT/report/)."""
    files = journal_files(out)
    if not files:
        raise InputError(f"{out} has no journal: nothing was downloaded there yet")
    dest = dest or out / "report"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dest}: {exc.strerror or exc}") from None
    result = ReportResult(dest / "success.csv", dest / "failure.csv")
    inputs = input_paths(files)
    columns = list(V3_COLUMNS)
    for name in inputs:
        try:
            if len(read_header(Path(name)).value) == len(V4_COLUMNS):
                columns = list(V4_COLUMNS)
        except InputError:
            pass
    header = [*columns, *REPORT_EXTRA]
    with open(result.success, "w", newline="", encoding="utf-8") as fs, open(result.failure, "w", newline="", encoding="utf-8") as ff:
        ok_w, fail_w = csv.writer(fs, lineterminator="\n"), csv.writer(ff, lineterminator="\n")
        ok_w.writerow(header)
        fail_w.writerow(header)
        for name in inputs:
            merged = heapq.merge(*(_entries(j, name) for j in files))
            records = _records_or_nothing(Path(name), result)
            fields_at: tuple[int, list[str] | str] | None = next(records, None)
            for entry in merged:
                while fields_at is not None and fields_at[0] < entry.line:
                    fields_at = next(records, None)
                fields: list[str]
                if fields_at is not None and fields_at[0] == entry.line and isinstance(fields_at[1], list):
                    fields = fields_at[1]
                else:
                    fields = [entry.image_id]  # the input moved or changed: keep what we know
                fields = (fields + [""] * len(columns))[: len(columns)]
                extra = [entry.status, entry.detail, "" if entry.http_status is None else entry.http_status, entry.attempts, entry.path]
                if entry.status == Status.OK:
                    ok_w.writerow([*fields, *extra])
                    result.ok += 1
                else:
                    fail_w.writerow([*fields, *extra])
                    result.failed += 1
    return result


def _records_or_nothing(path: Path, result: ReportResult) -> Iterator[tuple[int, list[str] | str]]:
    try:
        yield from iter_records(path)
    except InputError:
        result.missing_inputs.append(str(path))
