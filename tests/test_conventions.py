"""Conventions a user relies on: a closed pipe, option spellings and contradictions,
JSON log times, the classes listing, progress totals, and the messages that name the
right thing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import V4

HIERARCHY = V4 / "bbox_labels_600_hierarchy.json"


def closed_pipe(*args: object) -> subprocess.CompletedProcess[str]:
    """`oidownload ARGS | head -0`: stdout is a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [
    ["--help"],
    ["classes", "--hierarchy", HIERARCHY],
    ["download", "--help"],
])
def test_a_closed_pipe_is_not_an_error(args: list[object]) -> None:
    res = closed_pipe(*args)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""

