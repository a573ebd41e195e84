"""Wave 3's wrong results, each on a real download: a run remembers what it promised,
exports keep every row, shards name their split, counts are per ImageID.

Expected values are computed here by an independent reading of the fixture files."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from oidownload.inputs.rows import V3_COLUMNS
from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import V3, journal_rows, run_cli, v3_archive

BOXES = [V3 / "train" / "annotations-human-bbox.csv", V3 / "validation" / "annotations-human-bbox.csv"]
DESCRIPTIONS = V3 / "class-descriptions.csv"


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Served:
    """Real V3 rows of both splits, served by a local origin."""

    def __init__(self, tmp: Path, origin: Origin, corpus: Corpus, real: list[dict[str, str]]) -> None:
        self.tmp, self.origin, self.corpus = tmp, origin, corpus
        self.ids = {r["ImageID"]: r["Subset"] for r in real}
        self.manifest = tmp / "images.csv"
        with open(self.manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(V3_COLUMNS)
            for r in real:
                ours = dict(zip(V3_COLUMNS, corpus.manifest_row(r["ImageID"], origin.base_url), strict=True))
                w.writerow([{**r, **{k: ours[k] for k in ("OriginalURL", "OriginalSize", "OriginalMD5",
                                                           "Thumbnail300KURL")}}[c] for c in V3_COLUMNS])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synth_cache: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("wrong")
    boxed = [{r["ImageID"] for r in rows_of(b)} for b in BOXES]
    real = [r for r in rows_of(V3 / "train" / "images.csv") if r["ImageID"] in boxed[0]][:12]
    real += [r for r in rows_of(V3 / "validation" / "images.csv") if r["ImageID"] in boxed[1]][:12]
    corpus = Corpus.generate(0, mix="tiny", seed=53, ids=[r["ImageID"] for r in real])
    for r in real:
        corpus.entries[r["ImageID"]].subset = r["Subset"]
    with OriginThread(Origin(corpus)) as origin:
        yield Served(tmp, origin, corpus, real)


def test_csv_export_keeps_the_rows_of_every_split(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "64",
                  "--annotations", BOXES[0], "--annotations", BOXES[1])
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "csv")
    assert res.returncode == 0, res.stderr
    expected = [r for b in BOXES for r in rows_of(b) if r["ImageID"] in served.ids]
    written = [r for f in sorted((out / "annotations").glob("*.csv")) for r in rows_of(f)]
    assert len({f.name for f in (out / "annotations").glob("*.csv")}) == 2
    assert sorted((r["ImageID"], r["LabelName"]) for r in written) == \
        sorted((r["ImageID"], r["LabelName"]) for r in expected)
    assert re.search(rf"\b{len(expected)} boxes\b", res.stderr), res.stderr
    # Every file holds one split's rows, and says which in its name.
    for f in (out / "annotations").glob("*.csv"):
        subsets = {served.ids[r["ImageID"]] for r in rows_of(f)}
        assert len(subsets) == 1 and f.name.startswith(subsets.pop()), f.name


def test_repeatable_options_from_the_environment_take_one_value_a_line(served: Served, tmp_path: Path) -> None:
    """OIDOWNLOAD_CLASS="Coffee cup" is one class, not "Coffee" and "Cup"; a name with a
    comma and quotes survives too; OIDOWNLOAD_HEADER='X-Token: abc' is one header."""
    descriptions = tmp_path / "class-descriptions.csv"
    boxed = rows_of(BOXES[1])
    mids = sorted({r["LabelName"] for r in boxed if r["ImageID"] in served.ids})[:2]
    # Names of the user's own choosing for two real MIDs: a space, then a comma and quotes.
    spaced, quoted = "Coffee cup", 'Tea, "green"'
    with open(descriptions, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([[mids[0], spaced], [mids[1], quoted], ["/m/x", "Coffee"],
                                                      ["/m/y", "Cup"], ["/m/z", "Tea"]])
    out = tmp_path / "out"
    sel = tmp_path / "sel.csv"
    env = {"OIDOWNLOAD_CLASS": f"{spaced}\n{quoted}\n", "OIDOWNLOAD_ANNOTATIONS": str(BOXES[1]),
           "OIDOWNLOAD_CLASS_DESCRIPTIONS": str(descriptions)}
    res = run_cli("select", served.manifest, "-o", sel, env=env)
    assert res.returncode == 0, res.stderr
    expected = {r["ImageID"] for r in boxed if r["LabelName"] in mids and r["ImageID"] in served.ids}
    assert {r["ImageID"] for r in rows_of(sel)} == expected
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--subset", "validation",
                  env={**env, "OIDOWNLOAD_HEADER": "X-Token: abc"})
    assert res.returncode == 0, res.stderr
    assert set(journal_rows(out)) == expected
    assert served.origin.extra_headers.get("x-token") == {"abc"}
    res = run_cli("annotations", out, "--format", "coco")
    assert res.returncode == 0, res.stderr
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert sorted(c["name"] for c in coco["categories"]) == sorted([spaced, quoted])


def test_a_rerun_with_other_settings_is_refused_before_any_request(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "64",
                    "--subset", "train", "--limit", "4")
    assert first.returncode == 0, first.stderr
    files = sorted(p for p in out.rglob("*.jpg"))
    assert len(files) == 4
    before = sum(served.origin.requests.values())
    for flags, named in ((["--resize", "32"], ["--resize 64", "--resize 32"]),
                         (["--resize", "64", "--format", "webp"], ["--format jpeg", "--format webp"]),
                         (["--resize", "64", "--output-format", "webdataset"],
                          ["--output-format files", "--output-format webdataset"]),
                         (["--resize", "64", "--quality", "50"], ["--quality 90", "--quality 50"])):
        res = run_cli("download", served.manifest, "-o", out, "--progress", "none", *flags)
        assert res.returncode == 2, (flags, res.stderr)
        for text in named:
            assert text in res.stderr, (flags, res.stderr)
        assert "another output folder" in res.stderr and "same flags" in res.stderr
        assert "Traceback" not in res.stderr
    assert sum(served.origin.requests.values()) == before
    assert sorted(p for p in out.rglob("*.jpg")) == files
    # The same flags resume in silence; --quality of a PNG-free run's defaults changes nothing.
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "64")
    assert res.returncode == 0, res.stderr
    assert "settings" not in res.stderr
    assert sum(1 for s in journal_rows(out).values() if s[0] == "ok") == len(served.ids)


def test_status_after_a_resplit_counts_sources_and_bytes_once(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--format", "keep")
    assert res.returncode == 0, res.stderr
    before = json.loads(run_cli("status", out, "--json").stdout)
    assert before["ok_by_source"] == {"original": len(served.ids)} and before["bytes"] > 0
    for k in range(2):
        res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--format", "keep",
                      "--num-shards", "2", "--shard-index", str(k), "--resplit")
        assert res.returncode == 0, res.stderr
    after = json.loads(run_cli("status", out, "--json").stdout)
    assert after["total"] == len(served.ids)
    assert after["ok_by_source"] == {"original": len(served.ids)}, after
    assert after["bytes"] == before["bytes"]
    text = run_cli("status", out).stdout
    assert f"{len(served.ids)} original(s) checked against OriginalMD5" in text and "unknown" not in text, text


def test_the_summary_says_what_was_checked_per_source(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "log", "--source", "thumbnail",
                  "--subset", "train")
    assert res.returncode == 0, res.stderr
    n = sum(1 for s in served.ids.values() if s == "train")
    assert "verified (originals)" not in res.stderr
    assert f"{n} thumbnail(s), not checked" in res.stderr, res.stderr
    assert "checked against OriginalMD5" not in res.stderr
    st = run_cli("status", out)
    assert f"{n} thumbnail(s), not checked" in st.stdout, st.stdout
    out2 = tmp_path / "out2"
    res = run_cli("download", served.manifest, "-o", out2, "--progress", "log", "--subset", "train")
    assert res.returncode == 0, res.stderr
    assert f"{n} original(s) checked against OriginalMD5 and OriginalSize" in res.stderr, res.stderr


def test_gallery_counts_the_classes_of_its_boxes_the_same_everywhere(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    labels = V3 / "validation" / "annotations-human.csv"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "64",
                  "--subset", "validation", "--annotations", BOXES[1], "--annotations", labels)
    assert res.returncode == 0, res.stderr
    res = run_cli("gallery", out, "--progress", "none")
    assert res.returncode == 0, res.stderr
    box_classes = {r["LabelName"] for r in rows_of(BOXES[1]) if served.ids.get(r["ImageID"]) == "validation"}
    label_classes = {r["LabelName"] for r in rows_of(labels) if served.ids.get(r["ImageID"]) == "validation"}
    assert label_classes - box_classes  # the labels name more classes: they must not be counted
    assert re.search(rf"boxes of {len(box_classes)} classes", res.stderr), res.stderr
    page = (out / "gallery" / "index.html").read_text()
    assert f"boxes of {len(box_classes)} classes" in page
    assert f"boxes of {len(box_classes)} classes" in (out / "gallery" / "stats.html").read_text()


def test_user_agent_is_sent_as_given_and_the_default_names_the_version(served: Served, tmp_path: Path) -> None:
    from oidownload import __version__

    res = run_cli("download", served.manifest, "-o", tmp_path / "a", "--progress", "none", "--limit", "3",
                  "--user-agent", "lab-fetcher/2 (ops@example.org)")
    assert res.returncode == 0, res.stderr
    res = run_cli("download", served.manifest, "-o", tmp_path / "b", "--progress", "none", "--limit", "3",
                  "--subset", "validation")
    assert res.returncode == 0, res.stderr
    agents = set().union(*served.origin.agents.values())
    assert "lab-fetcher/2 (ops@example.org)" in agents
    assert f"oidownload/{__version__} shard/0-of-1" in agents
    assert not any("github" in a or "http" in a for a in agents), agents


def test_metadata_then_db_load_loads_every_row_once(served: Served, tmp_path: Path, make_origin: object) -> None:
    """The README's database steps: `metadata` unpacks the V3 archives, `db load metadata/`
    loads the folder; a COCO export from --db then carries each box once, as the CSVs do."""
    tgz = v3_archive
    archives = {
        "annotations_human_bbox_2017_11.tar.gz": tgz({"validation/annotations-human-bbox.csv": BOXES[1].read_bytes(),
                                                       "train/annotations-human-bbox.csv": BOXES[0].read_bytes()}),
        "classes_2017_11.tar.gz": tgz({"class-descriptions.csv": DESCRIPTIONS.read_bytes()}),
    }
    files = Origin(Corpus.generate(0, mix="tiny"), extra_files={f"2017_11/{k}": v for k, v in archives.items()})
    with OriginThread(files) as meta_origin:
        meta = tmp_path / "metadata"
        res = run_cli("metadata", "--version", "v3", "-o", meta, "--base-url", f"{meta_origin.base_url}/files/",
                      "--only", "annotations-human-bbox.csv", "--only", "class-descriptions.csv")
        assert res.returncode == 0, res.stderr
        # Run again: the archives are already there, nothing new appears beside the unpacked files.
        res = run_cli("metadata", "--version", "v3", "-o", meta, "--base-url", f"{meta_origin.base_url}/files/",
                      "--only", "annotations-human-bbox.csv", "--only", "class-descriptions.csv")
        assert res.returncode == 0, res.stderr
    assert not [p for p in meta.rglob("*.tar.gz") if ".archives" not in p.parts]
    db = tmp_path / "oi.sqlite"
    res = run_cli("db", "load", meta, "--db", db)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "64", "--db", db,
                  "--class", "/m/0cgh4", "--class", "/m/09j2d", "--class", "/m/01g317")
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "coco")
    assert res.returncode == 0, res.stderr
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    written = set(journal_rows(out))
    mids = {"/m/0cgh4", "/m/09j2d", "/m/01g317"}
    expected = [r for b in BOXES for r in rows_of(b) if r["ImageID"] in written and r["LabelName"] in mids]
    assert expected and len(coco["annotations"]) == len(expected)


def test_shard_names_carry_their_split_and_old_names_are_still_read(served: Served, tmp_path: Path) -> None:
    """webdataset's and wids' caches key a shard by its file name: a name that repeats in
    every split read validation back from train's cache."""
    import tarfile

    import webdataset as wds

    out = tmp_path / "out"
    res = run_cli("download", served.manifest, "-o", out, "--progress", "none", "--resize", "48",
                  "--output-format", "webdataset", "--shard-size", "5")
    assert res.returncode == 0, res.stderr
    tars = sorted(out.rglob("*.tar"))
    names = [t.name for t in tars]
    assert len(names) == len(set(names)) and all(t.name.startswith(f"{t.parent.name}-") for t in tars), names
    # Caches key a shard by its name (wids by the file name): one folder of both splits' shards,
    # as a cache is, still reads each split back as itself.
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    for t in tars:
        (pooled / t.name).write_bytes(t.read_bytes())
    for subset in ("train", "validation"):
        urls = sorted(str(p) for p in pooled.glob(f"{subset}-*.tar"))
        keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
        assert sorted(keys) == sorted(i for i, s in served.ids.items() if s == subset)
    # An output written before the split was in the name: its shards are still found and read.
    old = tmp_path / "old"
    res = run_cli("download", served.manifest, "-o", old, "--progress", "none", "--resize", "48",
                  "--output-format", "webdataset", "--shard-size", "5", "--subset", "train")
    assert res.returncode == 0, res.stderr
    for t in sorted(old.rglob("*.tar")):
        legacy = t.name.removeprefix(f"{t.parent.name}-")
        index = json.loads(t.with_name(t.name + ".idx.json").read_text())
        index["shard"] = legacy
        t.with_name(legacy + ".idx.json").write_text(json.dumps(index))
        t.with_name(t.name + ".idx.json").unlink()
        t.rename(t.with_name(legacy))
    import shutil

    shutil.rmtree(old / ".oidownload")  # rebuilt from the shards themselves
    before = sum(served.origin.requests.values())
    res = run_cli("download", served.manifest, "-o", old, "--progress", "none", "--resize", "48",
                  "--output-format", "webdataset", "--shard-size", "5")
    assert res.returncode == 0, res.stderr
    n_train = sum(1 for s in served.ids.values() if s == "train")
    assert sum(served.origin.requests.values()) - before == len(served.ids) - n_train  # train not fetched again
    assert {s for s, _, _ in journal_rows(old).values()} == {"ok"} and len(journal_rows(old)) == len(served.ids)
    seen = []
    for t in old.rglob("*.tar"):
        with tarfile.open(t) as tf:
            seen += [m.name.split(".")[0] for m in tf.getmembers() if m.name.endswith(".json")]
    assert sorted(seen) == sorted(served.ids)


def test_db_load_skips_the_same_content_under_another_name(tmp_path: Path) -> None:
    """A V3 archive beside the files it unpacked to (as `metadata` left it): each box once."""
    import sqlite3

    folder = tmp_path / "metadata"
    (folder / "validation").mkdir(parents=True)
    (folder / "validation" / "annotations-human-bbox.csv").write_bytes(BOXES[1].read_bytes())
    (folder / "annotations_human_bbox_2017_11.tar.gz").write_bytes(v3_archive({
        "validation/annotations-human-bbox.csv": BOXES[1].read_bytes(),
        "train/annotations-human-bbox.csv": BOXES[0].read_bytes()}))
    db = tmp_path / "oi.sqlite"
    for _ in range(2):  # and again: still skipped
        res = run_cli("db", "load", folder, "--db", db)
        assert res.returncode == 0, res.stderr
        assert "annotations_human_bbox_2017_11.tar.gz!2017_11/validation/annotations-human-bbox.csv" in res.stderr
        assert "the same content as" in res.stderr and "already loaded" in res.stderr, res.stderr
    conn = sqlite3.connect(db)
    (boxes,) = conn.execute("SELECT count(*) FROM boxes").fetchone()
    conn.close()
    assert boxes == len(rows_of(BOXES[0])) + len(rows_of(BOXES[1]))
