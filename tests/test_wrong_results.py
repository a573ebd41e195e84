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

from oidownload.rows import V3_COLUMNS
from oidownload.testing.origin import Corpus, Origin, OriginThread
from tests.conftest import V3, journal_rows, run_cli

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
