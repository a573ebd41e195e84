"""Prometheus metrics (--metrics-port, --metrics-file): a real Prometheus server scrapes
a running download and its numbers equal the journal's; the textfile is complete and
parseable whenever it is read, a SIGKILL included; host labels stay bounded."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import require, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _journal_counts(out: Path) -> Counter[str]:
    return Counter(journals.statuses(out).values())


def _parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by name, through prometheus_client's parser (strict: a torn line raises)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return found


def _promtool(path: Path) -> None:
    tool = shutil.which("promtool")
    if tool is not None:
        with open(path, "rb") as f:
            res = subprocess.run([tool, "check", "metrics"], stdin=f, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """start(target_port) → the base URL of a real Prometheus (Debian's package) on
    loopback that scrapes 127.0.0.1:target_port every second; stopped by its pid."""
    binary = shutil.which("prometheus")
    require(binary is not None, "Prometheus (apt-get install prometheus)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: int) -> str:
        port = _free_port()
        config = tmp_path / "prom.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: oid, static_configs: [{{targets: ['127.0.0.1:{target}']}}]}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - outlives this function
        procs.append(subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1)
                return base
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
                time.sleep(0.2)

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.slow
def test_prometheus_scrapes_a_running_download(tmp_path: Path, make_origin: StartOrigin,
                                                prometheus: Callable[[int], str]) -> None:
    corpus = Corpus.generate(120, seed=26)
    for image_id in corpus.ids[:6]:
        corpus.entries[image_id].fault = Fault("404")
    origin = make_origin(corpus, latency=Latency(0.12))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    port = _free_port()
    base = prometheus(port)
    out = tmp_path / "out"
    # About 8 s of work at 2 requests at once; the linger lets the last scrape see the end.
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out), "--concurrency", "2",
         "--processes", "1", "--metrics-port", str(port), "--metrics-linger", "20", "--progress", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen_running = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = _query(base, 'oid_run_state{state="done"} == 1')
            if not seen_running:
                seen_running = bool(_query(base, 'oid_run_state{state="running"} == 1'))
            if done:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus never saw the run end")
        journal = _journal_counts(out)
        assert sum(journal.values()) == 120 and journal["http_4xx"] == 6
        by_status = {r["metric"]["status"]: float(r["value"][1])
                     for r in _query(base, "sum by (status) (oid_images_total)")}
        assert by_status == {status: float(n) for status, n in journal.items()}
        labels = _query(base, "oid_images_total")[0]["metric"]
        assert labels["task"] == "0" and labels["tasks"] == "1" and labels["job"] == "oid"
        requests = {r["metric"]["code"]: float(r["value"][1])
                    for r in _query(base, 'sum by (code) (oid_requests_total{host="127.0.0.1"})')}
        assert requests == {"2xx": 114.0, "4xx": 6.0}
        assert float(_query(base, "sum(oid_request_duration_seconds_count)")[0]["value"][1]) == 120
        assert float(_query(base, "oid_rows_done")[0]["value"][1]) == 120
        # Every query of the dashboard is valid PromQL against these series, and the
        # headline panels have data.
        dashboard = json.loads((Path(__file__).parent.parent / "examples" / "grafana-dashboard.json").read_text())
        answered = {t["expr"]: _query(base, t["expr"].replace("$job", ".*"))
                    for panel in dashboard["panels"] for t in panel["targets"]}
        assert len(answered) >= 15
        empty = [e for e, v in answered.items() if not v]
        # No failure but the 404s (final: no retry), and no task still running, at the end.
        assert all("status!=" in e or "retries" in e or 'state="running"' in e for e in empty), empty
        assert seen_running or proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)  # ends the linger
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in err


def test_metrics_file_is_whole_while_written_and_across_sigkill(tmp_path: Path, make_origin: StartOrigin) -> None:
    pytest.importorskip("prometheus_client")
    corpus = Corpus.generate(150, seed=27)
    origin = make_origin(corpus, latency=Latency(0.05))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(tmp_path / "out"),
         "--concurrency", "2", "--processes", "1", "--metrics-file", str(textfiles / "oid-{task}.prom"),
         "--progress", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = textfiles / "oid-0-of-1.prom"
    reads = 0
    seen_ok: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (reads < 300 or not seen_ok or seen_ok[-1] < 20):
            try:
                text = path.read_text()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            samples = _parse(text)
            assert text.endswith("\n") and "oid_rows_done" in samples, text[-300:]
            seen_ok.append(sum(v for labels, v in samples.get("oid_images_total", []) if labels["status"] == "ok"))
            reads += 1
        assert proc.poll() is None, "the run ended before it was killed"
    finally:
        proc.kill()
        proc.wait(30)
    assert reads >= 300 and seen_ok == sorted(seen_ok) and seen_ok[-1] >= 20
    samples = _parse(path.read_text())
    assert [labels["state"] for labels, v in samples["oid_run_state"] if v == 1] == ["running"]
    assert [p.name for p in textfiles.glob("*.prom")] == ["oid-0-of-1.prom"]
    _promtool(path)


def test_a_stopped_run_leaves_its_final_counts_in_the_file(tmp_path: Path, make_origin: StartOrigin) -> None:
    """SIGTERM mid-run: the run stops cleanly, and the file's last version says done and
    counts exactly what the journal holds."""
    pytest.importorskip("prometheus_client")
    corpus = Corpus.generate(200, seed=31)
    origin = make_origin(corpus, latency=Latency(0.05))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    prom = tmp_path / "m.prom"
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(tmp_path / "out"), "--concurrency", "2",
         "--processes", "1", "--metrics-file", str(prom), "--progress", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not prom.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    samples = _parse(prom.read_text())
    assert [labels["state"] for labels, v in samples["oid_run_state"] if v == 1] == ["done"]
    journal = _journal_counts(tmp_path / "out")
    assert 0 < sum(journal.values()) < 200
    assert {labels["status"]: v for labels, v in samples["oid_images_total"]} == dict(journal)


def test_node_exporter_textfile_collector_serves_the_file(tmp_path: Path, make_origin: StartOrigin) -> None:
    """The Slurm way: the real textfile collector (Debian's prometheus-node-exporter) reads
    the file and serves its samples without a scrape error."""
    binary = shutil.which("prometheus-node-exporter")
    require(binary is not None, "prometheus-node-exporter (installed with apt-get install prometheus)")
    corpus = Corpus.generate(20, seed=30)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--num-shards", "2", "--shard-index", "1",
                  "--metrics-file", textfiles / "oidownload-{task}.prom")
    assert res.returncode == 0, res.stderr
    port = _free_port()
    proc = subprocess.Popen([str(binary), "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textfiles}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    samples = _parse(text)
    assert samples["node_textfile_scrape_error"][0][1] == 0
    images = samples["oid_images_total"]
    assert {(labels["task"], labels["tasks"]) for labels, _ in images} == {("1", "2")}
    assert sum(v for _, v in images) == sum(_journal_counts(tmp_path / "out").values()) > 0


def test_host_labels_are_capped_with_a_thousand_hosts(tmp_path: Path, make_origin: StartOrigin) -> None:
    pytest.importorskip("prometheus_client")
    corpus = Corpus.generate(1000, seed=28)
    origin = make_origin(corpus)
    port = origin.base_url.rsplit(":", 1)[1]
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    lines = manifest.read_text().splitlines()
    # 1,000 loopback addresses: 127.0.0.1 answers, and the others refuse the connection
    # (the origin listens on 127.0.0.1 only), each a host of its own. The first 25 rows
    # go to 127.0.0.1, so that it is the busiest host.
    rewritten = [lines[0]]
    for i, line in enumerate(lines[1:]):
        host = "127.0.0.1" if i < 25 else f"127.0.{i // 200 + 1}.{i % 200 + 2}"
        rewritten.append(line.replace(f"127.0.0.1:{port}", f"{host}:{port}"))
    manifest.write_text("\n".join(rewritten) + "\n")
    prom = tmp_path / "m.prom"
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--retries", "0", "--metrics-file", prom,
                  "--concurrency", "32", "--processes", "1")
    assert "Traceback" not in res.stderr
    samples = _parse(prom.read_text())
    hosts = {labels["host"] for labels, _ in samples["oid_requests_total"]}
    assert len(hosts) <= 21 and "other" in hosts and "127.0.0.1" in hosts
    assert sum(v for _, v in samples["oid_requests_total"]) == 1000
    assert {labels["host"] for labels, _ in samples["oid_request_duration_seconds_count"]} == hosts
    errors = sum(v for labels, v in samples["oid_requests_total"] if labels["code"] == "error")
    assert errors == 975
    _promtool(prom)


def test_host_state_stays_bounded_and_totals_stay_whole() -> None:
    """20,000 hosts, one request each plus a busy few: at most HOST_MEMORY are kept one by
    one, at most MAX_HOST_LABELS + 1 labels are rendered, and no request is lost."""
    from oidownload.core.shard import Shard
    from oidownload.engine.metrics import HOST_MEMORY, MAX_HOST_LABELS, Metrics

    m = Metrics(Shard(2, 5))
    for i in range(20_000):
        m.request(f"h{i}.example", 200 if i % 3 else None, 0.3)
        if i % 100 == 0:
            m.request("busy.example", 503, 2.0)
    assert len(m.hosts) <= HOST_MEMORY
    samples = _parse(m.render())
    requests = samples["oid_requests_total"]
    hosts = {labels["host"] for labels, _ in requests}
    assert len(hosts) <= MAX_HOST_LABELS + 1 and {"busy.example", "other"} <= hosts
    assert sum(v for _, v in requests) == 20_200
    assert sum(v for labels, v in requests if labels["host"] == "busy.example") == 200
    counts = {labels["host"]: v for labels, v in samples["oid_request_duration_seconds_count"]}
    assert sum(counts.values()) == 20_200
    assert {(labels["task"], labels["tasks"]) for labels, _ in requests} == {("2", "5")}


def test_a_metrics_port_in_use_stops_the_run_before_any_request(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(5, seed=29)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run_cli("download", manifest, "-o", tmp_path / "out", "--metrics-port", port)
    assert res.returncode == 2, res.stderr  # a usage error, as any refused option
    assert f"cannot serve metrics on 127.0.0.1:{port}" in res.stderr and "Traceback" not in res.stderr
    assert sum(origin.requests.values()) == 0
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--metrics-file", tmp_path / "no" / "such" / "m.prom")
    assert res.returncode == 2 and "--metrics-file" in res.stderr, res.stderr
    assert sum(origin.requests.values()) == 0



