"""Conventions a user relies on: a closed pipe, option spellings and contradictions,
JSON log times, the classes listing, progress totals, and the messages that name the
right thing."""

from __future__ import annotations

import datetime
import gzip
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oidownload.core.exits import MEANING, SELECT_MEANING, VERIFY_MEANING, ExitCode
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import V3, V4, require, run_cli

HIERARCHY = V4 / "bbox_labels_600_hierarchy.json"


def closed_pipe(*args: object) -> subprocess.CompletedProcess[str]:
    """`oidownload ARGS | head -0`: stdout is a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [
    ["--help"],
    ["classes", "--hierarchy", HIERARCHY],
    ["download", "--help"],
])
def test_a_closed_pipe_is_not_an_error(args: list[object]) -> None:
    res = closed_pipe(*args)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""



def _tiny(tmp_path: Path, make_origin: StartOrigin, n: int = 3, seed: int = 270) -> tuple[Path, Corpus]:
    corpus = Corpus.generate(n, mix="tiny", seed=seed)
    origin = make_origin(corpus)
    return corpus.write_manifest(tmp_path / "images.csv", origin.base_url), corpus


def test_jpg_is_jpeg_and_json_times_are_iso_8601_with_a_zone(tmp_path: Path, make_origin: StartOrigin) -> None:
    manifest, corpus = _tiny(tmp_path, make_origin)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--format", "jpg", "--resize", "32", "--log-format", "json")
    assert res.returncode == 0, res.stderr
    for image_id in corpus.ids:
        with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
            assert im.format == "JPEG"
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]
    assert lines
    for obj in lines:
        when = datetime.datetime.fromisoformat(obj["time"])
        assert when.utcoffset() == datetime.timedelta(0), obj["time"]
        assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 600


@pytest.mark.parametrize(("extra", "says"), [
    (["--resize-mode", "fill"], "--resize-mode fill crops to NxN: give the size with --resize N"),
    (["--keep-original", "--source", "thumbnail"], "--keep-original keeps the verified original"),
])
def test_contradictory_options_are_a_usage_error(tmp_path: Path, extra: list[str], says: str) -> None:
    manifest = Corpus.generate(1, mix="tiny", seed=271).write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    res = run_cli("download", manifest, "-o", tmp_path / "out", *extra)
    assert res.returncode == 2, res.stderr
    assert says in res.stderr
    assert not (tmp_path / "out").exists()


def test_quality_with_png_is_warned_about(tmp_path: Path, make_origin: StartOrigin) -> None:
    manifest, _ = _tiny(tmp_path, make_origin, 1)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--format", "png", "--quality", "50",
                  "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert "warning: --quality applies to jpeg and webp; --format png ignores it" in res.stderr
    res = run_cli("download", manifest, "-o", tmp_path / "out2", "--format", "png", "--progress", "none")
    assert res.returncode == 0 and "--quality" not in res.stderr, res.stderr


def test_select_into_a_missing_folder_names_it(tmp_path: Path) -> None:
    manifest = Corpus.generate(1, mix="tiny", seed=272).write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    res = subprocess.run([sys.executable, "-m", "oidownload", "select", manifest, "-o", "nodir/x.csv"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "the folder nodir does not exist" in res.stderr
    assert "`.`" not in res.stderr and " . does not exist" not in res.stderr


def test_an_output_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    manifest = Corpus.generate(1, mix="tiny", seed=273).write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    (tmp_path / "afile").write_text("x")
    res = run_cli("download", manifest, "-o", tmp_path / "afile")
    assert res.returncode == 1, res.stderr
    assert f"-o/--output {tmp_path / 'afile'} is a file, not a folder" in res.stderr
    assert "state dir" not in res.stderr and "--state-dir" not in res.stderr


def test_db_load_into_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    res = run_cli("db", "load", V4 / "bbox_labels_600_hierarchy.json", "--db", tmp_path)
    assert res.returncode == 1, res.stderr
    assert f"{tmp_path} is a folder" in res.stderr
    assert "unable to open database file" not in res.stderr


@pytest.mark.parametrize(("command", "meanings"), [("select", SELECT_MEANING), ("verify", VERIFY_MEANING)])
def test_select_and_verify_help_ends_with_their_own_exit_codes(command: str, meanings: dict[ExitCode, str]) -> None:
    shown = run_cli(command, "--help").stdout
    table = " ".join(shown.split("Exit codes:", 1)[1].split())
    assert table == " ".join(f"{int(code)} {meaning}" for code, meaning in meanings.items())
    assert MEANING[ExitCode.MAX_RUNTIME] not in shown and MEANING[ExitCode.TOO_MANY_FAILURES] not in shown


def test_bench_faults_help_names_a_module_that_exists() -> None:
    shown = " ".join(run_cli("bench", "--help").stdout.split())
    names = re.findall(r"(\w+) in (oidownload(?:\.\w+)+)", shown)
    assert names
    for attr, module in names:
        assert hasattr(importlib.import_module(module), attr), (attr, module)


def test_report_annotations_and_gallery_on_a_bucket_say_the_same_thing() -> None:
    said = {}
    for command, flag in (("report", "-d/--dest"), ("annotations", "-d/--dest"), ("gallery", "-o/--output")):
        res = run_cli(command, "s3://bucket/out")
        assert res.returncode == 2, (command, res.stderr)
        assert f"give a local folder with {flag}" in res.stderr, (command, res.stderr)
        said[command] = res.stderr.splitlines()[-1].replace(flag, "FLAG")
    assert len(set(said.values())) == 1, said
    assert "s3://bucket/out is in an object store" in said["report"]


def test_an_annotation_file_or_a_binary_file_as_the_image_list(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n0000000000000001,xclick,/m/0152hh,1,0,1,0,1\n")
    res = run_cli("download", boxes, "-o", tmp_path / "out")
    assert res.returncode == 1, res.stderr
    assert "this is a box annotation file, not an image list: pass it with --annotations" in res.stderr
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01,\x00\x01\x00\x00\xff\xdb\x1b[2J\n" * 3)
    for command in (["download", binary, "-o", tmp_path / "out"], ["select", binary, "-o", tmp_path / "x.csv"]):
        res = run_cli(*command)
        assert res.returncode == 1, res.stderr
        assert "not a CSV text file" in res.stderr
        assert "JFIF" not in res.stderr and "\x1b" not in res.stderr and "\ufffd" not in res.stderr


def test_a_piped_input_is_named_as_one_in_the_resume_hint_the_report_and_the_credits(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(3, mix="tiny", seed=274)
    corpus.entries[corpus.ids[0]].fault = Fault("503")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "oidownload", "download", "-", "-o", out, "--retries", "0",
                          "--progress", "none"], input=manifest.read_text(), capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == ExitCode.INCOMPLETE, res.stderr
    assert "to resume, run the same command again, feeding it the same input (standard input was read once" \
        in res.stderr
    res = run_cli("report", out)
    assert res.returncode == 0, res.stderr
    assert "standard input was a pipe, read once" in res.stderr
    assert "- was" not in res.stderr and "- is gone" not in res.stderr
    res = run_cli("annotations", out, "--format", "attribution")
    assert res.returncode == 0, res.stderr
    assert "2 images have no credit: they were read from standard input, which is read once: save the same image " \
        "list to a file and pass it with --images FILE" in res.stderr
    res = run_cli("annotations", out, "--format", "attribution", "--images", manifest)
    assert res.returncode == 0, res.stderr
    assert "no credit" not in res.stderr
    rows = (out / "annotations" / "ATTRIBUTION.csv").read_text().splitlines()
    assert len(rows) == 3 and all("Synthetic" in r for r in rows[1:]), rows


def _json_tree() -> dict[str, Any]:
    return json.loads(HIERARCHY.read_text())  # type: ignore[no-any-return]


def _walk(node: dict[str, Any], parts: bool, in_part: bool = False) -> Iterator[tuple[str, bool]]:
    """(MID, reached through a Part edge) of every node shown, from the JSON itself."""
    yield node["LabelName"], in_part
    for kid in node.get("Subcategory", []):
        yield from _walk(kid, parts, in_part)
    if parts:
        for kid in node.get("Part", []):
            yield from _walk(kid, parts, True)


def _find(node: dict[str, Any], mid: str) -> dict[str, Any] | None:
    if node["LabelName"] == mid:
        return node
    for kid in [*node.get("Subcategory", []), *node.get("Part", [])]:
        found = _find(kid, mid)
        if found is not None:
            return found
    return None


def _shown(stdout: str) -> list[tuple[str, bool]]:
    return [(line.rsplit(" (", 1)[1].rstrip(")"), line.strip().startswith("[part] ")) for line in stdout.splitlines()]


def test_classes_lists_what_the_selection_takes() -> None:
    from oidownload.dataset.hierarchy import Hierarchy

    doc = _json_tree()
    res = run_cli("classes", "--hierarchy", HIERARCHY)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "Entity (/m/0bl9f)"  # the root by name
    assert sorted(_shown(res.stdout)) == sorted(_walk(doc, parts=False))
    assert "[part]" not in res.stdout
    tree = Hierarchy.load(HIERARCHY)
    person = "/m/01g317"  # its parts have parts, and kinds: every one of them is marked
    node = _find(doc, person)
    assert node is not None
    for with_parts in (False, True):
        got = run_cli("classes", "--hierarchy", HIERARCHY, "--class", person, *(["--with-parts"] if with_parts else []))
        assert got.returncode == 0, got.stderr
        assert sorted(_shown(got.stdout)) == sorted(_walk(node, parts=with_parts))
        assert {m for m, _ in _shown(got.stdout)} == tree.descendants(person, with_parts=with_parts)
    shown = run_cli("classes", "--hierarchy", HIERARCHY, "--class", person, "--with-parts").stdout
    assert [line for line in shown.splitlines() if line.startswith("    ") and "[part]" in line], shown


def test_classes_reads_the_hierarchy_and_names_from_a_database(tmp_path: Path) -> None:
    db = tmp_path / "oi.sqlite"
    res = run_cli("db", "load", HIERARCHY, V3 / "class-descriptions.csv", "--db", db)
    assert res.returncode == 0, res.stderr
    from_db = run_cli("classes", "--db", db, "--class", "Car")
    assert from_db.returncode == 0, from_db.stderr
    from_files = run_cli("classes", "--hierarchy", HIERARCHY, "--class", "Car",
                         "--class-descriptions", V3 / "class-descriptions.csv")
    assert from_db.stdout == from_files.stdout and from_db.stdout.startswith("Car (")
    res = run_cli("classes")
    assert res.returncode == 2 and "--hierarchy" in res.stderr


_HF_LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])
out = {}
for split, part in ds.items():
    category = part.features["objects"]["category"].feature
    out[split] = {"type": type(category).__name__, "names": category.names,
                  "rows": {r["image_id"]: [r["objects"]["category"], r["objects"]["labels"], r["objects"]["bbox"]]
                           for r in part}}
print(json.dumps(out))
"""


def test_hf_export_categories_load_as_a_class_label(tmp_path: Path, make_origin: StartOrigin) -> None:
    require(importlib.util.find_spec("datasets") is not None, "Hugging Face datasets (pip install '.[test]')")
    manifest, corpus = _tiny(tmp_path, make_origin, 4, seed=275)
    boxes = tmp_path / "boxes.csv"
    classes = [("/m/0152hh", "Snowman"), ("/m/01yrx", "Cat"), ("/m/0bt9lr", "Dog")]
    descriptions = tmp_path / "class-descriptions.csv"
    descriptions.write_text("".join(f"{m},{n}\n" for m, n in classes))
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n" + "".join(
        f"{i},xclick,{classes[k % 3][0]},1,0.1,0.5,0.2,0.6\n{i},xclick,/m/01yrx,1,0.0,0.5,0.0,0.5\n"
        for k, i in enumerate(corpus.ids)))
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--resize", "64", "--progress", "none")
    assert res.returncode == 0, res.stderr
    res = run_cli("annotations", out, "--format", "hf", "--annotations", boxes, "--class-descriptions", descriptions)
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", _HF_LOAD, str(out), str(tmp_path / "hf-cache")],
                            capture_output=True, text=True, env=env, timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = json.loads(loaded.stdout.splitlines()[-1])
    assert list(got) == ["train"]
    train = got["train"]
    assert train["type"] == "ClassLabel"
    assert train["names"] == [n for _, n in sorted(classes)]  # the index order: sorted MIDs
    assert set(train["rows"]) == set(corpus.ids)
    for category, labels, bbox in train["rows"].values():
        assert [train["names"][c] for c in category] == labels and len(bbox) == 2


def _bar_frames(stderr: str) -> list[str]:
    return [part for part in re.split(r"[\r\n]", stderr) if "img" in part and "[" in part]


def test_a_small_input_has_its_exact_total_from_the_first_frame(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(25, mix="tiny", seed=276)
    origin = make_origin(corpus, latency=Latency(0.05))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--progress", "bar", "--concurrency", "2",
                  "--format", "keep")
    assert res.returncode == 0, res.stderr
    frames = _bar_frames(res.stderr)
    assert frames, res.stderr
    done = [int(re.search(r"(\d+)/25", f.replace(" ", "")).group(1)) for f in frames]  # type: ignore[union-attr]
    assert done == sorted(done) and done[-1] == 25  # every frame has the total, and never goes back


def test_count_rows_is_exact_for_small_files_and_leaves_pipes_alone(tmp_path: Path) -> None:
    from oidownload.inputs.csvrecords import count_rows

    plain = tmp_path / "a.csv"
    plain.write_text("h\n" + "x\n" * 1000 + "last")
    assert count_rows(plain) == 1001
    packed = tmp_path / "a.csv.gz"
    packed.write_bytes(gzip.compress(b"h\n" + b"x\n" * 777))
    assert count_rows(packed) == 777
    assert count_rows(Path("-")) is None


def test_bench_shows_a_bar_while_it_generates_its_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from oidownload.bench import Scenario, corpus_for

    monkeypatch.setenv("OIDOWNLOAD_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    bar = io.StringIO()
    corpus = corpus_for(Scenario("t", mix="tiny", n=4, seed=277), said.append, bar)
    assert len(corpus.ids) == 4
    frames = bar.getvalue()
    assert "generating tiny:" in frames and "6/6" in frames and "generating tiny-thumbs:" in frames and "3/3" in frames
    assert said[0].startswith("bench: generating the synthetic images for the tiny and tiny-thumbs mix once")
    assert any(re.fullmatch(r"bench: 6 tiny images generated in \d+ s", s) for s in said), said
    again, said[:] = io.StringIO(), []
    corpus_for(Scenario("t", mix="tiny", n=4, seed=277), said.append, again)
    assert again.getvalue() == "" and said == []  # cached: no bar, no word


def test_a_folder_as_mirror_url_says_how_to_serve_it(tmp_path: Path) -> None:
    manifest = Corpus.generate(1, mix="tiny", seed=278).write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--source", "cvdf", "--mirror-url", tmp_path)
    assert res.returncode == 2, res.stderr
    assert "python -m http.server 8000 --bind 127.0.0.1 --directory FOLDER" in res.stderr


def test_the_readme_option_table_lists_every_source_and_resize_mode() -> None:
    from oidownload.core.config import ResizeMode, SourceChoice

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("| option | default | meaning |", 1)[1].split("\n\n", 1)[0]
    for option, values in (("--source", SourceChoice), ("--resize-mode", ResizeMode)):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{option} "))
        listed = row.split("`")[1].split(" ", 1)[1].split("\\|")
        assert listed == [v.value for v in values], (option, listed)


def test_select_to_stdout_and_into_a_closed_pipe(tmp_path: Path) -> None:
    manifest = Corpus.generate(3000, mix="tiny", seed=279).write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9")
    stdout = os.readlink("/dev/stdout") if os.path.islink("/dev/stdout") else None
    for target in ("-", "/dev/fd/1"):
        res = run_cli("select", manifest, "-o", target, "--limit", 2)
        assert res.returncode == 0, res.stderr
        assert len(res.stdout.splitlines()) == 3 and res.stdout.startswith("ImageID,")
        assert "2 rows written to" in res.stderr
        res = closed_pipe("select", manifest, "-o", target)
        assert res.returncode == 0 and res.stderr == "", res.stderr
    # A stream is written through, never replaced by a renamed file.
    assert (os.readlink("/dev/stdout") if os.path.islink("/dev/stdout") else None) == stdout


def test_status_report_and_annotations_into_a_closed_pipe(tmp_path: Path, make_origin: StartOrigin) -> None:
    manifest, _ = _tiny(tmp_path, make_origin, 2, seed=280)
    out = tmp_path / "out"
    assert run_cli("download", manifest, "-o", out, "--progress", "none").returncode == 0
    for args in (["status", out], ["status", out, "--json"], ["report", out],
                 ["annotations", out, "--format", "attribution"]):
        res = closed_pipe(*args)
        assert res.returncode == 0, (args, res.stderr)
        assert "Broken pipe" not in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_a_selection_total_starts_near_the_truth_and_never_grows(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=281)
    origin = make_origin(corpus, latency=Latency(0.05))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(corpus.ids[:6]) + "\n")
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--ids", ids, "--progress", "bar",
                  "--concurrency", "2", "--format", "keep")
    assert res.returncode == 0, res.stderr
    totals = [int(m.group(1)) for f in _bar_frames(res.stderr) if (m := re.search(r"\d+/(\d+)", f.replace(" ", "")))]
    assert totals and totals[-1] == 6 and max(totals) <= 6, totals  # not the list's 40 rows
    assert totals == sorted(totals, reverse=True), totals  # a total never grows: the bar never goes back
