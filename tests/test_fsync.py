"""Issue 15 item 16: with --fsync every image file, and the folder that names it, is
synced before the outcome reaches the journal (seen with strace on the real process
tree); without it, images are not synced (their cost is measured in benchmarks/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, require

# fsync(7</tmp/.../out/train/1f3/.1f3....jpg.a1b2c3d4e5f6.oidtmp>) = 0, or split in two
# lines ("<unfinished ...>", "<... fsync resumed>") when processes race.
_FSYNC = re.compile(r"\bfsync\((\d+)<([^>]*)>")


def _synced(strace_log: Path, out: Path) -> tuple[set[str], set[str]]:
    """(image ids whose file was synced, folders synced: relative to OUT)."""
    files, folders = set(), set()
    for line in strace_log.read_text(errors="replace").splitlines():
        m = _FSYNC.search(line)
        if not m or not m.group(2).startswith(str(out)):
            continue
        path = Path(m.group(2))
        name = re.fullmatch(r"\.([0-9a-f]{16})\.jpg\.[0-9a-f]{12}\.oidtmp", path.name)
        if name:
            files.add(name.group(1))
        elif path in (out, out / "train") or path.parent == out / "train":
            folders.add(str(path.relative_to(out)))
    return files, folders


def _traced(log: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync", "-o", str(log),
                           sys.executable, "-m", "oidownload", *map(str, args)],
                          capture_output=True, text=True, timeout=240)


def test_fsync_syncs_every_image_and_its_folder(tmp_path: Path, make_origin: StartOrigin) -> None:
    require(shutil.which("strace") is not None, "strace")
    corpus = Corpus.generate(24, mix="tiny", seed=231)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    for fmt in ("jpeg", "keep"):  # in the pool's workers, and on threads of the main process
        out = tmp_path / f"out-{fmt}"
        log = tmp_path / f"strace-{fmt}.log"
        res = _traced(log, "download", manifest, "-o", out, "--format", fmt, "--fsync", "--processes", "2")
        assert res.returncode == 0, res.stderr
        files, folders = _synced(log, out)
        assert files == set(corpus.ids)
        # Each image's folder, and each folder that gained a new folder (OUT, OUT/train).
        assert folders == {f"train/{i[:3]}" for i in corpus.ids} | {".", "train"}
        assert all(s == "ok" for s, _, _ in journal_rows(out).values())

    out = tmp_path / "out-plain"
    log = tmp_path / "strace-plain.log"
    res = _traced(log, "download", manifest, "-o", out, "--format", "keep")
    assert res.returncode == 0, res.stderr
    assert _synced(log, out) == (set(), set())


def test_the_fsync_benchmark_runs(synth_cache: Path) -> None:
    script = Path(__file__).parent.parent / "benchmarks" / "fsync.py"
    res = subprocess.run([sys.executable, str(script), "--n", "8", "--runs", "1", "--scenario", "thumbnails-keep"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in events] == ["setup", "run", "run", "result"]
    assert all(e["ok"] == 8 for e in events[1:3]) and events[3]["images_per_s_fsync"] > 0
