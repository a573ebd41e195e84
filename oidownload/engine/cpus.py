"""How many CPUs this process may use: its affinity mask, capped by the CPU quota of
its cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), anywhere on
the way up to the hierarchy's root. A container limited to 2 CPUs of a 64-core host
gets 2 workers, not 64.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Cpus:
    count: int
    why: str  # for the start-up line


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    try:
        return int(quota) / int(period or "100000") if quota != "max" else None
    except (ValueError, ZeroDivisionError):
        return None


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the path inside the hierarchy that is mounted here
    point: Path
    version: int


def _mounts(proc: Path) -> list[_Mount]:
    """cgroup2 mounts, and cgroup v1 mounts that carry the cpu controller."""
    found = []
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            found.append(_Mount(fields[3], point, 2))
        elif fstype == "cgroup" and "cpu" in options:
            found.append(_Mount(fields[3], point, 1))
    return found


def _paths(proc: Path) -> dict[int, str]:
    """This process's cgroup path per version, from /proc/self/cgroup."""
    paths: dict[int, str] = {}
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    return paths


def cgroup_quota(proc: Path = Path("/proc")) -> float | None:
    """The tightest CPU quota on this process's cgroup path, in CPUs; None when none."""
    paths = _paths(proc)
    limits = []
    for mount in _mounts(proc):
        path = paths.get(mount.version)
        if path is None:
            continue
        root = mount.root.rstrip("/")
        if root and not (path == root or path.startswith(root + "/")):
            continue  # this mount shows another part of the hierarchy
        directory = mount.point / path[len(root):].lstrip("/")
        read = _v2_limit if mount.version == 2 else _v1_limit
        while True:
            limit = read(directory)
            if limit is not None:
                limits.append(limit)
            if directory == mount.point or mount.point not in directory.parents:
                break
            directory = directory.parent
    return min(limits) if limits else None


def usable_cpus(proc: Path = Path("/proc")) -> Cpus:
    n = _affinity()
    why = f"{n} CPU{'s' if n > 1 else ''} in the affinity mask"
    quota = cgroup_quota(proc)
    if quota is not None and math.ceil(quota) < n:
        # A fractional quota still lets a worker run part of the time: round up.
        n = max(1, math.ceil(quota))
        why += f", cgroup CPU quota {quota:g}"
    return Cpus(n, why)
