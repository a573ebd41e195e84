"""The gallery's full-size images are hard links to the written files: placing one over
an earlier build's link to the same file is a rename(2) that does nothing, and the
temporary link stayed, one `.<id>.jpg.<hex>.oidtmp` per image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from tests.conftest import run_cli
from tests.test_verify import _download


def _leftovers(gallery: Path) -> list[Path]:
    return sorted(p for p in gallery.rglob("*") if p.name.endswith(".oidtmp"))


def test_a_rebuild_after_the_thumbnails_were_deleted_leaves_no_temporary_links(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, _, _, _ = _download(tmp_path, make_origin, 12)
    gallery = out / "gallery"
    assert run_cli("gallery", out, "--progress", "none").returncode == 0
    images = [p for p in (gallery / "images").rglob("*.jpg")]  # <id>.t.jpg thumbnails, <id>.jpg full size
    thumbs = [p for p in images if p.name.endswith(".t.jpg")]
    fulls = [p for p in images if not p.name.endswith(".t.jpg")]
    assert thumbs and fulls and all(p.stat().st_nlink >= 2 for p in fulls)  # hard links to OUT's files
    for p in thumbs:
        p.unlink()
    res = run_cli("gallery", out, "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert _leftovers(gallery) == []
    assert all(p.exists() for p in thumbs)

    for p in thumbs:  # two builds at once
        p.unlink()
    cmd = [sys.executable, "-m", "oidownload", "gallery", str(out), "--progress", "none"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
    assert _leftovers(gallery) == []
