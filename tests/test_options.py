"""The option table (core/options.py) is the one source: the API's typed keywords, the
click options of `download` and `select`, and Config's defaults all come from it; and
the API reaches none of the command line's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from oidownload.commands import main
from oidownload.core.config import Config, OutputConfig
from oidownload.core.options import (
    DOWNLOAD_OPTIONS,
    SELECTION_OPTIONS,
    DownloadOptions,
    SelectOptions,
)
from oidownload.core.values import BadValue, DurationIn, IntIn


def test_the_typed_keywords_are_the_table_s() -> None:
    # `class` is a Python keyword: the API takes class_ (as every keyword, with a trailing _ or not).
    assert set(DownloadOptions.__annotations__) == {s.keyword for s in DOWNLOAD_OPTIONS} - {"output", "class"} | {"class_"}
    assert set(SelectOptions.__annotations__) == {s.keyword for s in SELECTION_OPTIONS} - {"class"} | {"class_"}


def test_the_click_options_are_the_table_s() -> None:
    for name, specs in (("download", DOWNLOAD_OPTIONS), ("select", SELECTION_OPTIONS)):
        command = main.commands[name]
        options = {p.name: p for p in command.params if isinstance(p, click.Option)}
        for spec in specs:
            option = options[spec.dest]
            assert tuple(option.opts) == spec.flags and option.help == spec.help
            assert option.multiple == spec.multiple and option.is_flag == spec.flag
            if not spec.flag and spec.default is not None:
                assert option.default == spec.default


def test_config_defaults_are_the_table_s() -> None:
    cfg = Config(inputs=(), output=OutputConfig("out", Path("state")))
    assert cfg.net.concurrency == 256 and cfg.net.per_host is None and cfg.net.total_timeout == 120.0
    assert cfg.net.max_body_bytes == 64 << 20 and cfg.image.quality == 90 and cfg.run.progress_interval == 5.0
    assert cfg.source.mirror_url == "https://open-images-dataset.s3.amazonaws.com" and not cfg.source.fallback


def test_values_are_refused_in_click_s_words() -> None:
    for rule, value, said in ((IntIn(1, 10), "0", "0 is not in the range 1<=x<=10."),
                              (IntIn(1, 10), "x", "'x' is not a valid integer range."),
                              (DurationIn(), "0", "'0' must be more than zero seconds")):
        try:
            rule.convert(value)
        except BadValue as exc:
            assert str(exc) == said
        else:
            raise AssertionError(value)


def test_the_api_imports_neither_click_nor_the_commands() -> None:
    probe = ("import sys, oidownload, oidownload.api; "
             "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('oidownload.commands')))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "[]"


def test_core_imports_nothing_else_of_ours_nor_click() -> None:
    import ast

    core = Path(__file__).parent.parent / "oidownload" / "core"
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("click"), f"{path.name} imports {name}"
                assert not name.startswith("oidownload") or name.startswith("oidownload.core"), f"{path.name}: {name}"
