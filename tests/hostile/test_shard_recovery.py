"""Webdataset shards changed behind the journal's back between runs: the open part cut
short, deleted or garbled; a planted shard whose index claims rows; an index that is
not JSON or names bad keys; a second copy of the same task writing into the same OUT
with a state dir of its own. Recovery keeps what it can prove, fetches the rest again,
never crashes and never leaves a tar that readers stop reading early."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency, Origin
from tests.conftest import journal_rows, run_cli

WDS = ("--output-format", "webdataset", "--shard-size", "1000", "--resize", "48", "--progress", "none")


def _open_offset(out: Path) -> int:
    """The journaled length of the open shard (0 when none yet)."""
    for path in (out / ".oidownload").glob("journal-*.sqlite"):
        conn = sqlite3.connect(path)
        try:
            for (value,) in conn.execute("SELECT value FROM sink_state WHERE key LIKE 'tar:%'"):
                return int(json.loads(value).get("offset", 0))
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    return 0


def _kill_with_open_part(out: Path, manifest: Path, at_least: int) -> Path:
    """A webdataset run SIGKILLed once `at_least` samples are journaled in its open part."""
    proc = subprocess.Popen([sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out), *WDS,
                             "--concurrency", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                ok = sum(1 for s, _, _ in journal_rows(out).values() if s == "ok")
                if ok >= at_least and _open_offset(out) > 0:
                    break
            except sqlite3.Error:
                pass
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    parts = list(out.rglob(".*.tar.part"))
    assert len(parts) == 1, parts
    return parts[0]


def _check_tar(out: Path, expected: set[str]) -> None:
    """Every expected sample once in the final tars, read to the end by tarfile and
    webdataset, and each index agreeing with its tar."""
    import webdataset as wds

    seen: Counter[str] = Counter()
    tars = sorted(out.rglob("*.tar"))
    assert tars and not list(out.rglob("*.part"))
    for tar in tars:
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
        keys = {name.split(".", 1)[0] for name in members}
        seen.update(keys)
        index = json.loads(tar.with_name(tar.name + ".idx.json").read_text())
        assert {s["key"] for s in index["samples"]} == keys
        for s in index["samples"]:
            for suffix, (offset, size) in s["members"].items():
                m = members[f"{s['key']}.{suffix}"]
                assert (m.offset_data, m.size) == (offset, size)
    assert set(seen) == expected and set(seen.values()) == {1}, {k: n for k, n in seen.items() if n != 1}
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(expected)


def _garble_a_header(part: Path) -> None:
    """512 bytes of garbage over the header of a member in the part's first half."""
    headers = []
    with open(part, "rb") as f:
        pos = 0
        while True:
            f.seek(pos)
            head = f.read(512)
            if len(head) < 512:
                break
            info = tarfile.TarInfo.frombuf(head, "utf-8", "strict")
            headers.append(pos)
            pos += 512 + info.size + (-info.size % 512)
    with open(part, "r+b") as f:
        f.seek(headers[len(headers) // 3])
        f.write(os.urandom(512))


def test_open_part_cut_deleted_or_garbled_is_recovered(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(60, mix="tiny", seed=281)
    origin = make_origin(corpus, latency=Latency(0.15))  # 4.5 s at least: the kill comes well before the end
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    killed = tmp_path / "killed"
    part = _kill_with_open_part(killed, manifest, 12)
    damage: dict[str, Callable[[Path], None]] = {
        "cut": lambda p: os.truncate(p, p.stat().st_size // 2),
        "deleted": lambda p: p.unlink(),
        "garbled": _garble_a_header,
    }
    for what, spoil in damage.items():
        out = tmp_path / what
        shutil.copytree(killed, out)
        spoil(out / part.relative_to(killed))
        res = run_cli("download", manifest, "-o", out, *WDS)
        assert res.returncode == 0, (what, res.stderr[-3000:])
        assert "Traceback" not in res.stderr
        assert part.name in res.stderr and "fetched again" in res.stderr, (what, res.stderr)
        rows = journal_rows(out)
        assert set(rows) == set(corpus.ids) and {s for s, _, _ in rows.values()} == {"ok"}, what
        _check_tar(out, set(corpus.ids))


def _plant_shard(folder: Path, name: str, samples: dict[str, bytes], index_keys: list[str]) -> None:
    """A closed shard that holds `samples` (key → image bytes) and an index beside it
    that names `index_keys`: the members of the keys it holds where they are, made-up
    offsets for the others."""
    with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, data in samples.items():
            for suffix, body in (("jpg", data), ("json", json.dumps({"ImageID": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    with tarfile.open(folder / name) as tf:
        members = {m.name: [m.offset_data, m.size] for m in tf.getmembers()}
    entries = [{"key": k, "members": {"jpg": members.get(f"{k}.jpg", [512, 100]), "json": members.get(f"{k}.json", [1024, 10])},
                "width": 48, "height": 48, "ext": "jpg", "source": "original", "verified": True, "out_bytes": 100,
                "orientation": 1, "crop": None} for k in index_keys]
    (folder / f"{name}.idx.json").write_text(json.dumps(
        {"kind": "oidownload-tar-index-v1", "shard": name, "subset": folder.name, "size": 0, "samples": entries}))


def _fetched(origin: Origin, before: Counter[str]) -> set[str]:
    return {p.split("/")[-1].split("_")[0] for p, n in origin.requests.items() if n > before.get(p, 0)}


def test_a_shard_is_adopted_only_for_what_its_tar_holds(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(30, mix="tiny", seed=282)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    first = run_cli("download", manifest, "-o", out, *WDS, "--limit", "10")
    assert first.returncode == 0, first.stderr
    done = set(journal_rows(out))
    rest = sorted(set(corpus.ids) - done)
    folder = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    # A planted shard holding one of the rows not yet fetched, with an index naming all 20.
    _plant_shard(folder, "00000-00099.tar", {rest[0]: b"\xff\xd8 not much of a JPEG"}, rest)
    before = Counter(origin.requests)
    res = run_cli("download", manifest, "-o", out, *WDS)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "00000-00099.tar.idx.json" in res.stderr and "fetched again" in res.stderr, res.stderr
    assert _fetched(origin, before) == set(rest[1:])
    rows = journal_rows(out)
    assert {s for s, _, _ in rows.values()} == {"ok"} and set(rows) == set(corpus.ids)

    # The state dir lost: an index that is not JSON, and one with keys that are no ImageIDs.
    shutil.rmtree(out / ".oidownload")
    first_shard = f"{folder.name}-00000-00000.tar"  # the split is in a shard's name
    (folder / f"{first_shard}.idx.json").write_text("{ not json")
    newest = max(folder.glob(f"{folder.name}-00000-001*.tar.idx.json"))
    index = json.loads(newest.read_text())
    spoiled = [s["key"] for s in index["samples"][:3]]
    for s, bad in zip(index["samples"][:3], ["../../etc/passwd", "not-hex", ""], strict=True):
        s["key"] = bad
    newest.write_text(json.dumps(index))
    before = Counter(origin.requests)
    res = run_cli("download", manifest, "-o", out, *WDS)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"{first_shard}.idx.json is not a shard index" in res.stderr and newest.name in res.stderr, res.stderr
    assert _fetched(origin, before) == done | set(spoiled)
    rows = journal_rows(out)
    assert {s for s, _, _ in rows.values()} == {"ok"} and set(rows) == set(corpus.ids)
    shard_list = json.loads((folder / "shards.json").read_text())
    assert first_shard not in {s["url"] for s in shard_list["shardlist"]}


def test_a_second_copy_of_the_task_with_its_own_state_dir_is_refused(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(50, mix="tiny", seed=283)
    origin = make_origin(corpus, latency=Latency(0.2))  # the first copy runs for 5 s at least
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "oidownload", "download", str(manifest), "-o", str(out), *WDS,
                              "--concurrency", "2", "--state-dir", str(tmp_path / "state-a")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob(".*.tar.part")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first copy ended too soon"
        second = run_cli("download", manifest, "-o", out, *WDS, "--state-dir", tmp_path / "state-b")
        assert second.returncode == 1, second.stderr
        assert "another oidownload process" in second.stderr and "Traceback" not in second.stderr, second.stderr
        assert not list((tmp_path / "state-b").rglob("running-*"))
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # The second copy asked for nothing and touched no shard: the first's output is whole.
    assert sorted(origin.requests.values()) == [1] * len(corpus.ids)
    _check_tar(out, set(corpus.ids))
