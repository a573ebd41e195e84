"""`oidownload bench`: the full pipeline against the local origin, measured from the
outside. The download runs as a child process so that its CPU time (pool workers
included, via wait4) and its memory (sampled from /proc, whole process tree) are
its own; the origin runs in this process and is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from oidownload.testing import synth
from oidownload.testing.origin import Corpus, Latency, Origin, OriginThread, parse_fault_rates
from oidownload.testing.synth import describe


@dataclass(frozen=True)
class Load:
    """How the origin behaves under load (Origin's options): a link of bandwidth_mbps
    shared by all, a limit of max_in_flight per host answered with `overload`, and
    the images spread over `hosts` hosts."""

    bandwidth_mbps: float = 0.0
    max_in_flight: int = 0
    overload: str = "503"
    hosts: int = 1

    def origin(self, corpus: Corpus, latency: Latency) -> Origin:
        return Origin(corpus, latency, bandwidth=self.bandwidth_mbps * 1e6, max_in_flight=self.max_in_flight,
                      overload=self.overload, hosts=self.hosts)


@dataclass(frozen=True)
class Scenario:
    name: str
    mix: str = "light"
    source: str = "original"
    resize: int | None = 640
    fmt: str = "jpeg"
    n: int = 500
    latency_ms: float = 0.0
    jitter: float = 0.0
    faults: str = ""
    processes: int | None = None
    concurrency: int | None = None
    extra_args: tuple[str, ...] = ()
    seed: int = 0
    load: Load = Load()


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds, so far, of pid and every live descendant (a server
    measured beside the tool: take the difference over a run)."""
    tick = os.sysconf("SC_CLK_TCK")
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(_children(p))
    return total / tick


@dataclass
class TreeSampler:
    """Peak RSS of the largest process and of the whole tree under `pid`, sampled."""

    pid: int
    interval: float = 0.05
    peak_tree_kb: int = 0
    peak_single_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        todo, total, single = [self.pid], 0, 0
        while todo:
            p = todo.pop()
            rss = _rss_kb(p)
            total += rss
            single = max(single, rss)
            todo.extend(_children(p))
        self.peak_tree_kb = max(self.peak_tree_kb, total)
        self.peak_single_kb = max(self.peak_single_kb, single)

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_tree_rss_mb: float
    exit_code: int
    stderr: str

    def figures(self, done: int, fetched: int) -> dict[str, float]:
        """Rates per second of wall time; CPU per image done."""
        return {
            "images_per_s": round(done / self.wall_s, 2),
            "mb_per_s": round(fetched / 1e6 / self.wall_s, 2),
            "cpu_ms_per_image": round(1000 * self.cpu_s / max(1, done), 2),
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
        }


def measure(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Measured:
    """Runs cmd to the end; CPU is user+sys of it and every descendant it reaped."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    reader.start()
    with TreeSampler(proc.pid) as sampler:
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # Not ru_maxrss: Linux carries the forking parent's RSS into the child's peak.
        peak_rss_mb=sampler.peak_single_kb / 1024,
        peak_tree_rss_mb=sampler.peak_tree_kb / 1024,
        exit_code=proc.returncode,
        stderr=b"".join(err_chunks).decode("utf-8", "replace"),
    )


def download_cmd(scn: Scenario, manifest: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out),
           "--source", scn.source, "--format", scn.fmt, "--progress", "none", "--log-format", "json"]
    if scn.resize:
        cmd += ["--resize", str(scn.resize)]
    if scn.processes:
        cmd += ["--processes", str(scn.processes)]
    if scn.concurrency:
        cmd += ["--concurrency", str(scn.concurrency)]
    return cmd + list(scn.extra_args)


def summary_of(stderr: str) -> dict[str, Any]:
    """The JSON summary event of a `download --log-format json` run's stderr."""
    for line in reversed(stderr.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "summary":
            return dict(event)
    return {}


def corpus_for(scn: Scenario, log: Callable[[str], None] | None = None, bar: TextIO | None = None) -> Corpus:
    """The scenario's corpus. A first run generates the templates, which takes a while
    (74 s for the openimages and thumbnail mixes on a 2-core VM): with a `bar` stream
    (a terminal) it shows a progress bar for it, otherwise a line when each mix is done."""
    thumbs = "tiny-thumbs" if scn.mix.startswith("tiny") else "thumbnails"
    missing = [m for m in (scn.mix, thumbs) if not synth.cached(synth.MIXES[m], scn.seed)]
    if missing and log is not None:
        log(f"bench: generating the synthetic images for the {' and '.join(missing)} mix once "
            f"(a minute or two, the first time only), cached in {synth.cache_dir()}")
    for name in missing:
        mix = synth.MIXES[name]
        started = time.monotonic()
        if bar is not None:
            with tqdm(total=mix.templates, desc=f"generating {name}", unit="img", file=bar, dynamic_ncols=True) as t:
                synth.templates(mix, scn.seed, made=t.update)
        else:
            synth.templates(mix, scn.seed)
        if log is not None:
            log(f"bench: {mix.templates} {name} images generated in {time.monotonic() - started:.0f} s")
    return Corpus.generate(scn.n, mix=scn.mix, thumbs=thumbs, seed=scn.seed, fault_rates=parse_fault_rates(scn.faults))


def serve_corpus(n: int, mix: str, latency_ms: float, jitter: float, faults: str, manifest: Path, port: int,
                 log: Callable[[str], None], bar: TextIO | None = None, load: Load = Load()) -> None:
    """Serves a synthetic corpus on 127.0.0.1 until SIGINT/SIGTERM, with its images.csv."""
    import asyncio
    import signal

    corpus = corpus_for(Scenario("serve", mix=mix, n=n, faults=faults), log, bar)
    origin = load.origin(corpus, Latency(latency_ms / 1000, jitter))

    async def serve() -> None:
        await origin.start(port=port)
        corpus.write_manifest(manifest, origin.base_urls)
        where = origin.base_url if load.hosts == 1 else f"{origin.base_url} .. 127.0.0.{load.hosts}"
        log(f"bench: serving {n} images ({mix} mix) at {where}; their list is {manifest}")
        log(f"bench: try `oidownload download {manifest} -o out --resize 640`; Ctrl-C stops the server")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await origin.stop()

    asyncio.run(serve())


def run_scenario(scn: Scenario, workdir: Path | None = None, log: Callable[[str], None] | None = None,
                 bar: TextIO | None = None, code: str | None = None) -> dict[str, Any]:
    """One measured run; returns the JSON-able figures. `code`: a folder holding another
    version of the package to run instead (a before-and-after comparison)."""
    corpus = corpus_for(scn, log, bar)
    latency = Latency(scn.latency_ms / 1000, scn.jitter)
    with (tempfile.TemporaryDirectory(prefix="oidl-bench-", dir=workdir) as tmp,
          OriginThread(scn.load.origin(corpus, latency)) as origin):
        manifest = corpus.write_manifest(Path(tmp) / "images.csv", origin.base_urls)
        out = Path(tmp) / "out"
        env = None if code is None else {**os.environ, "PYTHONPATH": code}
        # From inside it: `python -m` puts the working folder first on the path.
        m = measure(download_cmd(scn, manifest, out), env=env, cwd=code)
        summary = summary_of(m.stderr)
        flights = list(origin.flight.values())
        server = {
            "peak_in_flight_per_host": max((f.peak for f in flights), default=0),
            "mean_in_flight_per_host": round(max((f.mean() for f in flights), default=0.0), 1),
            "requests": sum(origin.requests.values()),
            "refused": origin.overloaded,
        }
    if m.exit_code != 0:
        raise RuntimeError(f"download exited {m.exit_code}:\n{m.stderr[-2000:]}")
    done = int(summary.get("done", 0))
    fetched = int(summary.get("bytes", 0))
    sizes = [len(corpus.original(i)) if scn.source == "original" else len(corpus.thumbnail(i)) for i in corpus.ids]
    return {
        "scenario": scn.name,
        "images": scn.n,
        "ok": int(summary.get("ok", 0)),
        "failed": int(summary.get("failed", 0)),
        **m.figures(done, fetched),
        "main_cpu_ms_per_image": round(1000 * float(summary.get("main_cpu_s", 0.0)) / max(1, done), 3),
        "hosts": summary.get("hosts", []),
        "server": server,
        "sizes": describe(sizes),
        "settings": {k: v for k, v in asdict(scn).items() if k not in ("name", "extra_args")},
        "args": list(scn.extra_args),
    }


DEFAULT_SCENARIOS = (
    Scenario("originals-fit640", mix="light", source="original", resize=640, fmt="jpeg"),
    Scenario("thumbnails-keep", mix="light", source="thumbnail", resize=None, fmt="keep"),
)
