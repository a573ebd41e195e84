"""What the user sees while a run goes: a tqdm bar on a terminal, a log line every few
seconds otherwise (text or JSON lines), and the summary at the end. Everything goes
to stderr, so stdout stays clean for pipes. Consumes Outcomes; knows nothing else.
"""

from __future__ import annotations

import collections
import datetime
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from oidownload.core.config import LogFormat, ProgressMode
from oidownload.core.records import STATUS_MEANING, Outcome, Status, checked_words

# No tqdm monitor thread: the process pool forks before any thread exists.
tqdm.monitor_interval = 0
_RATE_WINDOW = 30.0  # seconds of history behind the current rate and the ETA


@dataclass
class Tally:
    """Counts for one run; the summary and --max-failure-rate read it."""

    by_status: collections.Counter[Status] = field(default_factory=collections.Counter)
    nbytes: int = 0
    out_bytes: int = 0
    skipped: int = 0
    ok_sources: collections.Counter[str] = field(default_factory=collections.Counter)
    ok_unchecked: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def done(self) -> int:
        return sum(self.by_status.values())

    @property
    def ok(self) -> int:
        return self.by_status[Status.OK]

    @property
    def failed(self) -> int:
        return self.done - self.ok


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_PREFIX = {"info": "oidownload: ", "warning": "oidownload: warning: ", "error": "oidownload: error: "}
_PLAIN = frozenset({"progress", "summary"})  # tables and counters: no prefix


def log_line(log_format: LogFormat, level: str, event: str, message: str, **fields: Any) -> str:
    """One line for stderr: `oidownload: [level: ]message` as text, or with --log-format
    json one JSON object with the time, a level (info, warning, error), the event's name,
    the message and the event's fields."""
    if log_format is LogFormat.JSON:
        # ISO 8601 with its zone (UTC), as structured-logging tools parse it.
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        return json.dumps({"time": when, "level": level, "event": event, "message": message,
                           **fields})
    return message if event in _PLAIN else _PREFIX.get(level, "") + message


class Progress:
    def __init__(
        self,
        mode: ProgressMode = ProgressMode.AUTO,
        log_format: LogFormat = LogFormat.TEXT,
        interval: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.log_format = log_format
        if mode is ProgressMode.AUTO:
            mode = ProgressMode.BAR if self.stream.isatty() and log_format is LogFormat.TEXT else ProgressMode.LOG
        self.mode = mode
        self.interval = interval
        self.tally = Tally()
        self.total: int | None = None
        self.total_exact = False
        self.started = time.monotonic()
        self._last_log = self.started
        self._window: collections.deque[tuple[float, int, int]] = collections.deque()
        self._bar: tqdm[Any] | None = None
        self._closed = False
        # The per-host limits that moved (HostLimiter.describe/busy), when the run has some.
        self.hosts: Callable[[], str] = str
        self.host_rows: Callable[[], list[dict[str, Any]]] = list

    def _started_bar(self) -> tqdm[Any] | None:
        """The bar, drawn at the first total, outcome or tick: a small input's count comes
        first, so the bar never shows a frame without its total."""
        if self._bar is None and self.mode is ProgressMode.BAR and not self._closed:
            self._bar = tqdm(total=self.total, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1)
        return self._bar

    # -- events -------------------------------------------------------------------------
    def log(self, event: str, message: str, *, level: str = "info", **fields: Any) -> None:
        """A one-off line (start, warnings, errors), kept clear of the bar."""
        line = log_line(self.log_format, level, event, message, **fields)
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def set_total(self, total: int, *, exact: bool = True) -> None:
        """The rows this run will handle: an estimate first, the count once it is known.
        An estimate never replaces a count, nor falls below what is already done."""
        if not exact and self.total_exact:
            return
        if not exact:
            total = max(total, self.tally.done)
        self.total = total
        self.total_exact = exact
        bar = self._started_bar()
        if bar is not None:
            bar.total = total
            bar.refresh()

    def add(self, outcome: Outcome) -> None:
        t = self.tally
        t.by_status[outcome.status] += 1
        t.nbytes += outcome.nbytes
        t.out_bytes += outcome.out_bytes
        if outcome.status is Status.OK:
            src = outcome.source.value if outcome.source else "unknown"
            t.ok_sources[src] += 1
            if not outcome.verified:
                t.ok_unchecked[src] += 1
        bar = self._started_bar()
        if bar is not None:
            bar.update(1)

    def amend(self, outcome: Outcome, was: Status) -> None:
        """An outcome counted as `was` ended as another status: a staged image whose
        upload failed after it was counted."""
        self._uncount(was)
        self.tally.by_status[outcome.status] += 1
        if outcome.status is not Status.OK:
            self.tally.out_bytes -= outcome.out_bytes

    def retract(self, outcome: Outcome) -> None:
        """An outcome counted that the journal never got (a staged image not confirmed
        written when the run ended): the next run does it again."""
        self._uncount(outcome.status)
        self.tally.out_bytes -= outcome.out_bytes
        if self._bar is not None:
            self._bar.update(-1)

    def _uncount(self, status: Status) -> None:
        by = self.tally.by_status
        by[status] -= 1
        if by[status] <= 0:
            del by[status]

    def tick(self) -> None:
        """Called at each journal flush by the task's ticker (engine/task.py)."""
        now = time.monotonic()
        self._window.append((now, self.tally.done, self.tally.nbytes))
        while self._window and now - self._window[0][0] > _RATE_WINDOW:
            self._window.popleft()
        if self._started_bar() is not None:
            self._set_postfix(refresh=False)
        elif self.mode is ProgressMode.LOG and now - self._last_log >= self.interval:
            self._last_log = now
            self.emit_progress()

    def _set_postfix(self, *, refresh: bool) -> None:
        assert self._bar is not None
        _, mbps = self.rates()
        hosts = self.hosts()
        self._bar.set_postfix_str(f"ok={self.tally.ok} failed={self.tally.failed} {mbps / 1e6:.1f}MB/s"
                                  + (f" {hosts}" if hosts else ""), refresh=refresh)

    # -- figures --------------------------------------------------------------------------
    def rates(self) -> tuple[float, float]:
        """(images/s, bytes/s) over the recent window, or the whole run when short."""
        if len(self._window) >= 2 and self._window[-1][0] - self._window[0][0] >= 1.0:
            (t0, d0, b0), (t1, d1, b1) = self._window[0], self._window[-1]
        else:
            t0, d0, b0 = self.started, 0, 0
            t1, d1, b1 = time.monotonic(), self.tally.done, self.tally.nbytes
        span = max(t1 - t0, 1e-6)
        return (d1 - d0) / span, (b1 - b0) / span

    def eta(self) -> float | None:
        if self.total is None:
            return None
        rate, _ = self.rates()
        left = max(0, self.total - self.tally.done)
        return left / rate if rate > 0 else None

    def emit_progress(self) -> None:
        t = self.tally
        rate, bps = self.rates()
        eta = self.eta()
        if self.log_format is LogFormat.JSON:
            self.log(
                "progress", "progress", done=t.done, total=self.total, total_exact=self.total_exact,
                ok=t.ok, failed=t.failed,
                images_per_s=round(rate, 2), mb_per_s=round(bps / 1e6, 2),
                eta_s=None if eta is None else round(eta), **self._host_fields(),
            )
            return
        of = f"/{self.total}" if self.total is not None else ""
        self.log(
            "progress",
            f"{t.done}{of} done, ok={t.ok} failed={t.failed}, {rate:.1f} img/s, "
            f"{bps / 1e6:.1f} MB/s, ETA {human_seconds(eta)}" + (f"; {hosts}" if (hosts := self.hosts()) else ""),
        )

    def _host_fields(self) -> dict[str, Any]:
        rows = self.host_rows()
        return {"hosts": rows} if rows else {}

    def close(self) -> None:
        """Leaves the bar in its final state: the counts of every outcome (the ticker may
        not have run since the last ones), and its total, so that a stopped run shows how
        far it got (the same command resumes the rest)."""
        self._closed = True
        if self._bar is not None:
            self._set_postfix(refresh=True)
            self._bar.close()
            self._bar = None

    def summary(self, *, wall: float, cpu: float, extra: dict[str, Any] | None = None) -> None:
        self.close()
        t = self.tally
        if self.log_format is LogFormat.JSON:
            self.log(
                "summary", "summary", done=t.done, ok=t.ok, failed=t.failed, skipped=t.skipped,
                by_status={s.value: n for s, n in sorted(t.by_status.items())},
                ok_by_source=dict(t.ok_sources), ok_unchecked_by_source=dict(t.ok_unchecked),
                bytes=t.nbytes, written_bytes=t.out_bytes, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
                **(extra or {}),
            )
            return
        lines = [f"{'status':<15}{'count':>10}  meaning"]
        for status in Status:
            n = t.by_status.get(status, 0)
            if n:
                lines.append(f"{status.value:<15}{n:>10}  {STATUS_MEANING[status]}")
        lines.append(f"{'total':<15}{t.done:>10}  ({t.skipped} already done, skipped)")
        if t.ok_sources:
            lines.append("written: " + "; ".join(checked_words(dict(t.ok_sources), dict(t.ok_unchecked))))
        if extra and extra.get("masks"):  # masks (issue 22): every mask of this task's output, by status
            lines.append("masks: " + ", ".join(f"{n} {k}" for k, n in sorted(extra["masks"].items())))
        if extra and extra.get("from_lock"):  # download --from-lock: each image against the lock
            lines.append("against the lock: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in extra["from_lock"].items()))
        lines.append(
            f"fetched {human_bytes(t.nbytes)}, wrote {human_bytes(t.out_bytes)}; "
            f"wall {wall:.1f}s, CPU {cpu:.1f}s"
            + (f", {t.done / wall:.1f} img/s" if wall > 0 else "")
            + (f"; {extra['pillow']}" if extra and "pillow" in extra else "")
        )
        self.log("summary", "\n".join(lines))
