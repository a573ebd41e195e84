"""Issue 14 item 1: `report` joins journal rows to the input that was downloaded, by
its absolute path, checks the ImageID of every joined row, and says when the input is
gone or changed; never another image's row."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus


def _cli(cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=240, env=dict(os.environ))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_from_another_folder_joins_the_downloaded_input(tmp_path: Path, make_origin: StartOrigin) -> None:
    mine = Corpus.generate(30, mix="tiny", seed=161)
    other = Corpus.generate(30, mix="tiny", seed=162)
    origin = make_origin(mine)
    ws, elsewhere = tmp_path / "ws", tmp_path / "other"
    mine.write_manifest(ws / "images.csv", origin.base_url)
    other.write_manifest(elsewhere / "images.csv", origin.base_url)
    res = _cli(ws, "download", "images.csv", "-o", "out", "--format", "keep")
    assert res.returncode == 0, res.stderr

    report = _cli(elsewhere, "report", "../ws/out")
    assert report.returncode == 0, report.stderr
    assert "warning" not in report.stderr
    rows = _csv(ws / "out" / "report" / "success.csv")
    assert len(rows) == 30
    for r in rows:
        assert r["ImageID"] in mine.entries
        assert r["OriginalURL"] == mine.manifest_row(r["ImageID"], origin.base_url)[2]
        assert r["OriginalMD5"] == mine.listed(r["ImageID"])[1]

    # The input is replaced by another list with the same number of lines.
    (ws / "images.csv").write_bytes((elsewhere / "images.csv").read_bytes())
    changed = _cli(elsewhere, "report", "../ws/out")
    assert changed.returncode == 0, changed.stderr
    assert "changed since the download" in changed.stderr
    rows = _csv(ws / "out" / "report" / "success.csv")
    assert sorted(r["ImageID"] for r in rows) == sorted(mine.ids)  # still what the journal knows
    assert all(r["OriginalURL"] == "" for r in rows)  # and nothing of another image's row

    (ws / "images.csv").unlink()
    gone = _cli(elsewhere, "report", "../ws/out")
    assert gone.returncode == 0, gone.stderr
    assert "is gone" in gone.stderr
    assert len(_csv(ws / "out" / "report" / "success.csv")) == 30
