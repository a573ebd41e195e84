"""The Docker image, built with buildah against a local stand-in base (.ci/run), runs
`oidownload download` as its non-root user into a mounted folder, stops on SIGTERM
with 143, and completes when run again."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oidownload.testing.origin import Corpus, Latency, Origin
from tests.conftest import journal_rows, require

ROOT = Path(__file__).parent.parent
IMAGE = "localhost/oidownload:ci"

# An engine test (a real cluster, container or browser): out of the fast lane, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image() -> str:
    require(
        shutil.which("buildah") is not None and shutil.which("podman") is not None and "CONTAINERS_CONF" in os.environ,
        "buildah, podman and a stand-in base image (.ci/container-base.sh)",
    )
    res = subprocess.run(
        ["buildah", "bud", "--isolation", "chroot", "--pull=never", "-q", "-t", IMAGE, str(ROOT)],
        capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return IMAGE


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def test_image_is_lean_and_non_root(image: str) -> None:
    info = podman("image", "inspect", image, "--format", "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Volumes}}")
    user, entrypoint, volumes = info.stdout.strip().split("|")
    assert user == "10001:10001"
    assert entrypoint == '["oidownload"]' and "/data" in volumes
    res = podman("run", "--rm", "--entrypoint", "sh", image, "-c", "id -u; command -v gcc cc make || true")
    assert res.stdout.split() == ["10001"], res.stdout  # non-root, and no compiler in the final image
    version = podman("run", "--rm", image, "--version").stdout
    assert version.startswith("oidownload, version") and "Pillow-SIMD" in version and "AVX2" in version, version


def test_accelerated_image_refuses_a_cpu_without_avx2(image: str, tmp_path: Path) -> None:
    """Pillow-SIMD built for AVX2 would die of SIGILL on an older CPU: the image says so
    and exits 1 instead. The CPU's flags are read from a file the test gives it."""
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2\n")
    fake.chmod(0o644)
    res = podman("run", "--rm", "-v", f"{fake}:/cpuinfo:ro", "-e", "OIDOWNLOAD_CPUINFO=/cpuinfo", image, "status", "/data")
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "needs a CPU with AVX2" in res.stderr and "PILLOW=mainline" in res.stderr
    ok = podman("run", "--rm", "--entrypoint", "python", image, "-c",
                "from PIL import features, Image; print(features.check('jpg'), features.check('webp'), Image.__version__)")
    assert ok.stdout.split()[:2] == ["True", "True"] and ".post" in ok.stdout, ok.stdout


def test_container_download_stops_on_sigterm_and_resumes(image: str, tmp_path: Path, make_origin: Callable[..., Origin]) -> None:
    corpus = Corpus.generate(300, mix="tiny", seed=61)
    origin = make_origin(corpus, latency=Latency(0.1))
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the container's user (10001) writes here
    corpus.write_manifest(data / "images.csv", origin.base_url)
    name = f"oidl-{os.getpid()}"
    run = ["run", "--rm", "--name", name, "--network", "host", "-v", f"{data}:/data",
           image, "download", "/data/images.csv", "-o", "/data/out", "--concurrency", "2", "--resize", "64",
           "--progress", "log"]
    proc = subprocess.Popen(["podman", *run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_rows(data / "out")) < 10:
        time.sleep(0.2)
    assert podman("kill", "--signal", "TERM", name).returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received" in err
    first = _rows(data / "out")
    assert 10 <= len(first) < 300
    files = list((data / "out" / "train").rglob("*.jpg"))
    assert files and all(f.stat().st_uid == 10001 for f in files)

    res = podman(*run, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    journal = journal_rows(data / "out")
    assert len(journal) == 300 and all(s == "ok" for s, _, _ in journal.values())
    assert all(origin.requests[f"/o/{i}_o.jpg"] == 1 for i in first)  # nothing journaled was fetched again


def _rows(out: Path) -> dict[str, tuple[str, str, int]]:
    import sqlite3

    try:
        return journal_rows(out)
    except sqlite3.Error:
        return {}
