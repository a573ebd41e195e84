"""Hostile inputs: URLs that only look valid, lenient ImageIDs on a rerun, pipes and
stdin, endless lines, and a truncated .gz. Good rows are served by the local origin
and must all be downloaded, whatever the hostile rows around them do."""

from __future__ import annotations

import csv
import gzip
import io
import os
import resource
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from oidownload.inputs.rows import V3_COLUMNS
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import journal_rows, run_cli
from tests.hostile.conftest import bad_rows

QUICK = ["--progress", "none", "--retries", "0", "--timeout", "5"]

# Each passed the old pattern (http(s)://, no spaces) and crashed or blocked the run.
UNUSABLE_URLS = [
    "http://127.0.0.1:99999/x.jpg",
    "http://127.0.0.1:abc/x.jpg",
    "http://a\\b.example/x.jpg",
    "http://[::1/x.jpg",
    "http://x[::1]/x.jpg",
    "http://\u2100.example/x.jpg",
    "http://a..b.example/x.jpg",
    "http://xn--zz.example/x.jpg",
    "http://127.0.0.1:0/x.jpg",
    "http://" + "a" * 64 + ".example/x.jpg",
]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _with(line: str, **changes: str) -> str:
    """A manifest line with some fields replaced (by column name)."""
    fields = next(csv.reader([line]))
    for name, value in changes.items():
        fields[V3_COLUMNS.index(name)] = value
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def test_urls_that_only_look_valid_are_bad_rows_and_the_run_goes_on(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=41)
    origin = make_origin(corpus)
    lines = _lines(corpus.write_manifest(tmp_path / "good.csv", origin.base_url))
    bad = [_with(lines[1], ImageID=f"{0xbad00 + i:016x}", OriginalURL=url) for i, url in enumerate(UNUSABLE_URLS)]
    # A bad thumbnail fails the row too, even when only originals are fetched.
    bad.append(_with(lines[2], ImageID=f"{0xbad99:016x}", Thumbnail300KURL="http://127.0.0.1:70000/t.jpg"))
    manifest = tmp_path / "images.csv"
    manifest.write_text("".join(lines[:21] + bad + lines[21:]), encoding="utf-8")

    res = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK, timeout=120)

    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}  # before and after the bad rows
    found = bad_rows(tmp_path / "out")
    assert sorted(found) == list(range(22, 22 + len(bad)))
    for n in range(len(UNUSABLE_URLS)):
        raw_id, detail = found[22 + n]
        assert raw_id == f"{0xbad00 + n:016x}"
        assert detail.startswith(f"{manifest}:{22 + n}: OriginalURL"), detail
    assert "Thumbnail300KURL" in found[22 + len(UNUSABLE_URLS)][1]


def _done_once(tmp_path: Path, make_origin: StartOrigin) -> tuple[Corpus, Path, list[str]]:
    corpus = Corpus.generate(0, mix="tiny", seed=42, ids=["0123456789abcdef", "00000000000000aa", "0fedcba987654321"])
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    first = run_cli("download", manifest, "-o", tmp_path / "out", *QUICK)
    assert first.returncode == 0, first.stderr
    assert {s for s, _, _ in journal_rows(tmp_path / "out").values()} == {"ok"}
    return corpus, manifest, _lines(manifest)


def test_lenient_spellings_of_finished_ids_are_bad_rows_on_a_rerun(tmp_path: Path, make_origin: StartOrigin) -> None:
    """int(x, 16) reads each of these as a finished id; only 16 ASCII hex digits may be."""
    _, _, lines = _done_once(tmp_path, make_origin)
    spellings = [
        "+123456789abcdef",  # sign
        "0x000000000000aa",  # prefix
        "1_23456789abcdef",  # digit separator
        " 123456789abcdef",  # padding
        "0123456789abcde ",
        "\u0660\u0661\u0662\u0663456789abcdef",  # Arabic-Indic digits
        "0fedcba98765432\uff11",  # a fullwidth digit
    ]
    rerun = tmp_path / "rerun.csv"
    rerun.write_text("".join(lines) + "".join(_with(lines[1], ImageID=s) for s in spellings), encoding="utf-8")

    res = run_cli("download", rerun, "-o", tmp_path / "out", *QUICK, "--log-format", "json")

    assert res.returncode == 0, res.stderr
    found = bad_rows(tmp_path / "out")
    assert sorted(found) == list(range(5, 5 + len(spellings)))
    assert [found[5 + i][0] for i in range(len(spellings))] == spellings
    assert all("is not 16 hex digits" in detail for _, detail in found.values())
    assert '"skipped": 3' in res.stderr  # only the three real ids were already done


def _feed(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fd, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_piped_gzip_and_stdin(tmp_path: Path, make_origin: StartOrigin) -> None:
    """`download <(zcat images.csv.gz)`, a gzip stream in a pipe (known by its magic
    bytes, not its name), and `-` for stdin: each is read once, header and rows."""
    corpus = Corpus.generate(30, mix="tiny", seed=43)
    origin = make_origin(corpus)
    text = corpus.write_manifest(tmp_path / "images.csv", origin.base_url).read_bytes()

    for name, data in (("plain", text), ("gzip", gzip.compress(text))):
        read_end, write_end = os.pipe()
        feeder = _feed(write_end, data)
        out = tmp_path / f"out-{name}"
        res = subprocess.run(
            [sys.executable, "-m", "oidownload", "download", f"/dev/fd/{read_end}", "-o", str(out), *QUICK],
            pass_fds=(read_end,), capture_output=True, text=True, timeout=120,
        )
        os.close(read_end)
        feeder.join(10)
        assert res.returncode == 0, (name, res.stderr)
        assert {i: s for i, (s, _, _) in journal_rows(out).items()} == {i: "ok" for i in corpus.ids}, name

    piped = subprocess.run(
        [sys.executable, "-m", "oidownload", "download", "-", "-o", str(tmp_path / "out-stdin"), *QUICK],
        input=gzip.compress(text), capture_output=True, timeout=120,
    )
    assert piped.returncode == 0, piped.stderr.decode()
    assert {i: s for i, (s, _, _) in journal_rows(tmp_path / "out-stdin").items()} == {i: "ok" for i in corpus.ids}

    # A named FIFO: downloaded from, and never opened again by `report` (that would
    # wait for a writer forever).
    fifo = tmp_path / "images.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_bytes, args=(gzip.compress(text),), daemon=True)
    feeder.start()
    res = subprocess.run([sys.executable, "-m", "oidownload", "download", str(fifo), "-o", str(tmp_path / "out-fifo"),
                          *QUICK], capture_output=True, text=True, timeout=120)
    feeder.join(10)
    assert res.returncode == 0, res.stderr
    report = run_cli("report", tmp_path / "out-fifo", timeout=30)
    assert report.returncode == 0, report.stderr
    assert "was a pipe" in report.stderr
    assert f"{len(corpus.ids)} rows in" in report.stdout


def test_a_pipe_that_must_be_read_twice_is_a_clear_error(tmp_path: Path) -> None:
    corpus = Corpus.generate(5000, mix="tiny", seed=44)
    text = corpus.write_manifest(tmp_path / "images.csv", "http://127.0.0.1:9").read_bytes()
    assert len(text) > 1 << 20  # more than the part of a pipe kept for a second look
    read_end, write_end = os.pipe()
    feeder = _feed(write_end, text)
    # A seeded sample reads the input once to choose, then again to write the rows.
    res = subprocess.run(
        [sys.executable, "-m", "oidownload", "select", f"/dev/fd/{read_end}", "--limit", "5", "--seed", "1",
         "-o", str(tmp_path / "sel.csv")],
        pass_fds=(read_end,), capture_output=True, text=True, timeout=60,
    )
    os.close(read_end)
    feeder.join(10)
    assert res.returncode == 1, res.stderr
    assert "can be read only once" in res.stderr and "Traceback" not in res.stderr


def _limit_memory() -> None:
    # A run that reads a whole endless line dies of MemoryError within this; the
    # bounded reader never comes close.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_dev_zero_as_input_is_a_clear_error(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "oidownload", "download", "/dev/zero", "-o", str(tmp_path / "out"), "--progress", "none"],
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory,
    )
    assert res.returncode == 1, res.stderr
    assert "the first line is longer than" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 60


def test_an_overlong_line_is_a_bad_row_and_is_never_held(tmp_path: Path, make_origin: StartOrigin) -> None:
    """A 3 GB line between good rows, through a pipe, under a 2 GB address-space limit:
    a reader that kept the line would die; this one makes it a bad row and downloads
    the rows around it."""
    corpus = Corpus.generate(20, mix="tiny", seed=45)
    origin = make_origin(corpus)
    lines = _lines(corpus.write_manifest(tmp_path / "good.csv", origin.base_url))
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as f:
            f.write("".join(lines[:11]).encode() + b"%016x,train," % 0xbad)
            chunk = b"x" * (1 << 20)
            for _ in range(3 << 10):
                f.write(chunk)
            f.write(("\n" + "".join(lines[11:])).encode())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    res = subprocess.run(
        [sys.executable, "-m", "oidownload", "download", f"/dev/fd/{read_end}", "-o", str(tmp_path / "out"), *QUICK],
        pass_fds=(read_end,), capture_output=True, text=True, timeout=180, preexec_fn=_limit_memory,
    )
    os.close(read_end)
    feeder.join(10)
    assert res.returncode == 0, res.stderr[-3000:]
    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in corpus.ids} == {i: "ok" for i in corpus.ids}
    assert bad_rows(tmp_path / "out") == {12: ("", f"/dev/fd/{read_end}:12: the line is longer than 65536 characters")}


def test_a_truncated_gz_downloads_every_row_before_the_damage_in_the_first_run(
        tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(700, mix="tiny", seed=46)
    origin = make_origin(corpus)
    text = corpus.write_manifest(tmp_path / "images.csv", origin.base_url).read_bytes()
    packed = gzip.compress(text)
    damaged = packed[: len(packed) * 2 // 3]
    readable = zlib.decompressobj(31).decompress(damaged)
    complete = readable[: readable.rindex(b"\n") + 1].decode().splitlines()
    before = [line.split(",")[0] for line in complete[1:]]  # every whole row before the damage
    assert 300 < len(before) < 690 and len(before) % 512
    path = tmp_path / "images.csv.gz"
    path.write_bytes(damaged)

    res = run_cli("download", path, "-o", tmp_path / "out", *QUICK)

    journal = journal_rows(tmp_path / "out")
    assert {i: journal[i][0] for i in before if i in journal} == {i: "ok" for i in before}
    assert sum(origin.requests.values()) == len(journal)
    assert res.returncode == 1
    assert f"reading stopped after line {len(complete)}" in res.stderr, res.stderr
