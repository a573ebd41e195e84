"""The output seam with the `files` output: the journal apart from OUT, locations in the
journal, a lost journal rebuilt from the files, and no write or delete through a
symlink planted inside OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, run_cli


def _locations(state: Path) -> dict[str, str]:
    return {i: r.location or "" for i, r in journals.outcomes(state).items() if r.status == "ok"}


def test_state_dir_apart_and_a_lost_journal_is_rebuilt(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=91)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out, state = tmp_path / "out", tmp_path / "state"
    args = ("download", manifest, "-o", out, "--state-dir", state, "--resize", "64")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert not (out / ".oidownload").exists() and list(state.glob("journal-*.sqlite"))
    assert f"state: {state}" in first.stderr
    locations = _locations(state)
    assert set(locations) == set(corpus.ids)
    for image_id, loc in locations.items():
        assert loc == f"train/{image_id[:3]}/{image_id}.jpg"
        with Image.open(out / loc) as im:
            assert max(im.size) <= 64

    status = run_cli("status", out, "--state-dir", state, "--json")
    assert status.returncode == 0 and '"total": 40' in status.stdout
    assert run_cli("status", out).returncode == 1  # its journal is not in OUT: said, not guessed
    report = run_cli("report", out, "--state-dir", state)
    assert report.returncode == 0, report.stderr
    assert (out / "report" / "success.csv").read_text().count("\n") == 41

    before = sum(origin.requests.values())
    shutil.rmtree(state)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert sum(origin.requests.values()) == before  # rebuilt from the files: nothing fetched again
    assert "found 40 image(s) already in" in again.stderr
    rows = journal_rows_in(state)
    assert len(rows) == 40 and all(s == "ok" for s in rows.values())
    assert _locations(state) == locations


def journal_rows_in(state: Path) -> dict[str, str]:
    return journals.statuses(state)


@pytest.mark.parametrize("fmt", ["jpeg", "keep"])
def test_symlinks_inside_out_are_never_followed(tmp_path: Path, make_origin: StartOrigin, fmt: str) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=92)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("keep me")
    linked_dir_id, linked_file_id = corpus.ids[0], corpus.ids[1]
    # A symlinked shard folder, a symlink at a final name, and (with a crash marker) a
    # symlink named like one of our temporary files: none may lead outside OUT.
    (out / "train").mkdir(parents=True)
    (out / "train" / linked_dir_id[:3]).symlink_to(outside, target_is_directory=True)
    folder = out / "train" / linked_file_id[:3]
    folder.mkdir(exist_ok=True)
    (folder / f"{linked_file_id}.jpg").symlink_to(victim)
    tmp_link = folder / f".{linked_file_id}.jpg.0123456789ab.oidtmp"
    tmp_link.symlink_to(victim)
    (out / ".oidownload").mkdir()
    (out / ".oidownload" / "running-0-of-1").touch()

    res = run_cli("download", manifest, "-o", out, "--format", fmt)
    assert res.returncode == 5, res.stderr  # the refused symlink is a write_error, retryable
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert tmp_link.is_symlink()  # not ours to remove: only regular files are
    rows = journal_rows(out)
    assert rows[linked_dir_id][0] == "write_error" and "symlink" in rows[linked_dir_id][1]
    final = folder / f"{linked_file_id}.jpg"
    assert rows[linked_file_id][0] == "ok" and final.is_file() and not final.is_symlink()
    assert all(rows[i][0] == "ok" for i in corpus.ids[2:])


def test_a_mask_member_has_its_own_folder_and_no_box_id_can_leave_it() -> None:
    from oidownload.sinks.files import mask_suffix, member_path

    assert member_path("validation", "0a1b2c3d4e5f6789", mask_suffix("9a041d52")) == (
        ("masks", "validation", "0a1"), "0a1b2c3d4e5f6789_9a041d52.png")
    for bad in ("../x", "9A04", "", "a/b", "x" * 40):
        with pytest.raises(ValueError):
            mask_suffix(bad)
