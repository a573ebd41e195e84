"""`verify` and `gallery` against a hostile output or journal: a FIFO where an image
should be, a pool worker killed as the OOM killer would, another process holding a read
transaction on the journal. Each ends in time, says what it found, and marks it."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.core.errors import OutputError
from oidownload.state import journal as journal_module
from oidownload.state.journal import HeldJournals
from oidownload.testing.fixtures import StartOrigin
from tests.conftest import journal_rows, run_cli
from tests.test_verify import VERIFY_DAMAGED, _download, _listed


def test_a_fifo_at_an_images_path_is_damage_not_a_hang(tmp_path: Path, make_origin: StartOrigin) -> None:
    """The image was opened blocking, and a FIFO's open waits for a writer forever."""
    out, _, _, _, _ = _download(tmp_path, make_origin, 4)
    victim = sorted(journal_rows(out))[1]
    path = out / "validation" / victim[:3] / f"{victim}.jpg"
    path.unlink()
    os.mkfifo(path)
    res = run_cli("verify", out, "--no-mark", "--progress", "none", timeout=60)
    assert res.returncode == VERIFY_DAMAGED and _listed(res.stdout) == {victim: "damaged"}, res.stderr
    assert "not a regular file" in res.stdout and journal_rows(out)[victim][0] == "ok"
    res = run_cli("gallery", out, "--progress", "none", timeout=60)
    assert "Traceback" not in res.stderr and (out / "gallery" / "index.html").exists(), res.stderr
    res = run_cli("verify", out, "--progress", "none", timeout=60)
    assert res.returncode == VERIFY_DAMAGED and _listed(res.stdout) == {victim: "damaged"}, res.stderr
    assert journal_rows(out)[victim][0] == "damaged"


def _children(pid: int) -> list[int]:
    """The pool workers of a process: its children running the same command line."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        mine = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [int(k) for k in kids if Path(f"/proc/{k}/cmdline").read_bytes() == mine]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_verify_worker_killed_mid_check_is_replaced_and_the_check_completes(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    """As the OOM killer would: the pool broke (BrokenProcessPool traceback, nothing marked)."""
    out, _, _, _, _ = _download(tmp_path, make_origin, 30)
    ids = sorted(journal_rows(out))
    slow = ids[::3]  # big images that take the worker a while to decode (and are not the journal's)
    for image_id in slow:
        Image.new("L", (6000, 6000), 128).save(out / "validation" / image_id[:3] / f"{image_id}.jpg", "PNG")
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", "verify", str(out), "--processes", "1",
                             "--progress", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            for worker in _children(proc.pid):
                if _cpu_seconds(worker) >= 0.3:  # at work on the chunk
                    os.kill(worker, signal.SIGKILL)
                    killed = worker
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, "the worker finished before it could be killed"
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == VERIFY_DAMAGED, stderr
    assert _listed(stdout) == {i: "damaged" for i in slow}
    assert "30 images checked" in stderr
    assert f"verify: pool worker {killed} died (killed by SIGKILL)" in stderr
    rows = journal_rows(out)
    assert {i for i, r in rows.items() if r[0] == "damaged"} == set(slow)


def test_requeue_blames_only_the_job_a_dead_worker_held() -> None:
    from oidownload.engine.pool import Exited
    from oidownload.provenance.verify import VerifyResult, _requeue, _Work

    result = VerifyResult()
    items: list[tuple[str, str, int, int, int, bool, str | None]] = [
        (f"{i:016x}", f"validation/x/{i:016x}.jpg", 0, 0, 0, False, None) for i in range(3)]
    again: collections.deque[Any] = collections.deque()
    held, waiting = _Work(items[:2]), _Work(items[2:])
    death = Exited(123, -9, ("7",))
    _requeue([("7", held), ("8", waiting)], [death], again, result, str)
    assert [w.deaths for w in again] == [1, 0] and not result.problems
    again.clear()
    _requeue([("9", held)], [Exited(124, -9, ("9",))], again, result, str)  # its second death: split
    assert [(w.items, w.deaths) for w in again] == [([items[0]], 1), ([items[1]], 1)]
    single = again.popleft()
    _requeue([("10", single)], [Exited(125, -9, ("10",))], again, result, str)  # convicted
    assert [(p.image_id, p.missing) for p in result.problems] == [(items[0][0], False)]
    assert "killed the worker twice" in result.problems[0].why and "SIGKILL" in result.problems[0].why
    assert result.checked == 1


def test_verify_prints_what_it_found_before_waiting_on_a_busy_journal(tmp_path: Path, make_origin: StartOrigin) -> None:
    """It waited 30 s, said "held it for over 300s", and printed nothing it had found."""
    out, _, _, _, _ = _download(tmp_path, make_origin, 4)
    victim = sorted(journal_rows(out))[0]
    (out / "validation" / victim[:3] / f"{victim}.jpg").unlink()
    journal = next((out / ".oidownload").glob("journal-*.sqlite"))
    reader = sqlite3.connect(journal, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outcomes").fetchone()  # a read transaction, as a long `report`
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", "verify", str(out), "--progress", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed while the journal is still held
        assert first.startswith(f"missing\t{victim}\t"), first
        assert proc.poll() is None  # still waiting to mark
        time.sleep(1)
    finally:
        reader.execute("COMMIT")
        reader.close()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == VERIFY_DAMAGED, stderr
    assert "1 rows marked damaged" in stderr and journal_rows(out)[victim][0] == "damaged"


def test_marking_waits_as_long_as_its_message_says(tmp_path: Path, make_origin: StartOrigin,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _, _, _ = _download(tmp_path, make_origin, 2)
    victim = sorted(journal_rows(out))[0]
    journal = next((out / ".oidownload").glob("journal-*.sqlite"))
    reader = sqlite3.connect(journal, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outcomes").fetchone()
    monkeypatch.setattr(journal_module, "BUSY_PATIENCE", 2.0)
    held = HeldJournals(out / ".oidownload", "verify")
    started = time.monotonic()
    try:
        with pytest.raises(OutputError, match="held it for over 2s"):
            held.mark_damaged({victim: "test"})
        assert 1.5 <= time.monotonic() - started < 10  # not connect's own 30 s
    finally:
        held.close()
        reader.execute("COMMIT")
        reader.close()
    assert journal_rows(out)[victim][0] == "ok"


def test_ctrl_c_during_verify_marks_nothing_and_leaves_no_worker(tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, _, _, _ = _download(tmp_path, make_origin, 30)
    ids = sorted(journal_rows(out))
    for image_id in ids[::3]:
        Image.new("L", (6000, 6000), 128).save(out / "validation" / image_id[:3] / f"{image_id}.jpg", "PNG")
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", "verify", str(out), "--processes", "1",
                             "--progress", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        workers = [w for w in _children(proc.pid) if _cpu_seconds(w) >= 0.2]
        time.sleep(0.02)
    assert workers, "the check ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "verify interrupted; nothing was marked" in stderr, stderr
    assert "Traceback" not in stderr
    assert all(r[0] == "ok" for r in journal_rows(out).values())
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))


def _running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 of a container may never reap one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
