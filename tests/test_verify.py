"""`oidownload verify` on real downloads of the real V3 validation ids: files damaged
by hand (truncated, deleted, overwritten with another valid JPEG, a kept original with
one flipped byte) are found exactly, marked, fetched again by the next download
(counted at the origin), and verify is then clean; the same for webdataset shards."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.core.shard import Shard
from oidownload.state.journal import Journal
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Origin
from tests.conftest import V3, journal_rows, run_cli

VERIFY_DAMAGED = 6  # the documented exit code (ExitCode.DAMAGED)


def _real_ids(n: int) -> list[str]:
    with open(V3 / "validation" / "images.csv", newline="", encoding="utf-8") as f:
        return [r["ImageID"] for r in csv.DictReader(f)][:n]


def _download(tmp_path: Path, make_origin: StartOrigin, n: int, *extra: object) -> tuple[Path, Path, Origin, Corpus, list[object]]:
    corpus = Corpus.generate(0, mix="tiny", seed=41, ids=_real_ids(n), subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    cmd: list[object] = ["download", manifest, "-o", out, "--resize", "96", "--progress", "none", *extra]
    res = run_cli(*cmd)
    assert res.returncode == 0, res.stderr
    return out, manifest, origin, corpus, cmd


def _listed(stdout: str) -> dict[str, str]:
    """ImageID → kind (missing / damaged) from verify's tab-separated list."""
    found = {}
    for line in stdout.splitlines():
        kind, image_id, _where, _why = line.split("\t")
        found[image_id] = kind
    return found


def _refetched(origin: Origin, before: Counter[str]) -> Counter[str]:
    return Counter({path: n - before[path] for path, n in origin.requests.items() if n > before[path]})


def _other_jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, "JPEG")
    return buf.getvalue()


def test_verify_finds_exactly_the_damage_and_the_next_download_refetches_it(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, origin, _, cmd = _download(tmp_path, make_origin, 30, "--keep-original")
    rows = journal_rows(out)
    assert len(rows) == 30 and all(r[0] == "ok" for r in rows.values())
    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "30 images checked" in res.stderr and "30 kept originals" in res.stderr

    ids = sorted(rows)
    truncated, deleted, overwritten, flipped = ids[3], ids[7], ids[11], ids[19]
    path = {i: out / "validation" / i[:3] / f"{i}.jpg" for i in ids}
    data = path[truncated].read_bytes()
    path[truncated].write_bytes(data[: len(data) // 2])
    path[deleted].unlink()
    with Image.open(path[overwritten]) as im:
        other = (im.width + 7, im.height + 3)
    path[overwritten].write_bytes(_other_jpeg(other))
    original = out / "original" / "validation" / flipped[:3] / f"{flipped}.jpg"
    raw = bytearray(original.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    original.write_bytes(bytes(raw))

    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == VERIFY_DAMAGED, res.stderr
    assert _listed(res.stdout) == {truncated: "damaged", deleted: "missing", overwritten: "damaged", flipped: "damaged"}
    assert "1 missing, 3 damaged" in res.stderr and "4 rows marked damaged" in res.stderr
    rows = journal_rows(out)
    damaged = {i for i, r in rows.items() if r[0] == "damaged"}
    assert damaged == {truncated, deleted, overwritten, flipped}
    assert all(r[0] == "ok" for i, r in rows.items() if i not in damaged)
    assert "MD5" in rows[flipped][1] and f"is {other[0]}x{other[1]}" in rows[overwritten][1]
    counted = json.loads(run_cli("status", out, "--json").stdout)["by_status"]["damaged"]
    assert counted["count"] == 4 and counted["final"] is False

    before = Counter(origin.requests)
    res = run_cli(*cmd)
    assert res.returncode == 0, res.stderr
    assert _refetched(origin, before) == Counter({f"/o/{i}_o.jpg": 1 for i in damaged})
    assert all(r[0] == "ok" for r in journal_rows(out).values())
    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == 0 and res.stdout == "", res.stderr
    assert "30 ok, 0 missing, 0 damaged" in res.stderr


def test_no_mark_changes_nothing_and_a_running_download_is_respected(tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, _, _, _ = _download(tmp_path, make_origin, 6)
    victim = sorted(journal_rows(out))[2]
    (out / "validation" / victim[:3] / f"{victim}.jpg").unlink()
    res = run_cli("verify", out, "--no-mark", "--progress", "log", "--progress-interval", "0.001")
    assert res.returncode == VERIFY_DAMAGED and _listed(res.stdout) == {victim: "missing"}
    assert "verify: 6/6 checked, 1 missing, 0 damaged" in res.stderr  # the progress log line
    assert journal_rows(out)[victim][0] == "ok"
    # A download of the same shard holds the journal's writer lock: verify refuses, marks nothing.
    holder = Journal(out / ".oidownload", Shard(0, 1), str(out))
    try:
        res = run_cli("verify", out, "--progress", "none")
        assert res.returncode == 1 and "is writing" in res.stderr and f"pid {os.getpid()}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and journal_rows(out)[victim][0] == "ok"
        assert run_cli("verify", out, "--no-mark", "--progress", "none").returncode == VERIFY_DAMAGED
    finally:
        holder.close()
    assert run_cli("verify", out, "--progress", "none").returncode == VERIFY_DAMAGED
    assert journal_rows(out)[victim][0] == "damaged"


def test_verify_without_a_journal_says_so(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    res = run_cli("verify", tmp_path / "photos")
    assert res.returncode == 1
    assert "has no journal" in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def _index(out: Path) -> dict[str, tuple[Path, dict[str, list[int]]]]:
    """ImageID → (its shard, its members) from the shard indexes."""
    found = {}
    for idx in out.rglob("*.tar.idx.json"):
        for s in json.loads(idx.read_text())["samples"]:
            found[s["key"]] = (idx.with_name(idx.name[: -len(".idx.json")]), s["members"])
    return found


def test_verify_webdataset_shards(tmp_path: Path, make_origin: StartOrigin) -> None:
    out, _, origin, _, cmd = _download(tmp_path, make_origin, 24, "--keep-original", "--output-format", "webdataset",
                                       "--shard-size", "8")
    assert run_cli("verify", out, "--progress", "none").returncode == 0
    index = _index(out)
    assert len(index) == 24
    # Cut one shard in the middle of a sample's image: it and every later sample of
    # that shard are damaged or gone; and flip a byte in another shard's kept original.
    shard = sorted({p for p, _ in index.values()})[0]
    in_shard = sorted(((m["jpg"][0], i) for i, (p, m) in index.items() if p == shard))
    cut_at = in_shard[3][0] + 10
    with open(shard, "r+b") as f:
        f.truncate(cut_at)
    cut = {i for offset, i in in_shard if offset + index[i][1]["jpg"][1] > cut_at}
    flipped = next(i for i, (p, _) in sorted(index.items()) if p != shard)
    p, members = index[flipped]
    offset = members["original.jpg"][0] + members["original.jpg"][1] // 2
    with open(p, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))

    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == VERIFY_DAMAGED, res.stderr
    assert set(_listed(res.stdout)) == cut | {flipped} and len(cut) == 5
    before = Counter(origin.requests)
    assert run_cli(*cmd).returncode == 0
    assert _refetched(origin, before) == Counter({f"/o/{i}_o.jpg": 1 for i in cut | {flipped}})
    res = run_cli("verify", out, "--progress", "none")
    assert res.returncode == 0, res.stdout + res.stderr


def test_an_open_shard_is_read_from_its_headers(tmp_path: Path, make_origin: StartOrigin) -> None:
    """A shard whose download stopped before closing it has no index and no final name."""
    from oidownload.core.config import OutputKind
    from oidownload.sinks import open_reader
    from oidownload.sinks.tar import part_name

    out, _, _, _, _ = _download(tmp_path, make_origin, 5, "--output-format", "webdataset")
    index = _index(out)
    (shard,) = {p for p, _ in index.values()}
    shard.with_name(shard.name + ".idx.json").unlink()
    shard.rename(shard.with_name(part_name(shard.name)))
    reader = open_reader(str(out), OutputKind.WEBDATASET)
    for image_id in index:
        with Image.open(io.BytesIO(reader.read(f"validation/{shard.name}#{image_id}"))) as im:
            im.load()
            assert max(im.size) == 96
    with pytest.raises(FileNotFoundError):
        reader.read(f"validation/{shard.name}#{'f' * 16}")
    assert run_cli("verify", out, "--no-mark", "--progress", "none").returncode == 0


def test_verify_objects_in_a_bucket(tmp_path: Path, make_origin: StartOrigin, s3: Any) -> None:
    import obstore

    corpus = Corpus.generate(0, mix="tiny", seed=43, ids=_real_ids(12), subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    s3.make_bucket("out-verify")
    out = "s3://out-verify/files"
    env = dict(s3.env) | {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    cmd = ["download", manifest, "-o", out, "--resize", "96", "--keep-original", "--progress", "none"]
    assert run_cli(*cmd, env=env).returncode == 0
    assert run_cli("verify", out, "--progress", "none", env=env).returncode == 0
    store = s3.store("out-verify")
    ids = sorted(corpus.ids)
    deleted, overwritten, flipped = ids[1], ids[5], ids[9]
    obstore.delete(store, f"files/validation/{deleted[:3]}/{deleted}.jpg")
    obstore.put(store, f"files/validation/{overwritten[:3]}/{overwritten}.jpg", _other_jpeg((31, 17)))
    key = f"files/original/validation/{flipped[:3]}/{flipped}.jpg"
    raw = bytearray(bytes(obstore.get(store, key).bytes()))
    raw[100] ^= 0x01
    obstore.put(store, key, bytes(raw))

    res = run_cli("verify", out, "--progress", "none", env=env)
    assert res.returncode == VERIFY_DAMAGED, res.stderr
    assert _listed(res.stdout) == {deleted: "missing", overwritten: "damaged", flipped: "damaged"}
    assert "s3://out-verify/files/validation/" in res.stdout
    before = Counter(origin.requests)
    assert run_cli(*cmd, env=env).returncode == 0
    assert _refetched(origin, before) == Counter({f"/o/{i}_o.jpg": 1 for i in (deleted, overwritten, flipped)})
    res = run_cli("verify", out, "--progress", "none", env=env)
    assert res.returncode == 0 and "12 ok" in res.stderr, res.stdout + res.stderr


def test_verify_benchmark_prints_its_figures(synth_cache: Path) -> None:
    script = Path(__file__).parent.parent / "benchmarks" / "verify.py"
    res = subprocess.run([sys.executable, str(script), "--n", "30", "--runs", "1", "--thumbs", "tiny-thumbs"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["n"] == 30 and got["runs"] == 1
    assert got["median"]["images_per_s"] > 0 and got["median"]["peak_tree_rss_mb"] > 0
