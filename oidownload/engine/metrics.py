"""Prometheus metrics of a download (`--metrics-port`, `--metrics-file`).

The counters are plain integers bumped on the event loop's thread (the journal's
commits, each request, each retry); the text format is produced only when it is
asked for: a scrape of /metrics, or every few seconds for the textfile that
node_exporter collects. So a run pays a few dictionary updates per image, whether
anyone looks or not, and nothing more (benchmarks/metrics.py measures it).

A small writer of the text format, not prometheus_client: the same cost per image,
and no dependency. Host labels are bounded: the first MAX_HOST_LABELS hosts by
requests at a rendering get a label of their own, which they keep for the rest of
the run (a counter must not move between series), and every other host is `other`.
Per-host state is kept for at most HOST_MEMORY hosts; beyond that the smallest are
folded into `other` for good, so a hostile input with a host per row keeps memory flat.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oidownload.core.errors import ConfigError
from oidownload.core.records import Outcome
from oidownload.core.shard import Shard

MAX_HOST_LABELS = 20
HOST_MEMORY = 4096
OTHER = "other"
# Seconds; the request latency histogram's upper bounds (an original takes 0.1-5 s).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FILE_EVERY = 2.0  # seconds between rewrites of --metrics-file
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
STATES = ("running", "stopping", "done")


class _Host:
    __slots__ = ("buckets", "codes", "n", "seconds")

    def __init__(self) -> None:
        self.n = 0
        self.seconds = 0.0
        self.codes: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last: above every bound

    def add(self, other: _Host) -> None:
        self.n += other.n
        self.seconds += other.seconds
        for code, k in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + k
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


@dataclass(slots=True)
class Gauges:
    """What the run is doing now, read at each rendering."""

    bytes_in_flight: int = 0
    bytes_in_flight_limit: int = 0
    pool_workers: int = 0
    pool_jobs: int = 0  # submitted to the pool and not yet back: queued or being processed
    fetch_queue: int = 0  # rows read and waiting for a fetch slot
    journal_pending: int = 0
    journal_lag: float = 0.0  # age of the oldest outcome the journal has not yet committed
    journal_commit_seconds: float = 0.0  # how long the last commit took
    outcomes_per_second: float = 0.0
    rows_planned: int | None = None  # this task's share of the rows (an estimate until read)
    rows_done: int = 0  # finished, in this run or before
    hosts: list[tuple[str, int, int]] = field(default_factory=list)  # (host, in flight, limit)


def code_class(http_status: int | None) -> str:
    if http_status is None or not 100 <= http_status <= 599:
        return "error"  # no answer: a timeout, a reset, a DNS failure
    return CODE_CLASSES[http_status // 100 - 1]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metrics:
    def __init__(self, shard: Shard, max_hosts: int = MAX_HOST_LABELS) -> None:
        self.base = f'task="{shard.index}",tasks="{shard.count}"'
        self.max_hosts = max_hosts
        self.started = time.time()
        self.state = "running"
        self.images: dict[tuple[str, str], int] = {}
        self.fetched_bytes = 0
        self.written_bytes = 0
        self.retries: dict[str, int] = {}
        self.hosts: dict[str, _Host] = {}
        self.labelled: set[str] = set()
        self.folded = _Host()  # hosts forgotten one by one, counted as `other` for good
        self.gauges: Callable[[], Gauges] = Gauges

    # -- counting, on the loop's thread ----------------------------------------------
    def journaled(self, outcomes: Iterable[Outcome]) -> None:
        """Outcomes the journal just committed: what `status` will count."""
        images = self.images
        for o in outcomes:
            key = (o.status.value, o.source.value if o.source is not None else "none")
            images[key] = images.get(key, 0) + 1
            self.fetched_bytes += o.nbytes
            self.written_bytes += o.out_bytes

    def request(self, host: str, http_status: int | None, seconds: float) -> None:
        h = self.hosts.get(host)
        if h is None:
            if len(self.hosts) >= HOST_MEMORY:
                self._fold()
            h = self.hosts[host] = _Host()
        h.n += 1
        h.seconds += seconds
        code = code_class(http_status)
        h.codes[code] = h.codes.get(code, 0) + 1
        h.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1

    def retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def _fold(self) -> None:
        """Keeps the labelled hosts and the busiest half of the others."""
        others = sorted((k for k in self.hosts if k not in self.labelled), key=lambda k: self.hosts[k].n, reverse=True)
        for name in others[HOST_MEMORY // 2:]:
            self.folded.add(self.hosts.pop(name))

    # -- the text format --------------------------------------------------------------
    def _label_hosts(self) -> None:
        if len(self.labelled) >= self.max_hosts:
            return
        rest = sorted((k for k in self.hosts if k not in self.labelled), key=lambda k: self.hosts[k].n, reverse=True)
        self.labelled.update(rest[: self.max_hosts - len(self.labelled)])

    def _by_label(self) -> dict[str, _Host]:
        self._label_hosts()
        out = {name: self.hosts[name] for name in sorted(self.labelled) if name in self.hosts}
        other = _Host()
        other.add(self.folded)
        for name, h in self.hosts.items():
            if name not in self.labelled:
                other.add(h)
        if other.n:
            out[OTHER] = other
        return out

    def render(self) -> str:
        g = self.gauges()
        base = self.base
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: Iterable[tuple[str, str, float]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for suffix, labels, value in samples:
                lines.append(f"{name}{suffix}{{{base}{labels}}} {_num(value)}")

        family("oid_run_start_time_seconds", "gauge", "When this task's run started (Unix time).",
               [("", "", round(self.started, 3))])
        family("oid_run_state", "gauge", "1 for the state the run is in: running, stopping (a signal or "
               "an error: finishing what is in flight) or done.",
               [("", f',state="{s}"', 1 if s == self.state else 0) for s in STATES])
        family("oid_images_total", "counter", "Images the journal committed in this run, by final status "
               "and source.", [("", f',status="{s}",source="{src}"', n)
                               for (s, src), n in sorted(self.images.items())])
        family("oid_fetched_bytes_total", "counter", "Bytes fetched, of the images journaled.",
               [("", "", self.fetched_bytes)])
        family("oid_written_bytes_total", "counter", "Bytes written to the output, of the images journaled.",
               [("", "", self.written_bytes)])
        hosts = self._by_label()
        family("oid_requests_total", "counter", f"HTTP requests by host (the top {self.max_hosts} by "
               "requests, the rest as other) and status class (error: no answer).",
               [("", f',host="{escape(h)}",code="{c}"', n)
                for h, st in hosts.items() for c, n in sorted(st.codes.items())])
        lines.append("# HELP oid_request_duration_seconds Time of one request, its body included, by host.")
        lines.append("# TYPE oid_request_duration_seconds histogram")
        for h, st in hosts.items():
            labels = f'{base},host="{escape(h)}"'
            running = 0
            for bound, n in zip((*map(_num, BUCKETS), "+Inf"), st.buckets, strict=True):
                running += n
                lines.append(f'oid_request_duration_seconds_bucket{{{labels},le="{bound}"}} {running}')
            lines.append(f"oid_request_duration_seconds_sum{{{labels}}} {_num(round(st.seconds, 6))}")
            lines.append(f"oid_request_duration_seconds_count{{{labels}}} {st.n}")
        in_flight: dict[str, int] = {}
        limits: dict[str, int] = {}
        for name, active, limit in g.hosts:
            key = name if name in self.labelled else OTHER
            in_flight[key] = in_flight.get(key, 0) + active
            if key != OTHER:
                limits[key] = limit
        family("oid_host_in_flight", "gauge", "Requests in flight per host.",
               [("", f',host="{escape(h)}"', n) for h, n in sorted(in_flight.items())])
        family("oid_host_limit", "gauge", "Requests a host may have in flight now (--per-host, halved on "
               "429/503 and grown back).", [("", f',host="{escape(h)}"', n) for h, n in sorted(limits.items())])
        family("oid_retries_total", "counter", "Requests tried again, by the reason (the status of the "
               "failed try).", [("", f',reason="{escape(r)}"', n) for r, n in sorted(self.retries.items())])
        family("oid_bytes_in_flight", "gauge", "Bytes of bodies being read or processed (the byte budget in use).",
               [("", "", g.bytes_in_flight)])
        family("oid_bytes_in_flight_limit", "gauge", "The byte budget (--max-bytes-in-flight-mb).",
               [("", "", g.bytes_in_flight_limit)])
        family("oid_pool_workers", "gauge", "Image-processing worker processes.", [("", "", g.pool_workers)])
        family("oid_pool_busy_workers", "gauge", "Workers processing an image.",
               [("", "", min(g.pool_jobs, g.pool_workers))])
        family("oid_pool_queue", "gauge", "Fetched images waiting for a free worker.",
               [("", "", max(0, g.pool_jobs - g.pool_workers))])
        family("oid_fetch_queue", "gauge", "Rows read and waiting for a fetch.", [("", "", g.fetch_queue)])
        family("oid_journal_pending", "gauge", "Outcomes waiting for the journal's next commit.",
               [("", "", g.journal_pending)])
        family("oid_journal_commit_lag_seconds", "gauge", "Age of the oldest outcome the journal has not "
               "committed yet (0: none waiting).", [("", "", round(g.journal_lag, 3))])
        family("oid_journal_commit_duration_seconds", "gauge", "How long the last journal commit took.",
               [("", "", round(g.journal_commit_seconds, 6))])
        family("oid_outcomes_per_second", "gauge", "Images finished per second, over the last few seconds.",
               [("", "", round(g.outcomes_per_second, 3))])
        if g.rows_planned is not None:
            family("oid_rows_planned", "gauge", "Rows in this task's share (an estimate until the input is read).",
                   [("", "", g.rows_planned)])
        family("oid_rows_done", "gauge", "Rows of this task's share finished, in this run or an earlier one.",
               [("", "", g.rows_done)])
        lines.append("")
        return "\n".join(lines)


def expand_path(path: Path, shard: Shard) -> Path:
    """`{task}` in a --metrics-file becomes the task (3-of-8): one file per array task."""
    return Path(str(path).replace("{task}", shard.tag))


def write_file(path: Path, text: str) -> None:
    """Whole or not at all: the collector reads only complete files (a write to a
    temporary name, then a rename; node_exporter reads *.prom only)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def check_file(path: Path) -> None:
    """Before any download: the folder exists and takes a file. A temporary file that a
    killed run left behind (hidden, not *.prom) goes."""
    try:
        write_file(path, "")
        path.unlink()
    except OSError as exc:
        raise ConfigError(f"--metrics-file {path}: {exc.strerror or exc}") from None
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def listen(addr: str, port: int) -> socket.socket:
    """The /metrics socket, bound before any download: a port in use stops the run at once."""
    try:
        infos = socket.getaddrinfo(addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--metrics-addr {addr!r}: {exc}") from None
    family, kind, proto, _, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
                          "pick another --metrics-port") from None
    sock.setblocking(False)
    return sock


class Exporter:
    """The run's side: the /metrics server on a bound socket, and the file's rewrites."""

    def __init__(self, metrics: Metrics, sock: socket.socket | None, path: Path | None) -> None:
        self.metrics = metrics
        self.sock = sock
        self.path = path
        self._runner: object = None
        self._written = 0.0

    @property
    def address(self) -> str:
        if self.sock is None:
            return ""
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}/metrics" if ":" not in host else f"http://[{host}]:{port}/metrics"

    async def start(self) -> None:
        if self.sock is None:
            return
        from aiohttp import web

        async def serve(request: web.Request) -> web.Response:
            try:
                text = self.metrics.render()
            except Exception as exc:  # a bug here must not print a traceback into the run's log
                return web.Response(status=500, text=f"cannot render the metrics: {type(exc).__name__}: {exc}\n")
            return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        app = web.Application()
        app.router.add_get("/metrics", serve)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self._runner = runner

    def tick(self, force: bool = False) -> None:
        """Rewrites the file every FILE_EVERY seconds (at once when forced)."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._written < FILE_EVERY:
            return
        self._written = now
        with contextlib.suppress(OSError):  # a full disk must not stop the download
            write_file(self.path, self.metrics.render())

    async def stop(self) -> None:
        from aiohttp import web

        if isinstance(self._runner, web.AppRunner):
            await self._runner.cleanup()
        if self.sock is not None:
            self.sock.close()
