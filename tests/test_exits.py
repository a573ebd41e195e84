"""Exit codes: a run that did nothing says why and exits 4; one with retryable failures
left (or where every image failed) exits 5; --max-failure-rate judges the whole job;
every numeric option refuses zero, negative and absurd values with exit 2; one table
of codes in the README and in --help."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from oidownload.commands import main
from oidownload.commands.options import Duration, Float, Int
from oidownload.core.exits import MEANING, ExitCode
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault
from tests.conftest import journal_rows, run_cli

README = Path(__file__).parent.parent / "README.md"
QUIET = ("--progress", "none")


def _boxes(path: Path, ids: list[str], mid: str) -> Path:
    lines = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax"]
    lines += [f"{i},xclick,{mid},1,0.1,0.5,0.2,0.6" for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_subset_that_is_not_in_the_data_exits_4_naming_the_subsets_seen(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=40)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "out", "--subset", "Train", *QUIET)
    assert res.returncode == 4, res.stderr
    assert "nothing selected" in res.stderr and "'train' (6 rows)" in res.stderr
    assert "did you mean --subset train" in res.stderr
    assert sum(origin.requests.values()) == 0
    sel = run_cli("select", manifest, "-o", tmp_path / "sel.csv", "--subset", "Train")
    assert sel.returncode == 4 and "'train' (6 rows)" in sel.stderr


def test_classes_that_match_nothing_and_annotations_of_another_list_exit_4(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=41)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    boxes = _boxes(tmp_path / "boxes.csv", corpus.ids[:3], "/m/0152hh")
    res = run_cli("download", manifest, "-o", tmp_path / "a", "--class", "/m/zzzz", "--annotations", boxes, *QUIET)
    assert res.returncode == 4, res.stderr
    assert "/m/zzzz" in res.stderr and "picked no image" in res.stderr
    # Boxes of other images (the train annotations applied to the validation list).
    elsewhere = _boxes(tmp_path / "train-boxes.csv", [f"{i:016x}" for i in range(1, 60)], "/m/0152hh")
    res = run_cli("download", manifest, "-o", tmp_path / "b", "--class", "/m/0152hh", "--annotations", elsewhere, *QUIET)
    assert res.returncode == 4, res.stderr
    assert "none of the 59 image(s) of the class selection" in res.stderr and "6 rows" in res.stderr
    assert sum(origin.requests.values()) == 0
    # A class that matched next to one that did not: a warning, and the run goes on.
    res = run_cli("download", manifest, "-o", tmp_path / "c", "--class", "/m/0152hh", "--class", "/m/zzzz",
                  "--annotations", boxes, *QUIET)
    assert res.returncode == 0, res.stderr
    assert "warning: no row of the annotations" in res.stderr and "/m/zzzz" in res.stderr
    assert sorted(journal_rows(tmp_path / "c")) == sorted(corpus.ids[:3])


def test_a_cluster_task_whose_share_is_empty_is_not_an_empty_selection(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(8, mix="tiny", seed=42)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    boxes = _boxes(tmp_path / "boxes.csv", corpus.ids[:1], "/m/0152hh")  # one image, four tasks
    out = tmp_path / "out"
    codes = []
    for index in range(4):
        res = run_cli("download", manifest, "-o", out, "--class", "/m/0152hh", "--annotations", boxes,
                      "--num-shards", "4", "--shard-index", index, *QUIET)
        codes.append(res.returncode)
        if res.returncode == 0 and "other tasks own them" in res.stderr:
            assert "nothing selected" not in res.stderr
    assert codes == [0, 0, 0, 0]
    assert list(journal_rows(out)) == corpus.ids[:1]
    # A selection that no task's share holds is an empty selection in every task.
    for index in range(2):
        res = run_cli("download", manifest, "-o", tmp_path / "none", "--subset", "validation",
                      "--num-shards", "2", "--shard-index", index, *QUIET)
        assert res.returncode == 4 and "'train' (8 rows)" in res.stderr


def test_retryable_failures_left_or_every_image_failed_exit_5(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=43)
    for image_id in corpus.ids[:2]:
        corpus.entries[image_id].fault = Fault("503", 1)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    res = run_cli("download", manifest, "-o", out, "--retries", "0", *QUIET)
    assert res.returncode == 5, res.stderr
    assert "incomplete: 2 image(s)" in res.stderr
    assert f"run the same command again: oidownload download {manifest} -o {out}" in res.stderr
    res = run_cli("download", manifest, "-o", out, "--retries", "0", *QUIET)
    assert res.returncode == 0, res.stderr
    assert [s for s, _, _ in journal_rows(out).values()] == ["ok"] * 6

    dead = Corpus.generate(3, mix="tiny", seed=44)
    for image_id in dead.ids:
        dead.entries[image_id].fault = Fault("404")
    origin = make_origin(dead)
    manifest = dead.write_manifest(tmp_path / "dead.csv", origin.base_url)
    res = run_cli("download", manifest, "-o", tmp_path / "dead", *QUIET)
    assert res.returncode == 5 and "every one of the job's 3 images failed" in res.stderr


def test_max_failure_rate_is_the_rate_of_the_whole_job(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(20, mix="tiny", seed=45)
    ids = corpus.ids
    for image_id in ids[:2]:
        corpus.entries[image_id].fault = Fault("404")  # final: 2 of 20 is 10%
    for image_id in ids[2:5]:
        corpus.entries[image_id].fault = Fault("503", 2)  # fails two runs, then recovers
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--retries", "0", *QUIET)
    first = run_cli(*args, "--max-failure-rate", "0.2")
    assert first.returncode == 5, first.stderr  # 10% final, three retryable left
    # The rerun retries three and all three fail again: 3 of 3 in this run, but the
    # job's final failures are still 2 of 20.
    second = run_cli(*args, "--max-failure-rate", "0.2")
    assert second.returncode == 5, second.stderr
    third = run_cli(*args, "--max-failure-rate", "0.2")
    assert third.returncode == 0, third.stderr
    before = sum(origin.requests.values())
    strict = run_cli(*args, "--max-failure-rate", "0.05")
    assert strict.returncode == 3, strict.stderr
    assert "2 of the job's 20 images failed for good (10.0%)" in strict.stderr
    assert sum(origin.requests.values()) == before  # judged from the journal, nothing fetched


# -- numbers ----------------------------------------------------------------------------

# Zero means something for these, so it is allowed; negative and absurd values are not.
ZERO_OK = {
    "--min-yes-votes": "no minimum of yes votes", "--retries": "no retry", "--max-redirects": "do not follow redirects", "--grace": "stop at once",
    "--max-failure-rate": "any final failure fails the run", "--shard-index": "the first task",
    "--min-confidence": "every label", "--seed": "a seed like any other", "--latency-ms": "no latency",
    "--jitter": "no jitter", "--port": "any free port",
}
REQUIRED = {"download": ["x.csv", "-o", "out"], "select": ["x.csv", "-o", "sel.csv"], "annotations": ["out"],
            "status": ["out"], "report": ["out"], "gallery": ["out"], "verify": ["out"]}


def _numeric_options() -> list[tuple[str, click.Option]]:
    found = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.types._NumberParamTypeBase | Duration):
                found.append((name, param))
    return found


def _parses(command: str, option: click.Option, value: str) -> bool:
    cmd = main.commands[command]
    flag = next(o for o in option.opts if o.startswith("--"))
    try:
        cmd.make_context(command, [*REQUIRED.get(command, []), flag, value])
    except click.BadParameter:
        return False
    return True


@pytest.mark.parametrize(("command", "option"), _numeric_options(), ids=lambda x: x if isinstance(x, str) else x.name)
def test_every_numeric_option_refuses_zero_negative_and_absurd_values(command: str, option: click.Option) -> None:
    kind = option.type
    assert isinstance(kind, Int | Float | Duration), f"{command} {option.opts}: a numeric option without bounds"
    flag = next(o for o in option.opts if o.startswith("--"))
    most = kind.most if isinstance(kind, Duration) else kind.max
    assert most is not None and most < 2**64
    above = str(most + 1) if isinstance(kind, Int) else repr(float(most) * 1.5 + 1)
    for bad in ("-1", "nan", "inf", above):
        assert not _parses(command, option, bad), f"{command} {flag} {bad} was accepted"
    if flag in ("--concurrency", "--per-host", "--processes", "--timeout", "--max-body-mb", "--resize"):
        assert not _parses(command, option, "1000000"), f"{command} {flag} 1000000 was accepted"
    assert _parses(command, option, "0") == (flag in ZERO_OK), f"{command} {flag} 0"
    assert _parses(command, option, "1")


def test_zero_timeout_is_a_usage_error_from_flags_and_environment(tmp_path: Path) -> None:
    res = run_cli("download", "x.csv", "-o", tmp_path / "out", "--timeout", "0")
    assert res.returncode == 2 and "--timeout" in res.stderr and "more than zero" in res.stderr
    res = run_cli("download", "x.csv", "-o", tmp_path / "out", env={"OIDOWNLOAD_CONCURRENCY": "0"})
    assert res.returncode == 2 and "--concurrency" in res.stderr
    res = run_cli("download", "x.csv", "-o", tmp_path / "out", "--max-body-mb", "nan")
    assert res.returncode == 2 and "--max-body-mb" in res.stderr
    assert not (tmp_path / "out").exists()


def test_one_exit_code_table_in_readme_and_help() -> None:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M))
    assert {int(c) for c in rows} == {int(c) for c in ExitCode}
    for code, meaning in MEANING.items():
        assert rows[str(int(code))] == meaning
    # select and verify end their help with their own codes (tests/test_conventions.py).
    for args in ([], ["download"]):
        shown = " ".join(run_cli(*args, "--help").stdout.split())
        for code, meaning in MEANING.items():
            assert f"{int(code)} {meaning}" in shown, (args, code)
