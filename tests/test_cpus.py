"""--processes follows the CPUs the process may use: its affinity mask and its cgroup's
CPU quota (a real cgroup where the machine lets us make one), and says so at start."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from oidownload.engine.cpus import _mounts, _paths, cgroup_quota, usable_cpus
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import require


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return proc


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    (root / "job" / "step").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "job" / "cpu.max").write_text("250000 100000\n")
    (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
    proc = _fake_proc(tmp_path, "0::/job/step\n",
                      f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup_quota(proc) == 2.5
    (root / "job" / "step" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(proc) == 0.5
    (root / "job" / "cpu.max").write_text("max 100000\n")
    (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(proc) is None


def test_cgroup_v1_quota_and_a_namespaced_mount_root(tmp_path: Path) -> None:
    mount = tmp_path / "cpu"
    (mount / "task").mkdir(parents=True)
    (mount / "task" / "cpu.cfs_quota_us").write_text("150000\n")
    (mount / "task" / "cpu.cfs_period_us").write_text("100000\n")
    (mount / "cpu.cfs_quota_us").write_text("-1\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    # The mount shows /kubepods/pod1 of the hierarchy; this process is in its /task.
    proc = _fake_proc(tmp_path, "4:cpu,cpuacct:/kubepods/pod1/task\n2:memory:/x\n",
                      f"40 30 0:35 /kubepods/pod1 {mount} rw - cgroup cgroup rw,cpu,cpuacct\n"
                      f"41 30 0:36 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n")
    assert _paths(proc) == {1: "/kubepods/pod1/task"}
    assert [m.version for m in _mounts(proc)] == [1]
    assert cgroup_quota(proc) == 1.5


def _start_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "worker process" in line or "worker thread" in line)


def _download(tmp_path: Path, make_origin: StartOrigin, prefix: list[str]) -> str:
    corpus = Corpus.generate(3, mix="tiny", seed=80)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = subprocess.run([*prefix, sys.executable, "-m", "oidownload", "download", str(manifest), "-o",
                          str(tmp_path / "out"), "--progress", "none"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return _start_line(res.stderr)


def test_affinity_mask_sets_the_default_and_is_printed(tmp_path: Path, make_origin: StartOrigin) -> None:
    require(shutil.which("taskset") is not None, "taskset (util-linux)")
    require(len(os.sched_getaffinity(0)) >= 2, "two CPUs, to pin the run to one of them")
    line = _download(tmp_path, make_origin, ["taskset", "-c", "0"])
    assert "1 worker process (one per usable CPU: 1 CPU in the affinity mask)" in line
    line = _download(tmp_path / "b", make_origin, [])
    n = len(os.sched_getaffinity(0))
    assert f"{n} worker processes (one per usable CPU: {n} CPUs in the affinity mask" in line


def _writable_cpu_cgroup() -> tuple[Path, int] | None:
    """A folder where a child cgroup with a CPU quota can be made, and its version."""
    proc = Path("/proc")
    paths = _paths(proc)
    for mount in _mounts(proc):
        path = paths.get(mount.version, "/")
        here = mount.point / path.lstrip("/")
        try:
            if mount.version == 2 and "cpu" not in (here / "cgroup.subtree_control").read_text().split():
                continue
        except OSError:
            continue
        if os.access(here, os.W_OK):
            return here, mount.version
    return None


def test_cgroup_cpu_quota_caps_the_default(tmp_path: Path, make_origin: StartOrigin) -> None:
    require(len(os.sched_getaffinity(0)) >= 2, "two CPUs, so that a one-CPU quota is tighter")
    found = _writable_cpu_cgroup()
    require(found is not None, "a cgroup (v1 cpu or v2 with the cpu controller) this user may create")
    assert found is not None
    parent, version = found
    group = parent / f"oidownload-test-{os.getpid()}"
    group.mkdir()
    try:
        if version == 2:
            (group / "cpu.max").write_text("100000 100000\n")
        else:
            (group / "cpu.cfs_period_us").write_text("100000\n")
            (group / "cpu.cfs_quota_us").write_text("100000\n")
        enter = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
        line = _download(tmp_path, make_origin, enter)
    finally:
        group.rmdir()
    assert re.search(r"\b1 worker process \(one per usable CPU: \d+ CPUs in the affinity mask, cgroup CPU quota 1\)",
                     line), line
    assert usable_cpus().count == len(os.sched_getaffinity(0))  # this process is not in it
