"""Which Pillow this is, without importing it: mainline Pillow, or the accelerated
Pillow-SIMD build (compiled for AVX2, as the Docker image ships it). A SIMD build on
a CPU without AVX2 would die of SIGILL inside the first resize, so `check` refuses
with a message first. OIDOWNLOAD_PILLOW_BUILD (set by the image) names the build
that is expected, and a different one is refused too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

from oidownload.core.errors import OidownloadError

CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True, slots=True)
class PillowBuild:
    name: str  # "pillow-simd" or "pillow"
    version: str

    @property
    def simd(self) -> bool:
        return self.name == "pillow-simd"

    def describe(self) -> str:
        return f"Pillow-SIMD {self.version} (AVX2 build)" if self.simd else f"Pillow {self.version}"


def pillow_build() -> PillowBuild:
    for name in ("pillow-simd", "pillow"):
        try:
            return PillowBuild(name, metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    return PillowBuild("pillow", "unknown")


def cpu_has(flag: str, cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has a feature flag, from /proc/cpuinfo; None when unknown."""
    path = cpuinfo or os.environ.get("OIDOWNLOAD_CPUINFO") or CPUINFO
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split(":", 1)[1].split()
    except OSError:
        return None
    return None


def check() -> PillowBuild:
    """Refuses to go on with a Pillow that cannot run here, or that is not the one
    this installation promised."""
    build = pillow_build()
    expected = os.environ.get("OIDOWNLOAD_PILLOW_BUILD", "").strip().lower()
    if expected in ("simd", "pillow-simd") and not build.simd:
        raise OidownloadError(f"this installation expects Pillow-SIMD, but {build.describe()} is installed; "
                              "rebuild the image, or unset OIDOWNLOAD_PILLOW_BUILD")
    if expected in ("mainline", "pillow") and build.simd:
        raise OidownloadError(f"this installation expects mainline Pillow, but {build.describe()} is installed")
    if build.simd and cpu_has("avx2") is False:
        raise OidownloadError(
            f"{build.describe()} needs a CPU with AVX2, and this one has none: it would crash. Use the image "
            "built with --build-arg PILLOW=mainline (the oidownload:mainline tag), or "
            "`pip install --force-reinstall pillow` in place of pillow-simd")
    return build
