"""Environment variables are scoped by command, and `--log-format json` makes all of
stderr JSON lines: notes, warnings, the summary, the verdict, fatal and usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from PIL import Image

from oidownload.commands import main
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault
from tests.conftest import journal_rows, run_cli

# Options that mean exactly what download's options of the same name mean.
SHARED = {
    "select": {"--subset", "--limit", "--seed", "--ids", "--class", "--classes-file", "--class-descriptions",
               "--annotations", "--label-source", "--min-confidence", "--boxes-only", "--exclude-occluded",
               "--exclude-truncated", "--exclude-group-of", "--exclude-depiction", "--exclude-inside",
               "--db", "--hierarchy", "--no-expand", "--with-parts", "--limit-per-class",
               # relationships and points (issue 23)
               "--relationship", "--predicate", "--attributes", "--point-answer", "--min-yes-votes",
               # narratives (issue 23)
               "--with-narrative", "--narrative-contains"},
    "status": {"--state-dir"}, "report": {"--state-dir"}, "annotations": {"--state-dir"}, "gallery": {"--state-dir"},
    "verify": {"--state-dir"}, "lock": {"--state-dir"},
}


def _long(param: click.Option) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def test_environment_variables_are_scoped_by_command() -> None:
    commands = main.commands
    download = {_long(p): p.envvar for p in commands["download"].params if isinstance(p, click.Option)}
    assert download["--resize"] == "OIDOWNLOAD_RESIZE" and download["--format"] == "OIDOWNLOAD_FORMAT"
    for name, command in commands.items():
        if name == "download":
            continue
        for param in command.params:
            if not isinstance(param, click.Option) or param.opts == ["--help"]:
                continue
            flag = _long(param)
            scoped = "OIDOWNLOAD_" + name.upper() + "_" + flag[2:].upper().replace("-", "_")
            if flag in SHARED.get(name, set()):
                assert param.envvar == download[flag], (name, flag)
            else:
                assert param.envvar == scoped, (name, flag, param.envvar)


def _downloaded(tmp_path: Path, make_origin: StartOrigin, *extra: object, env: dict[str, str] | None = None) -> tuple[Path, Corpus]:
    corpus = Corpus.generate(4, mix="tiny", seed=70)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n" for i in corpus.ids))
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--class", "/m/0152hh", "--annotations", boxes,
                  "--progress", "none", *extra, env=env)
    assert res.returncode == 0, res.stderr
    return out, corpus


def test_download_variables_do_not_leak_into_other_commands(tmp_path: Path, make_origin: StartOrigin) -> None:
    env = {"OIDOWNLOAD_FORMAT": "webp", "OIDOWNLOAD_RESIZE": "48", "OIDOWNLOAD_OUTPUT": str(tmp_path / "out")}
    out, corpus = _downloaded(tmp_path, make_origin, env=env)
    for image_id in corpus.ids:  # download keeps its short names
        with Image.open(out / "train" / image_id[:3] / f"{image_id}.webp") as im:
            assert im.format == "WEBP" and max(im.size) == 48
    res = run_cli("annotations", out, env=env)
    assert res.returncode == 0, res.stderr
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 4
    res = run_cli("annotations", out, env={**env, "OIDOWNLOAD_ANNOTATIONS_FORMAT": "csv"})
    assert res.returncode == 0, res.stderr
    assert (out / "annotations" / "boxes.csv").read_text().count("/m/0152hh") == 4
    # OIDOWNLOAD_OUTPUT is the download folder: it never becomes select's CSV.
    manifest = tmp_path / "images.csv"
    res = run_cli("select", manifest, env=env)
    assert res.returncode == 2 and "Missing option '-o'" in res.stderr
    assert out.is_dir()
    res = run_cli("select", manifest, env={**env, "OIDOWNLOAD_SELECT_OUTPUT": str(tmp_path / "sel.csv"),
                                           "OIDOWNLOAD_LIMIT": "2"})
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "sel.csv").read_text().splitlines()) == 3  # header + the shared --limit


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every line, or this raises
    for obj in parsed:
        assert {"time", "level", "event", "message"} <= obj.keys(), obj
        assert obj["level"] in ("info", "warning", "error")
    return parsed


def test_log_format_json_is_all_json(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(5, mix="tiny", seed=71)
    corpus.entries[corpus.ids[0]].fault = Fault("503")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    manifest.write_bytes(manifest.read_bytes().replace(b"Synthetic O&#x27;Origin", b"Synth\xe9tic", 1))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n" for i in corpus.ids))
    json_run = ("--log-format", "json", "--retries", "0")
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--class", "/m/0152hh", "--class", "/m/zzzz",
                  "--annotations", boxes, *json_run)
    assert res.returncode == 5, res.stderr
    events = _json_lines(res.stderr)
    by_event = {e["event"]: e for e in events}
    assert by_event["selection"]["level"] in ("info", "warning")
    assert any(e["event"] == "selection" and e["level"] == "warning" and "/m/zzzz" in e["message"] for e in events)
    assert by_event["undecodable"]["level"] == "warning"
    assert by_event["start"]["processes"] >= 1
    assert by_event["summary"]["by_status"] == {"http_5xx": 1, "ok": 4}
    assert by_event["incomplete"]["exit_code"] == 5 and "oidownload download" in by_event["incomplete"]["resume"]

    res = run_cli("download", tmp_path / "missing.csv", "-o", tmp_path / "o2", "--log-format", "json")
    [fatal] = _json_lines(res.stderr)
    assert res.returncode == 1 and fatal["level"] == "error" and fatal["event"] == "fatal"
    assert "missing.csv" in fatal["message"] and fatal["exit_code"] == 1

    for args, env in ((["--log-format", "json", "--timeout", "0"], None),
                      (["--timeout", "0"], {"OIDOWNLOAD_LOG_FORMAT": "json"}),
                      (["--log-format=json", "--no-such-option"], None)):
        res = run_cli("download", manifest, "-o", tmp_path / "o3", *args, env=env)
        [usage] = _json_lines(res.stderr)
        assert res.returncode == 2 and usage["event"] == "usage" and usage["level"] == "error", res.stderr

    res = run_cli("download", manifest, "-o", tmp_path / "o4", "--subset", "Train", *json_run)
    events = _json_lines(res.stderr)
    assert res.returncode == 4
    assert next(e for e in events if e["event"] == "nothing_selected")["level"] == "warning"
    assert not journal_rows(tmp_path / "o4")
