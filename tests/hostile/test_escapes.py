"""Issue 15 item 3, as it was found: symlinks planted inside OUT by someone who may
write there (a group-writable OUT on a shared filesystem) must not let a download
overwrite, or a crash recovery delete, anything outside OUT."""

from __future__ import annotations

from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, run_cli


def _next_pids(n: int) -> list[int]:
    """The next n process ids the kernel will hand out (other processes may take some)."""
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    pids: list[int] = []
    pid = last
    while len(pids) < n:
        pid = pid + 1 if pid + 1 < top else 300  # the kernel wraps to 300
        pids.append(pid)
    return pids


def test_a_link_at_every_guessable_temporary_name_is_not_written_through(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(12, mix="tiny", seed=153)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    target = corpus.ids[5]
    folder = out / "train" / target[:3]
    folder.mkdir(parents=True)
    # A temporary name made of the final name and the writer's pid can be planted in
    # advance for every pid the download may get.
    for pid in _next_pids(3000):
        (folder / f".{target}.jpg.{pid}.oidtmp").symlink_to(victim)
    res = run_cli("download", manifest, "-o", out, "--format", "keep")
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "keep me"
    assert (folder / f"{target}.jpg").read_bytes() == corpus.original(target)
    assert all(status == "ok" for status, _, _ in journal_rows(out).values())


def test_crash_recovery_does_not_delete_through_a_linked_folder(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(12, mix="tiny", seed=154)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    target = corpus.ids[2]
    # Someone else's file that looks like one of our leftovers, in a folder that a
    # symlink inside OUT leads to; and our own leftover, which recovery does remove.
    theirs = outside / f".{target}.jpg.4242.oidtmp"
    theirs.write_bytes(b"not yours")
    (out / "train").mkdir(parents=True)
    (out / "train" / target[:3]).symlink_to(outside, target_is_directory=True)
    mine_id = next(i for i in corpus.ids if i[:3] != target[:3])
    (out / "train" / mine_id[:3]).mkdir()
    ours = out / "train" / mine_id[:3] / f".{mine_id}.jpg.4242.oidtmp"
    ours.write_bytes(b"half an image")
    (out / ".oidownload").mkdir()
    (out / ".oidownload" / "running-0-of-1").touch()  # the last run crashed
    res = run_cli("download", manifest, "-o", out, "--format", "keep")
    assert res.returncode == 5, res.stderr  # incomplete: the image under the linked folder (write_error)
    assert theirs.read_bytes() == b"not yours"
    assert not ours.exists()
    rows = journal_rows(out)
    assert rows[target][0] == "write_error" and "symlink" in rows[target][1]
