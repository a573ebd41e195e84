"""The package's layers, checked from its source: an import that breaks a rule fails
here, whether it sits at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oidownload"

# area → the areas of ours it may never import. An area is the first folder under
# oidownload/ (or the module's name for the few top-level modules).
FORBIDDEN: dict[str, frozenset[str]] = {
    # The shared core is the bottom: it imports nothing of ours but itself.
    "core": frozenset({"inputs", "engine", "sources", "sinks", "state", "dataset", "provenance", "exports",
                       "commands", "gallery", "testing", "api", "bench"}),
    "inputs": frozenset({"engine", "sources", "sinks", "state", "dataset", "provenance", "exports", "commands",
                         "gallery", "testing", "api", "bench"}),
    # The download engine knows rows, sources, sinks and its journal; never the dataset
    # layer built on top of what it wrote.
    "engine": frozenset({"dataset", "provenance", "exports", "gallery", "commands", "testing", "api", "bench"}),
    "sources": frozenset({"engine", "dataset", "provenance", "exports", "gallery", "commands", "testing", "api",
                          "bench"}),
    "sinks": frozenset({"engine", "dataset", "provenance", "exports", "gallery", "commands", "testing", "api",
                        "bench"}),
    "state": frozenset({"engine", "dataset", "provenance", "exports", "gallery", "commands", "testing", "api",
                        "bench"}),
    "dataset": frozenset({"engine", "provenance", "exports", "gallery", "commands", "testing", "api", "bench"}),
    "exports": frozenset({"engine", "gallery", "commands", "testing", "api", "bench"}),
    "provenance": frozenset({"gallery", "commands", "testing", "api", "bench"}),
    "gallery": frozenset({"exports", "provenance", "commands", "testing", "api", "bench"}),
    # What the CLI and the API share (configure: options → Config; runs: the work of a
    # command) sits under both, so that the API never reaches into click.
    "configure": frozenset({"commands", "testing", "api", "bench", "runs"}),
    "runs": frozenset({"commands", "testing", "api", "bench"}),
    "api": frozenset({"commands", "testing", "bench"}),
    "testing": frozenset({"engine", "sources", "sinks", "state", "dataset", "provenance", "exports", "gallery",
                          "commands", "api", "bench"}),
}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module of ours) for every import in the file, relative ones resolved."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "oidownload":
                found += [(node.lineno, f"oidownload.{a.name}") for a in node.names]
            elif target.startswith("oidownload."):
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("oidownload.")]
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        area = _area(_module_of(path))
        for line, target in _imports(path):
            if _area(target) in FORBIDDEN.get(area, frozenset()):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {area} imports {target}")
    return bad


def test_no_import_crosses_a_layer() -> None:
    assert _violations() == []


def test_the_rules_name_every_area_there_is() -> None:
    areas = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    areas |= {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    known = set(FORBIDDEN) | {a for rule in FORBIDDEN.values() for a in rule}
    assert areas <= known | {"gallery", "bench"}, sorted(areas - known)


@pytest.mark.parametrize("source", [
    "from oidownload.dataset.annotations import ClassFilter\n",
    "def f():\n    from oidownload.exports import EXPORTERS\n",
    "from ..dataset import selection\n",
])
def test_a_crossing_import_is_caught(tmp_path: Path, source: str) -> None:
    # The checker itself: an engine module that reaches into the dataset layer, at
    # module level, inside a function, or relatively, is found.
    spy = PACKAGE / "engine" / "_layering_probe.py"
    spy.write_text(source, encoding="utf-8")
    try:
        assert any("_layering_probe" in v for v in _violations())
    finally:
        spy.unlink()


def test_only_bench_and_the_tests_import_testing() -> None:
    users = {_module_of(p) for p in PACKAGE.rglob("*.py")
             if any(_area(t) == "testing" for _, t in _imports(p)) and _area(_module_of(p)) != "testing"}
    assert users <= {"oidownload.bench"}, sorted(users)
