"""Every command meets a missing path, a read-only path and a file where a folder
belongs with one line and an exit code, never a traceback.

Read-only is real: the folders and files are read-only to their owner, and as root (who
may write anywhere) the command runs without the capabilities that override permissions.
It keeps its user rather than becoming `nobody`: the project may be cloned under a folder
only its owner may enter, and the command must still find its own venv."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import obey_permissions, run_cli

AS_ROOT = os.geteuid() == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ws(synth_cache: Path) -> Iterator[Path]:
    """A workspace: a downloaded OUT (with its class selection remembered) that nobody
    may write, its input, a plain file, and a read-only folder."""
    base = Path(tempfile.mkdtemp(prefix="oid-io-"))
    base.chmod(0o755)
    corpus = Corpus.generate(4, mix="tiny", seed=60)
    with OriginThread(Origin(corpus)) as origin:
        manifest = corpus.write_manifest(base / "images.csv", origin.base_url)
        boxes = base / "boxes.csv"
        boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                         + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n" for i in corpus.ids))
        res = run_cli("download", manifest, "-o", base / "out", "--class", "/m/0152hh", "--annotations", boxes,
                      "--progress", "none")
        assert res.returncode == 0, res.stderr
    (base / "file").write_text("not a folder\n")
    shutil.copy(Path(__file__).parent / "fixtures" / "openimages-v4plus" / "bbox_labels_600_hierarchy.json",
                base / "hierarchy.json")
    # Folders a user may not write that exist already: the export's writes meet them.
    (base / "out" / "annotations").mkdir()
    (base / "out" / "report").mkdir()
    (base / "ro").mkdir()
    (base / "ro").chmod(0o555)
    for path in (base / "out").rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    (base / "out").chmod(0o555)
    yield base
    for path in (base / "out", *(base / "out").rglob("*"), base / "ro"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(base)


def _run(ws: Path, args: list[str], *, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oidownload", *args], capture_output=True, text=True, timeout=120,
                          cwd=ws, env={**os.environ, "HOME": str(ws)},
                          preexec_fn=obey_permissions if unprivileged and AS_ROOT else None)


# (command, case) -> (arguments, exit code, a word the one line must hold)
CASES: dict[tuple[str, str], tuple[list[str], int, str]] = {
    ("download", "missing"): (["download", "missing.csv", "-o", "o1"], 1, "missing.csv"),
    ("download", "read-only"): (["download", "images.csv", "-o", "out"], 1, "writable"),
    ("download", "file"): (["download", "images.csv", "-o", "file"], 1, "file"),
    ("select", "missing"): (["select", "images.csv", "-o", "newdir/sel.csv"], 1, "newdir"),
    ("select", "missing input"): (["select", "missing.csv", "-o", "sel.csv"], 1, "missing.csv"),
    ("select", "read-only"): (["select", "images.csv", "-o", "ro/sel.csv"], 1, "not writable"),
    ("select", "file"): (["select", "images.csv", "-o", "file/sel.csv"], 1, "file"),
    ("annotations", "missing"): (["annotations", "missing-out"], 1, "missing-out"),
    ("annotations", "read-only"): (["annotations", "out"], 1, "out/annotations"),
    ("annotations", "file"): (["annotations", "file"], 1, "file"),
    ("annotations", "file dest"): (["annotations", "out", "-d", "file"], 1, "file"),
    ("report", "missing"): (["report", "missing-out"], 1, "missing-out"),
    ("report", "read-only"): (["report", "out"], 1, "out/report"),
    ("report", "file"): (["report", "file"], 1, "file"),
    ("report", "file dest"): (["report", "out", "-d", "file"], 1, "file"),
    ("status", "missing"): (["status", "missing-out"], 1, "missing-out"),
    ("status", "read-only"): (["status", "out"], 0, "4 images journaled"),  # reading needs no write access
    ("status", "file"): (["status", "file"], 1, "file"),
    ("metadata", "missing"): (["metadata", "-o", "m/deeper", "--version", "v3", "--only", "classes*"], 1, "127.0.0.1"),
    ("metadata", "read-only"): (["metadata", "-o", "ro/meta", "--version", "v3"], 1, "ro/meta"),
    ("metadata", "file"): (["metadata", "-o", "file", "--version", "v3"], 1, "file"),
    ("bench", "missing"): (["bench", "--serve", "--manifest", "newdir/b.csv"], 1, "newdir"),
    ("bench", "read-only"): (["bench", "--serve", "--manifest", "ro/b.csv"], 1, "not writable"),
    ("bench", "file"): (["bench", "--serve", "--manifest", "file/b.csv"], 1, "file"),
    ("classes", "missing"): (["classes", "--hierarchy", "missing.json"], 1, "missing.json"),
    ("classes", "read-only"): (["classes", "--hierarchy", "hierarchy.json"], 0, "/m/0bl9f"),  # reading only
    ("classes", "file"): (["classes", "--hierarchy", "file"], 1, "file"),
    ("db", "missing"): (["db", "load", "missing.csv", "--db", "x.sqlite"], 1, "missing.csv"),
    ("db", "read-only"): (["db", "load", "hierarchy.json", "--db", "ro/x.sqlite"], 1, "ro/x.sqlite"),
    ("db", "file"): (["db", "load", "hierarchy.json", "--db", "file/x.sqlite"], 1, "file"),
    ("gallery", "missing"): (["gallery", "missing-out"], 1, "missing-out"),
    ("gallery", "read-only"): (["gallery", "out"], 1, "out/gallery"),
    ("gallery", "file"): (["gallery", "out", "-o", "file"], 1, "file"),
    ("verify", "missing"): (["verify", "missing-out"], 1, "missing-out"),
    ("verify", "read-only"): (["verify", "out"], 1, "--no-mark"),  # marking writes the journal
    ("verify", "file"): (["verify", "file"], 1, "file"),
    ("lock", "missing"): (["lock", "missing-out"], 1, "missing-out"),
    ("lock", "read-only"): (["lock", "out"], 1, "out/oidownload.lock.jsonl.gz"),
    ("lock", "file"): (["lock", "file"], 1, "file"),
}


def test_every_command_has_its_cases() -> None:
    from oidownload.commands import main

    for command in main.commands:
        for case in ("missing", "read-only", "file"):
            assert (command, case) in CASES, (command, case)


@pytest.mark.parametrize(("command", "case"), list(CASES), ids=[f"{c}-{k}" for c, k in CASES])
def test_command_on_a_bad_path_says_one_line(ws: Path, command: str, case: str) -> None:
    args, code, word = CASES[(command, case)]
    if command == "metadata":
        args = [*args, "--base-url", f"http://127.0.0.1:{_closed_port()}/"]
    res = _run(ws, args, unprivileged=case == "read-only")
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    if code:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("oidownload: error: "), res.stderr
        assert word in lines[0], lines[0]
    else:
        assert word in res.stdout, res.stdout[-500:]
