"""Issue 14 item 4: `select -o` refuses to overwrite one of its inputs (by any
spelling), and every file a command writes is whole or absent and never written
through a link: the YOLO tree like the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oidownload.testing.origin import Corpus, Origin
from tests.conftest import V3, run_cli
from tests.test_select import wheel_download  # noqa: F401  (the fixture)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_select_refuses_to_overwrite_its_input(tmp_path: Path, spelling: str) -> None:
    source = tmp_path / "images.csv"
    source.write_bytes((V3 / "validation" / "images.csv").read_bytes())
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    dest = {"same": str(source), "dot": f"{tmp_path}/sub/.././images.csv", "symlink": str(tmp_path / "link.csv"),
            "hardlink": str(tmp_path / "hard.csv")}[spelling]
    if spelling == "symlink":
        Path(dest).symlink_to(source)
    elif spelling == "hardlink":
        os.link(source, dest)
    res = run_cli("select", source, "-o", dest, "--limit", "3")
    assert res.returncode == 2, res.stderr
    assert "is the input" in res.stderr and "Traceback" not in res.stderr
    assert source.read_bytes() == before


def test_select_replaces_a_link_at_its_output_rather_than_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    dest = tmp_path / "sel.csv"
    dest.symlink_to(outside)
    res = run_cli("select", V3 / "validation" / "images.csv", "-o", dest, "--limit", "3")
    assert res.returncode == 0, res.stderr
    assert outside.read_text() == "keep me"
    assert not dest.is_symlink() and len(dest.read_text().splitlines()) == 4


def test_yolo_export_never_writes_through_links(
        wheel_download: tuple[Path, Corpus, Origin, set[str]]) -> None:  # noqa: F811
    """The YOLO tree is built in a fresh folder and swapped in whole: links planted in
    an earlier tree (files, a labels folder, the tree itself) are dropped, never followed."""
    out, _, _, expected = wheel_download
    outside = out.parent / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    dest = out / "exported"
    tree = dest / "yolo"
    tree.mkdir(parents=True)
    (tree / "data.yaml").symlink_to(victim)
    image_id, other = sorted(expected)[0], sorted(expected)[-1]
    folder = tree / "labels" / "validation" / image_id[:3]
    folder.mkdir(parents=True)
    (folder / f"{image_id}.txt").symlink_to(victim)
    if other[:3] != image_id[:3]:
        (tree / "labels" / "validation" / other[:3]).symlink_to(outside, target_is_directory=True)
    res = run_cli("annotations", out, "--format", "yolo", "-d", dest)
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not (tree / "data.yaml").is_symlink() and (tree / "data.yaml").read_text().endswith('0: "Wheel"\n')
    for image in (image_id, other):
        label = tree / "labels" / "validation" / image[:3] / f"{image}.txt"
        assert not label.is_symlink() and not label.parent.is_symlink() and label.read_text().startswith("0 ")

    # The tree itself a link to a folder outside: replaced, nothing written there.
    import shutil

    shutil.rmtree(tree)
    tree.symlink_to(outside, target_is_directory=True)
    res = run_cli("annotations", out, "--format", "yolo", "-d", dest)
    assert res.returncode == 0, res.stderr
    assert not tree.is_symlink() and (tree / "data.yaml").is_file()
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"] and victim.read_text() == "keep me"
