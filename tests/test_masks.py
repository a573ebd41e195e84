"""--masks (issue 22): masks read by Range from real-shaped zips at the local origin,
framed as their images' pixels, journaled per mask."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from oidownload.state.reader import StateDir
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Entry, Origin
from tests.conftest import run_cli

RECT = (0.2, 0.3, 0.7, 0.8)  # xmin, ymin, xmax, ymax, normalised
W, H = 240, 160  # the stored image; its masks are drawn at half that
IDS = ["0a00000000000001", "0a00000000000002", "0a00000000000003", "0a00000000000004"]
ROTATIONS = ["0.0", "90.0", "180.0", "270.0"]
LABEL = "/m/0k4j"


def shape(w: int, h: int, mode: str) -> Image.Image:
    im = Image.new(mode, (w, h), 0)
    ImageDraw.Draw(im).rectangle((RECT[0] * w, RECT[1] * h, RECT[2] * w - 1, RECT[3] * h - 1), fill="white")
    return im


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def mask_path(image_id: str, box: str) -> str:
    return f"{image_id}_m0k4j_{box}.png"


def build_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2019, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def bad_crc(data: bytes, name: str) -> bytes:
    """The zip with `name`'s CRC-32 in the central directory changed."""
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        nlen = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + nlen] == name.encode():
            crc = int.from_bytes(data[at + 16:at + 20], "little") ^ 0xFFFF
            return data[:at + 16] + crc.to_bytes(4, "little") + data[at + 20:]
        at += 46


def setup(tmp_path: Path, make_origin: StartOrigin, *, extra_rows: int = 0, crc_broken: bool = False,
          padding: int = 0) -> tuple[Origin, Path, Path, bytes, dict[str, bytes]]:
    # `padding`: random bytes after the PNG's end (decoders stop at IEND), for large bodies.
    stored = png(shape(W, H, "RGB")) + np.random.default_rng(1).bytes(padding)
    corpus = Corpus([stored], [png(shape(W // 2, H // 2, "RGB"))])
    for image_id, rot in zip(IDS, ROTATIONS, strict=True):
        corpus.entries[image_id] = Entry(image_id, 0, 0, rotation=rot)
    members = {mask_path(i, "aa01"): png(shape(W // 2, H // 2, "L")) for i in IDS}
    # Neighbours in the zip that nobody asked for: never fetched.
    rng = np.random.default_rng(0)
    members.update({f"0b{k:014x}_m0k4j_ff{k:02x}.png": png(Image.fromarray(rng.random((60, 60)) > 0.5))
                    for k in range(400)})
    data = build_zip(members)
    if crc_broken:
        data = bad_crc(data, mask_path(IDS[1], "aa01"))
    origin = make_origin(corpus, extra_files={"train-masks/train-masks-0.zip": data})
    images = corpus.write_manifest(tmp_path / "images.csv", origin.base_url, rotation_column=True)
    seg = tmp_path / "train-annotations-object-segmentation.csv"
    with open(seg, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
                    "PredictedIoU", "Clicks"])
        for i in IDS:
            w.writerow([mask_path(i, "aa01"), i, LABEL, "aa01", RECT[0], RECT[2], RECT[1], RECT[3], "0.9", "0.3 0.4 1"])
        if extra_rows:  # a mask its zip does not hold
            w.writerow([mask_path(IDS[0], "bb02"), IDS[0], LABEL, "bb02", 0.1, 0.2, 0.1, 0.2, "", ""])
    return origin, images, seg, data, members


def expected(side: int, rotation: str) -> np.ndarray:
    """The rectangle after the fill crop (centre square), the resize and the turn."""
    x0 = (W - H) / 2
    a = np.zeros((side, side), bool)
    u0, u1 = (RECT[0] * W - x0) / H * side, (RECT[2] * W - x0) / H * side
    v0, v1 = RECT[1] * side, RECT[3] * side
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    a[(xs >= u0) & (xs < u1) & (ys >= v0) & (ys < v1)] = True
    return np.rot90(a, int(float(rotation)) // 90)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def download(tmp_path: Path, images: Path, seg: Path, origin: Origin,
             *extra: object, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run_cli("download", images, "-o", tmp_path / "out", "--annotations", seg, "--class", LABEL, "--masks",
                   "--masks-url", f"{origin.base_url}/files", "--orientation", "upright", "--resize", 60,
                   "--resize-mode", "fill", "--format", "png", "--processes", 1, "--progress", "none", *extra,
                   timeout=timeout)


def test_masks_follow_the_pixels_and_only_the_members_asked_for_are_fetched(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, data, _members = setup(tmp_path, make_origin, extra_rows=1)
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    written = {m.image_id: m for m in StateDir.open(str(out)).masks()}
    assert sorted(written) == IDS
    for image_id, rot in zip(IDS, ROTATIONS, strict=True):
        m = written[image_id]
        assert m.location == f"masks/train/0a0/{image_id}_aa01.png" and (m.width, m.height) == (60, 60)
        got = Image.open(out / m.location)
        assert got.mode == "1" and got.size == (60, 60)
        mask = np.asarray(got.convert("L")) > 127
        assert iou(mask, expected(60, rot)) >= 0.98, rot
        pixels = np.asarray(Image.open(out / "train" / "0a0" / f"{image_id}.png").convert("L")) > 127
        assert iou(mask, pixels) >= 0.9, rot  # the shape drawn in the image itself
    v = run_cli("verify", out)
    assert v.returncode == 0, v.stdout + v.stderr
    # The missing member is a per-mask status; its image stays ok.
    conn = sqlite3.connect(next((out / ".oidownload").glob("journal-*.sqlite")))
    rows = dict(conn.execute("SELECT box_id, status FROM masks WHERE box_id='bb02'"))
    assert rows == {"bb02": "mask_missing"}
    assert conn.execute("SELECT count(*) FROM outcomes WHERE status='ok'").fetchone()[0] == 4
    # Bytes at the server: the directory + the 4 members + slack, not the 40 neighbours.
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        sizes = sum(zf.getinfo(mask_path(i, "aa01")).compress_size + 30 + 40 for i in IDS)
    sent = origin.bytes_sent["/files/train-masks/train-masks-0.zip"]
    # The first request is a 64 KB suffix (the directory and whatever precedes it in those bytes).
    assert sent <= max(65536, len(data) - zf_cd_start(data)) + sizes + 16 * 1024 * 4
    assert sent < len(data) / 2
    # A rerun fetches nothing again.
    origin.bytes_sent.clear()
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    assert origin.bytes_sent["/files/train-masks/train-masks-0.zip"] == 0


def test_masks_never_wait_for_bytes_the_images_hold(tmp_path: Path, make_origin: StartOrigin) -> None:
    """A body holds its share of the byte budget until its masks come. Bodies of 600 KB
    against a budget of 1 MB: the first is held, the second waits for bytes, and a mask
    read waiting on that same budget would wait behind it for ever (a run of 10,000
    originals with --masks hung so). Here every image and mask ends ok, in seconds."""
    origin, images, seg, _, _ = setup(tmp_path, make_origin, padding=600_000)
    r = download(tmp_path, images, seg, origin, "--max-bytes-in-flight-mb", 1, timeout=90)
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(next((tmp_path / "out" / ".oidownload").glob("journal-*.sqlite")))
    assert conn.execute("SELECT status, count(*) FROM outcomes GROUP BY status").fetchall() == [("ok", 4)]
    assert conn.execute("SELECT status, count(*) FROM masks GROUP BY status").fetchall() == [("ok", 4)]


def zf_cd_start(data: bytes) -> int:
    eocd = data.rindex(b"PK\x05\x06")
    return int.from_bytes(data[eocd + 16:eocd + 20], "little")


def test_a_wrong_crc_is_that_masks_status(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _, _ = setup(tmp_path, make_origin, crc_broken=True)
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(next((tmp_path / "out" / ".oidownload").glob("journal-*.sqlite")))
    statuses = {int_id: s for int_id, s in conn.execute("SELECT id, status FROM masks")}
    assert sorted(statuses.values()) == ["mask_crc", "ok", "ok", "ok"]
    assert conn.execute("SELECT count(*) FROM outcomes WHERE status='ok'").fetchone()[0] == 4


def test_a_server_that_ignores_range_is_refused_at_once(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _data, _ = setup(tmp_path, make_origin)
    origin.ignore_range = True
    r = download(tmp_path, images, seg, origin)
    assert r.returncode != 0
    assert "ignored the Range request" in r.stderr
    # (how little of the body is read is test_zipranges' test: a local socket buffers 300 KB whole)


def test_webdataset_samples_carry_their_masks(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _, _ = setup(tmp_path, make_origin)
    r = download(tmp_path, images, seg, origin, "--output-format", "webdataset")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    tars = list(out.rglob("*.tar"))
    names = []
    for t in tars:
        with tarfile.open(t) as tf:
            names += tf.getnames()
    for i in IDS:
        assert f"{i}.aa01.mask.png" in names and f"{i}.png" in names
    idx = [json.loads(p.read_text()) for p in out.rglob("*.idx.json")]
    assert any("aa01.mask.png" in s["members"] for x in idx for s in x["samples"])
    locations = [m.location for m in StateDir.open(str(out)).masks()]
    assert all(loc.endswith(".aa01.mask.png") and ".tar#" in loc for loc in locations)
    v = run_cli("verify", out)  # mask members are no images of their own
    assert v.returncode == 0, v.stdout + v.stderr


def test_select_takes_segmentation_csvs(tmp_path: Path, make_origin: StartOrigin) -> None:
    _origin, images, seg, _, _ = setup(tmp_path, make_origin)
    dest = tmp_path / "sel.csv"
    r = run_cli("select", images, "-o", dest, "--annotations", seg, "--class", LABEL)
    assert r.returncode == 0, r.stderr
    assert len(dest.read_text().splitlines()) == 1 + len(IDS)


def test_db_load_fills_the_masks_table_and_select_db_agrees(tmp_path: Path, make_origin: StartOrigin) -> None:
    _origin, images, seg, _, _ = setup(tmp_path, make_origin, extra_rows=1)
    db = tmp_path / "oi.sqlite"
    r = run_cli("db", "load", seg, "--db", db)
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM masks").fetchone()[0] == 5
    assert conn.execute("SELECT mask_path, box_id, predicted_iou, clicks FROM masks ORDER BY rowid LIMIT 1").fetchone() \
        == (mask_path(IDS[0], "aa01"), "aa01", 0.9, "0.3 0.4 1")
    dest = tmp_path / "sel.csv"
    r = run_cli("select", images, "-o", dest, "--db", db, "--class", LABEL)
    assert r.returncode == 0, r.stderr
    assert len(dest.read_text().splitlines()) == 1 + len(IDS)


def journal_masks(out: Path) -> dict[tuple[int, str], str]:
    found = list((out / ".oidownload").glob("journal-*.sqlite"))
    if not found:
        return {}
    conn = sqlite3.connect(found[0])
    try:
        return {(int(i), str(b)): str(s) for i, b, s in conn.execute("SELECT id, box_id, status FROM masks")}
    finally:
        conn.close()


def test_a_rerun_with_masks_fetches_only_the_masks_of_images_already_written(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _, _ = setup(tmp_path, make_origin)
    common = ("--orientation", "upright", "--resize", 60, "--resize-mode", "fill", "--format", "png",
              "--processes", 1, "--progress", "none")
    r = run_cli("download", images, "-o", tmp_path / "out", *common)
    assert r.returncode == 0, r.stderr
    before = sum(origin.requests[f"/o/{i}_o.jpg"] for i in IDS)
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    assert sum(origin.requests[f"/o/{i}_o.jpg"] for i in IDS) == before  # no image fetched again
    written = {m.image_id: m for m in StateDir.open(str(tmp_path / "out")).masks()}
    assert sorted(written) == IDS
    for image_id, rot in zip(IDS, ROTATIONS, strict=True):
        mask = np.asarray(Image.open(tmp_path / "out" / written[image_id].location).convert("L")) > 127
        assert iou(mask, expected(60, rot)) >= 0.98, rot
    # And a third run has nothing left to fetch.
    origin.bytes_sent.clear()
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    assert not origin.bytes_sent


def test_a_zip_changed_between_runs_has_its_directory_read_again(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _data, members = setup(tmp_path, make_origin)
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    # The zip is republished with one more mask (another ETag, members moved); the CSV gains its row.
    new = png(shape(30, 20, "L"))
    origin.extra_files["train-masks/train-masks-0.zip"] = build_zip({mask_path(IDS[2], "cc03"): new, **members})
    with open(seg, "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow([mask_path(IDS[2], "cc03"), IDS[2], LABEL, "cc03", 0, 1, 0, 1, "", ""])
    origin.ranges_sent.clear()
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    statuses = journal_masks(tmp_path / "out")
    assert sorted(statuses.values()) == ["ok"] * 5
    got = Image.open(tmp_path / "out" / "masks" / "train" / "0a0" / f"{IDS[2]}_cc03.png")
    assert got.size == (60, 60) and np.asarray(got.convert("L")).max() == 255
    # One member request: the other masks were not fetched again.
    sent = origin.ranges_sent["/files/train-masks/train-masks-0.zip"]
    size = len(origin.extra_files["train-masks/train-masks-0.zip"])
    assert len([r for r in sent if r[1] < size]) == 1


def test_a_truncated_zip_is_one_clear_message(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, data, _ = setup(tmp_path, make_origin)
    origin.extra_files["train-masks/train-masks-0.zip"] = data[: len(data) // 2]
    r = download(tmp_path, images, seg, origin)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not a zip" in r.stderr


def test_masks_from_a_local_folder_of_zips_or_of_pngs(tmp_path: Path, make_origin: StartOrigin) -> None:
    _origin, images, seg, data, members = setup(tmp_path, make_origin)
    zips = tmp_path / "zips"
    (zips / "train-masks").mkdir(parents=True)
    (zips / "train-masks" / "train-masks-0.zip").write_bytes(data)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name, body in members.items():
        (pngs / name).write_bytes(body)
    for folder, out in ((zips, "out-zips"), (pngs, "out-pngs")):
        r = run_cli("download", images, "-o", tmp_path / out, "--annotations", seg, "--class", LABEL, "--masks",
                    "--masks-url", folder, "--orientation", "upright", "--resize", 60, "--resize-mode", "fill",
                    "--format", "png", "--processes", 1, "--progress", "none", "--keep-original")
        assert r.returncode == 0, r.stderr
        written = {m.image_id: m for m in StateDir.open(str(tmp_path / out)).masks()}
        assert sorted(written) == IDS, out
        for image_id in IDS:
            kept = tmp_path / out / "original" / "masks" / "train" / "0a0" / f"{image_id}_aa01.png"
            assert kept.read_bytes() == members[mask_path(image_id, "aa01")]  # byte-identical, as fetched


def test_sigkill_mid_run_then_rerun_fetches_no_mask_twice(tmp_path: Path, make_origin: StartOrigin) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    from oidownload.testing.origin import Latency

    corpus = Corpus.generate(240, mix="tiny", seed=31)
    rng = np.random.default_rng(1)
    zips: dict[str, dict[str, bytes]] = {}
    rows = []
    for image_id in corpus.ids:
        name = mask_path(image_id, "ab12")
        zips.setdefault(image_id[0], {})[name] = png(Image.fromarray(rng.random((40, 30)) > 0.5))
        # Apart by more than zipranges.MAX_GAP: no read of another image's masks covers this one.
        zips[image_id[0]][f"{image_id}_zz.bin"] = rng.bytes(20_000)
        rows.append([name, image_id, LABEL, "ab12", 0.1, 0.9, 0.1, 0.9, "", ""])
    # A filler last, so that no mask lies in the first, 64 KB suffix request: each needs a request of its own.
    filler = {"zz_filler.bin": rng.bytes(70_000)}
    files = {f"train-masks/train-masks-{d}.zip": build_zip({**m, **filler}) for d, m in zips.items()}
    origin = make_origin(corpus, latency=Latency(0.1, 0.5), extra_files=files)
    images = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    seg = tmp_path / "seg.csv"
    with open(seg, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
                    "PredictedIoU", "Clicks"])
        w.writerows(rows)
    out = tmp_path / "out"
    args = ("download", images, "-o", out, "--annotations", seg, "--class", LABEL, "--masks", "--masks-url",
            f"{origin.base_url}/files", "--concurrency", 4, "--resize", 40, "--progress", "none")
    where: dict[str, tuple[str, int]] = {}  # image id → (zip path, its member's local header offset)
    for path, data in files.items():
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".png"):
                    where[info.filename.split("_")[0]] = (f"/files/{path}", info.header_offset)

    def fetched(image_id: str) -> int:
        path, at = where[image_id]
        size = len(files[path.removeprefix("/files/")])
        return sum(1 for s, e in origin.ranges_sent[path] if s <= at < e and e < size)

    seen: dict[str, int] = {}
    kills = 0
    pick = random.Random(3)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "oidownload", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(pick.uniform(1.5, 3.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        time.sleep(0.5)
        for (rid, _), status in journal_masks(out).items():
            assert status == "ok"
            seen.setdefault(f"{rid & (2**64 - 1):016x}", -1)
        for image_id in list(seen):
            if seen[image_id] < 0:
                seen[image_id] = fetched(image_id)
    assert kills >= 3 and seen
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(journal_masks(out).values()) == ["ok"] * 240
    for image_id, n in seen.items():
        # Never again once journaled (a kill between its fetch and its journaling costs one more).
        assert fetched(image_id) == n >= 1, image_id
    for image_id in corpus.ids:
        assert (out / "masks" / "train" / image_id[:3] / f"{image_id}_ab12.png").is_file()


def test_status_and_the_summary_count_masks(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _, _ = setup(tmp_path, make_origin, extra_rows=1)
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    assert "masks: 1 mask_missing, 4 ok" in r.stderr
    st = run_cli("status", tmp_path / "out", "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["masks"] == {"mask_missing": 1, "ok": 4}
    st = run_cli("status", tmp_path / "out")
    assert "masks: 1 mask_missing, 4 ok" in st.stdout


def test_postgresql_masks_table_selection_and_download(tmp_path: Path, make_origin: StartOrigin, pg_url: str) -> None:
    import psycopg

    origin, images, seg, _, _ = setup(tmp_path, make_origin, extra_rows=1)
    r = run_cli("db", "load", seg, "--db", pg_url)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM masks").fetchone() == (5,)
    dest = tmp_path / "sel.csv"
    r = run_cli("select", images, "-o", dest, "--db", pg_url, "--class", LABEL)
    assert r.returncode == 0, r.stderr
    assert len(dest.read_text().splitlines()) == 1 + len(IDS)
    # --db gives the masks of the selection as the CSVs do.
    r = run_cli("download", images, "-o", tmp_path / "out", "--db", pg_url, "--class", LABEL, "--masks",
                "--masks-url", f"{origin.base_url}/files", "--progress", "none", "--processes", 1)
    assert r.returncode == 0, r.stderr
    assert sorted(journal_masks(tmp_path / "out").values()) == ["mask_missing", "ok", "ok", "ok", "ok"]


def test_gzipped_segmentation_csv_and_a_bad_row_loaded_as_bad(tmp_path: Path, make_origin: StartOrigin) -> None:
    import gzip

    _origin, images, seg, _, _ = setup(tmp_path, make_origin)
    with open(seg, "a", newline="") as f:
        f.write(f"{mask_path(IDS[0], 'dd04')},{IDS[0]},{LABEL},dd04,abc,0.5,0.1,0.2,,\n")  # BoxXMin is no number
    gz = tmp_path / "train-annotations-object-segmentation.csv.gz"
    gz.write_bytes(gzip.compress(seg.read_bytes()))
    dest = tmp_path / "sel.csv"
    r = run_cli("select", images, "-o", dest, "--annotations", gz, "--class", LABEL)
    assert r.returncode == 0, r.stderr
    assert len(dest.read_text().splitlines()) == 1 + len(IDS)
    db = tmp_path / "oi.sqlite"
    r = run_cli("db", "load", gz, "--db", db)
    assert r.returncode == 0, r.stderr
    assert "4 rows, 1 bad" in r.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM masks").fetchone()[0] == 4


def test_an_old_journal_gains_the_masks_table(tmp_path: Path) -> None:
    from oidownload.core.records import MaskOutcome, Outcome, Status
    from oidownload.core.shard import Shard
    from oidownload.state.journal import SCHEMA_VERSION, Journal

    out = tmp_path / "out"
    state = out / ".oidownload"
    j = Journal(state, Shard(), str(out))
    j.record([Outcome(IDS[0], Status.OK, subset="train", ext="png", location=f"train/0a0/{IDS[0]}.png")])
    j.close()
    path = next(state.glob("journal-*.sqlite"))
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE masks")  # as schema 2 had it
    conn.execute("UPDATE meta SET value='2' WHERE key='schema'")
    conn.commit()
    conn.close()
    assert list(StateDir.open(str(out)).masks()) == []  # read as it is: no masks
    j = Journal(state, Shard(), str(out))
    j.record([Outcome(IDS[1], Status.OK, subset="train", ext="png", location=f"train/0a0/{IDS[1]}.png",
                      masks=(MaskOutcome("aa01", LABEL, Status.OK, width=8, height=8),
                             MaskOutcome("bb02", LABEL, Status.MASK_MISSING, "not in the zip")))])
    j.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION) == "3"
    conn.close()
    assert [(m.image_id, m.box_id, m.location, m.width) for m in StateDir.open(str(out)).masks()] == \
        [(IDS[1], "aa01", f"masks/train/0a0/{IDS[1]}_aa01.png", 8)]


def test_a_missing_zip_is_asked_for_once_and_its_masks_are_missing(tmp_path: Path, make_origin: StartOrigin) -> None:
    origin, images, seg, _, _ = setup(tmp_path, make_origin)
    del origin.extra_files["train-masks/train-masks-0.zip"]
    r = download(tmp_path, images, seg, origin)
    assert r.returncode == 0, r.stderr
    assert sorted(journal_masks(tmp_path / "out").values()) == ["mask_missing"] * 4
    assert origin.requests["/files/train-masks/train-masks-0.zip"] == 1
    conn = sqlite3.connect(next((tmp_path / "out" / ".oidownload").glob("journal-*.sqlite")))
    assert conn.execute("SELECT count(*) FROM outcomes WHERE status='ok'").fetchone()[0] == 4


def test_the_default_masks_url_is_the_official_one() -> None:
    from oidownload.core.options import default
    from oidownload.dataset.releases import MASKS_URL

    assert default("masks_url") == MASKS_URL  # core cannot import the dataset layer: kept equal here
