"""Exports loaded by their consumers, on a real download of real V3 ids (40 train, 40
validation, with their real Titles and Authors, HTML entities and all, plus one row
with hostile credits): the attribution files, COCO in pycocotools, the Ultralytics
YOLO tree by Ultralytics' own path rule, and Hugging Face `datasets` imagefolder.

Expected values are computed here from the fixture files with csv.DictReader, never
copied from the code under test."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from oidownload.testing.origin import Corpus, Origin
from tests.conftest import (
    BOXES,
    V3,
    Download,
    class_names,
    journal_rows,
    require,
    rows_of,
    run_cli,
)

# -- attribution ---------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.sections: list[tuple[str, list[str]]] = []  # h2 text, the li texts under it
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += attrs
        self._in.append(tag)
        if tag == "h2":
            self.sections.append(("", []))
        elif tag == "li" and self.sections:
            self.sections[-1][1].append("")

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "h2" in self._in:
            self.sections[-1] = (self.sections[-1][0] + data, self.sections[-1][1])
        elif "li" in self._in and self.sections and self.sections[-1][1]:
            self.sections[-1][1][-1] += data


def test_attribution_credits_exactly_the_downloaded_images(download: Download) -> None:
    res = run_cli("annotations", download.out, "--format", "attribution")
    assert res.returncode == 0, res.stderr
    rows = rows_of(download.out / "annotations" / "ATTRIBUTION.csv")
    assert sorted(r["ImageID"] for r in rows) == sorted(journal_rows(download.out))
    decoded = 0
    for r in rows:
        src = download.source[r["ImageID"]]
        assert r["Title"] == html.unescape(src["Title"]).strip() and r["Author"] == html.unescape(src["Author"]).strip()
        decoded += r["Title"] != src["Title"] or r["Author"] != src["Author"]
        assert (r["OriginalURL"], r["OriginalLandingURL"], r["AuthorProfileURL"], r["License"]) == (
            src["OriginalURL"], src["OriginalLandingURL"], src["AuthorProfileURL"], src["License"])
        assert (download.out / r["Location"]).is_file() and r["ImageID"] in r["Location"]
        assert "&#" not in r["Title"] + r["Author"] and "&amp;" not in r["Title"] + r["Author"]
    assert decoded >= 3  # the real fixture's entities (O&#x27;..., &amp;, &quot;) and the hostile row
    assert Counter(r["LicenseName"] for r in rows) == {"CC BY 2.0": 79, "CC BY-SA 2.0": 1}

    page = _Page()
    page.feed((download.out / "annotations" / "ATTRIBUTION.html").read_text())
    # Nothing that can run or load: no script, image, frame or handler; links only to http(s).
    assert not {"script", "img", "iframe", "object", "embed", "svg", "form", "base"} & set(page.tags)
    assert not [name for name, _ in page.attrs if name.startswith("on")]
    hrefs = [v or "" for name, v in page.attrs if name == "href"]
    assert hrefs and all(h.startswith(("https://", "http://", "#")) for h in hrefs)
    assert ("http-equiv", "Content-Security-Policy") in page.attrs
    text = "".join(page.text)
    assert '<script>alert("a")</script> <script>alert(2)</script>' in text  # shown as text
    assert "<img src=x onerror=alert(1)> O'Neil's \"car\"" in text
    # Grouped by licence: each section holds exactly its images.
    sections = {heading.split(":")[0]: items for heading, items in page.sections}
    assert set(sections) == {"CC BY 2.0", "CC BY-SA 2.0"}
    assert len(sections["CC BY 2.0"]) == 79 and len(sections["CC BY-SA 2.0"]) == 1
    assert download.hostile in sections["CC BY-SA 2.0"][0]


# -- COCO ----------------------------------------------------------------------------------------


def test_coco_every_annotation_makes_a_mask_and_images_carry_their_credits(download: Download) -> None:
    from pycocotools.coco import COCO

    res = run_cli("annotations", download.out, "--format", "coco")
    assert res.returncode == 0, res.stderr
    coco = COCO(str(download.out / "annotations" / "coco.json"))
    source_boxes = download.boxes()
    assert len(coco.getAnnIds()) == sum(len(b) for b in source_boxes.values()) > 50
    licenses = {lic["id"]: lic for lic in coco.dataset["licenses"]}
    assert {lic["name"] for lic in licenses.values()} == {"CC BY 2.0", "CC BY-SA 2.0"}
    for img in coco.loadImgs(coco.getImgIds()):
        src = download.source[img["open_images_id"]]
        assert licenses[img["license"]]["url"] == src["License"]
        assert img["flickr_url"] == src["OriginalURL"] and img["author"] == html.unescape(src["Author"]).strip()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        want = source_boxes[img["open_images_id"]]
        assert len(anns) == len(want)
        assert sorted(a["iscrowd"] for a in anns) == sorted(int(r.get("IsGroupOf") or 0) for r in want)
        for a in anns:
            (poly,) = a["segmentation"]
            assert len(poly) == 8
            mask = coco.annToMask(a)
            assert mask.shape == (img["height"], img["width"])
            x, y, w, h = a["bbox"]
            # Rasterised, the polygon covers the box give or take its one-pixel border.
            assert abs(int(mask.sum()) - w * h) <= 2 * (w + h) + 4, (a, int(mask.sum()))
            ys, xs = mask.nonzero()
            if len(xs):
                assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1 and ys.min() >= int(y) - 1 and ys.max() <= y + h + 1


# -- YOLO ----------------------------------------------------------------------------------------


def ultralytics_label_path(image: str) -> str:
    """Ultralytics' img2label_paths (ultralytics/data/utils.py), for one path."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(image.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def _yolo_images(root: Path) -> list[Path]:
    # How Ultralytics lists a split folder: glob('**/*.*', recursive=True), image suffixes.
    return [p for p in root.rglob("*.*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}]


def test_yolo_tree_follows_ultralytics_path_rule(download: Download) -> None:
    import yaml

    res = run_cli("annotations", download.out, "--format", "yolo")
    assert res.returncode == 0, res.stderr
    assert "no train subset" not in res.stderr
    root = download.out / "annotations" / "yolo"
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert Path(data["path"]).is_absolute() and Path(data["path"]) == root.resolve()
    assert (data["train"], data["val"]) == ("images/train", "images/validation") and "test" not in data
    source_boxes = download.boxes()
    mids = sorted({r["LabelName"] for rs in source_boxes.values() for r in rs})
    names = class_names()
    assert data["names"] == {i: names[m] for i, m in enumerate(mids)}
    seen = {}
    for split, subset in (("train", "train"), ("val", "validation")):
        images = _yolo_images(Path(data["path"]) / data[split])
        assert {p.stem for p in images} == {i for i, r in download.source.items() if r["Subset"] == subset}
        for image in images:
            assert image.is_symlink()  # a link, not a copy
            downloaded = download.out / subset / image.stem[:3] / f"{image.stem}.jpg"
            assert os.path.samefile(image, downloaded)
            label = Path(ultralytics_label_path(str(image)))
            lines = label.read_text().splitlines()
            assert len(lines) == len(source_boxes[image.stem])
            with Image.open(image) as im:
                assert max(im.size) == 120
            for line in lines:
                k, *xywh = line.split()
                assert 0 <= int(k) < len(mids) and all(0 <= float(v) <= 1 for v in xywh)
            seen[image.stem] = sorted(mids[int(line.split()[0])] for line in lines)
    assert seen == {i: sorted(r["LabelName"] for r in rs) for i, rs in source_boxes.items()}


def test_yolo_reexport_drops_what_is_gone(download: Download, tmp_path: Path) -> None:
    """A second export replaces the tree whole: an image that is no longer written has
    neither link nor label."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(download.out, out, symlinks=True)
    assert run_cli("annotations", out, "--format", "yolo").returncode == 0
    gone = sorted(download.source)[0]
    subset = download.source[gone]["Subset"]
    (out / subset / gone[:3] / f"{gone}.jpg").unlink()
    assert run_cli("verify", out, "--progress", "none").returncode == 6  # marks it damaged
    assert run_cli("annotations", out, "--format", "yolo").returncode == 0
    root = out / "annotations" / "yolo"
    assert not list(root.rglob(f"{gone}.*"))
    assert len(_yolo_images(root / "images")) == len(download.source) - 1
    assert not [p for p in out.joinpath("annotations").iterdir() if p.name.startswith(".yolo")]


def test_yolo_and_hf_need_local_files(tmp_path: Path, make_origin: Callable[..., Origin]) -> None:
    corpus = Corpus.generate(0, mix="tiny", seed=52, ids=[r["ImageID"] for r in rows_of(V3 / "validation" / "images.csv")[:4]],
                             subset="validation")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    assert run_cli("download", manifest, "-o", out, "--output-format", "webdataset", "--progress", "none").returncode == 0
    for fmt in ("yolo", "hf"):
        res = run_cli("annotations", out, "--format", fmt, "--annotations", BOXES[1])
        assert res.returncode == 1 and "--output-format files" in res.stderr and "Traceback" not in res.stderr
    assert run_cli("annotations", out, "--format", "attribution").returncode == 0
    assert len(rows_of(out / "annotations" / "ATTRIBUTION.csv")) == 4


# -- Hugging Face ----------------------------------------------------------------------------------

_LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2])
found = {}
for split, part in ds.items():
    for row in part:
        im = row["image"]
        found[row["image_id"]] = {"split": split, "size": list(im.size), "width": row["width"],
                                  "height": row["height"], "boxes": len(row["objects"]["bbox"]),
                                  "labels": row["objects"]["labels"], "author": row["author"]}
print(json.dumps({"splits": {k: v.num_rows for k, v in ds.items()}, "rows": found}))
"""


def test_hf_imagefolder_loads_with_ids_and_boxes(download: Download, tmp_path: Path) -> None:
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    # The YOLO tree's links and the kept originals sit in folders named like splits too.
    assert run_cli("annotations", download.out, "--format", "yolo").returncode == 0
    res = run_cli("annotations", download.out, "--format", "hf")
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", _LOAD, str(download.out), str(tmp_path / "hf-cache")],
                            capture_output=True, text=True, env=env, timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = json.loads(loaded.stdout.splitlines()[-1])
    by_subset = Counter(r["Subset"] for r in download.source.values())
    assert got["splits"] == {"train": by_subset["train"], "validation": by_subset["validation"]}
    source_boxes = download.boxes()
    names = class_names()
    assert set(got["rows"]) == set(download.source)  # no kept original, no YOLO link counted as a row
    for image_id, row in got["rows"].items():
        assert row["split"] == download.source[image_id]["Subset"]
        assert row["size"] == [row["width"], row["height"]] and max(row["size"]) == 120
        assert row["boxes"] == len(source_boxes[image_id])
        assert sorted(row["labels"]) == sorted(names[r["LabelName"]] for r in source_boxes[image_id])
        assert row["author"] == html.unescape(download.source[image_id]["Author"]).strip()
    assert sum(r["boxes"] for r in got["rows"].values()) == sum(len(b) for b in source_boxes.values())
