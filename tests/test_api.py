"""The Python API: oidownload.download() from a script and from inside a running event
loop (as in Jupyter), download_async(), and clean stops from an interrupt or a cancel.
Each scenario is a real script run by a fresh interpreter."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import oidownload
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Fault, Latency
from tests.conftest import journal_rows


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text("import asyncio, json, sys\nimport oidownload\n\n" + textwrap.dedent(body))
    return path


def _run(script: Path, *args: object) -> dict[str, Any]:
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


RESULT = "{'exit_code': r.exit_code, 'counts': r.counts, 'output': r.output, 'ok': r.ok}"


def _check_files(out: Path, corpus: Corpus, ids: list[str], size: int) -> None:
    for image_id in ids:
        with Image.open(out / "train" / image_id[:3] / f"{image_id}.jpg") as im:
            assert max(im.size) <= size
    assert {i for i, (s, _, _) in journal_rows(out).items() if s == "ok"} == set(ids)


def test_download_from_a_script_and_from_a_running_loop(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=100)
    corpus.entries[corpus.ids[0]].fault = Fault("404")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    good = corpus.ids[1:]

    plain = _script(tmp_path, f"""
        if __name__ == "__main__":
            r = oidownload.download(sys.argv[1], sys.argv[2], resize=64, processes=1, progress="none")
            print(json.dumps({RESULT}))
    """)
    got = _run(plain, manifest, tmp_path / "a")
    assert got == {"exit_code": 0, "counts": {"ok": 5, "http_4xx": 1}, "output": str(tmp_path / "a"), "ok": True}
    _check_files(tmp_path / "a", corpus, good, 64)

    # Inside a running loop, as a notebook cell runs: the sync call and the async one.
    in_loop = _script(tmp_path, f"""
        async def main():
            loop = asyncio.get_running_loop()
            r = oidownload.download([sys.argv[1]], sys.argv[2], resize=48, processes=1, progress="none",
                                    subset=["train"])
            first = {RESULT}
            ticks = 0
            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1
            ticker = loop.create_task(tick())
            r = await oidownload.download_async(sys.argv[1], sys.argv[3], resize=48, processes=1,
                                                progress="none", max_failure_rate=0.1)
            ticker.cancel()
            print(json.dumps({{"sync": first, "async": {RESULT}, "ticks": ticks}}))

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    got = _run(in_loop, manifest, tmp_path / "b", tmp_path / "c")
    assert got["sync"] == {"exit_code": 0, "counts": {"ok": 5, "http_4xx": 1}, "output": str(tmp_path / "b"), "ok": True}
    assert got["async"]["exit_code"] == 3 and got["async"]["counts"] == {"ok": 5, "http_4xx": 1}  # 1/6 > 10%
    assert got["ticks"] > 5  # the caller's loop kept running during the await
    _check_files(tmp_path / "b", corpus, good, 48)
    _check_files(tmp_path / "c", corpus, good, 48)
    served = corpus.original(good[0])
    assert hashlib.md5(served).digest()  # the origin served real bytes; each output was fetched once
    assert origin.requests[f"/o/{good[0]}_o.jpg"] == 3


def test_interrupt_and_cancel_stop_cleanly_and_the_same_call_resumes(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(40, mix="tiny", seed=101)
    origin = make_origin(corpus, latency=Latency(0.15))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    opts = 'concurrency=2, processes=1, progress="none", format="keep"'
    # A notebook's loop: a plain run_until_complete, so an interrupt is a KeyboardInterrupt.
    interrupted = _script(tmp_path, f"""
        async def main():
            print("started", flush=True)
            r = oidownload.download(sys.argv[1], sys.argv[2], {opts})
            print(json.dumps({RESULT}), flush=True)

        if __name__ == "__main__":
            asyncio.new_event_loop().run_until_complete(main())
    """)
    out = tmp_path / "a"
    proc = subprocess.Popen([sys.executable, str(interrupted), str(manifest), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / ".oidownload").is_dir() or len(_rows(out)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    got = json.loads(stdout.strip().splitlines()[-1])
    assert got["exit_code"] == 130 and 3 <= sum(got["counts"].values()) < 40, stderr
    assert "call download() again with the same arguments" in stderr
    assert len(_rows(out)) == sum(got["counts"].values())

    cancelled = _script(tmp_path, f"""
        async def main():
            import glob, sqlite3
            task = asyncio.ensure_future(oidownload.download_async(sys.argv[1], sys.argv[2], {opts}))
            rows = 0
            while rows < 3:  # cancel once a few images are journaled
                await asyncio.sleep(0.1)
                for journal in glob.glob(sys.argv[2] + "/.oidownload/journal-*.sqlite"):
                    try:
                        rows = sqlite3.connect(journal).execute("SELECT count(*) FROM outcomes").fetchone()[0]
                    except sqlite3.Error:
                        pass
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                print(json.dumps({{"cancelled": True}}))

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    assert _run(cancelled, manifest, tmp_path / "b") == {"cancelled": True}
    partial = len(_rows(tmp_path / "b"))
    assert 0 < partial < 40

    again = _script(tmp_path, f"""
        if __name__ == "__main__":
            r = oidownload.download(sys.argv[1], sys.argv[2], {opts})
            print(json.dumps({RESULT}))
    """)
    for folder, before in ((out, sum(got["counts"].values())), (tmp_path / "b", partial)):
        done = _run(again, manifest, folder)
        assert done["exit_code"] == 0 and sum(done["counts"].values()) == 40 - before
        assert len(_rows(folder)) == 40


def _rows(out: Path) -> dict[str, tuple[str, str, int]]:
    import sqlite3

    try:
        return journal_rows(out)
    except sqlite3.Error:
        return {}


def test_options_are_checked_like_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(oidownload.ConfigError, match="--timeout"):
        oidownload.download("x.csv", tmp_path / "out", timeout=0)
    with pytest.raises(oidownload.ConfigError, match="--format"):
        oidownload.download("x.csv", tmp_path / "out", format="gif")
    with pytest.raises(TypeError, match="did you mean resize"):
        oidownload.download("x.csv", tmp_path / "out", resise=640)  # type: ignore[call-arg]  # mypy says so too
    with pytest.raises(oidownload.InputError, match="no such file"):
        oidownload.download(tmp_path / "x.csv", tmp_path / "out", progress="none")
    assert not (tmp_path / "out").exists()
    params = oidownload.api.parameters(["a.csv", "b.csv"], "out", {"class_": "Snowman", "boxes_only": True,
                                                                   "deadline": "10m", "subset": ("train", "test")})
    assert params["inputs"] == (Path("a.csv"), Path("b.csv")) and params["class_names"] == ("Snowman",)
    assert params["boxes_only"] is True and params["deadline"] == 600.0 and params["subsets"] == ("train", "test")


def test_ctrl_c_under_asyncio_run_stops_within_grace_and_raises(tmp_path: Path, make_origin: StartOrigin) -> None:
    """asyncio.run's own SIGINT handler only cancels its task, which cannot happen while
    the sync call blocks the loop: the run used to go on to the end."""
    corpus = Corpus.generate(60, mix="tiny", seed=102)
    origin = make_origin(corpus, latency=Latency(0.3))
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    script = _script(tmp_path, """
        import time
        async def main():
            started = time.monotonic()
            try:
                oidownload.download(sys.argv[1], sys.argv[2], concurrency=2, processes=1, progress="none",
                                    format="keep", grace=2)
            except KeyboardInterrupt as exc:
                print(json.dumps({"interrupted": str(exc), "seconds": time.monotonic() - started}), flush=True)

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(manifest), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_rows(out)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    got = json.loads(stdout.strip().splitlines()[-1])
    assert "the same call resumes" in got["interrupted"]
    assert stopped_after < 2 + 5, stopped_after  # --grace, and the interpreter's start-up and exit
    assert 3 <= len(_rows(out)) < 60  # the journal is saved, and the run did not go on to the end


def test_status_select_annotations_and_the_job_counts(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(6, mix="tiny", seed=103)
    corpus.entries[corpus.ids[0]].fault = Fault("404")
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    twice = _script(tmp_path, """
        if __name__ == "__main__":
            runs = []
            for _ in range(2):
                r = oidownload.download(sys.argv[1], sys.argv[2], processes=1, progress="none")
                runs.append({"counts": r.counts, "job": r.job_counts, "ok": r.job.ok,
                              "final": r.job.final_failures})
            print(json.dumps(runs))
    """)
    res = subprocess.run([sys.executable, str(twice), str(manifest), str(out)], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr
    first, again = json.loads(res.stdout.strip().splitlines()[-1])
    whole = {"ok": 5, "http_4xx": 1}
    assert first == {"counts": whole, "job": whole, "ok": 5, "final": 1}
    assert again == {"counts": {}, "job": whole, "ok": 5, "final": 1}  # a rerun: nothing to do, the job is whole

    st = oidownload.status(out)
    assert isinstance(st, oidownload.JobStatus)
    assert st.counts == whole and st.total == 6 and st.ok == 5 and st.final_failures == 1 and st.retryable == 0
    assert st.by_source == {"original": 5} and st.bytes["ok"] > 0
    with pytest.raises(oidownload.InputError, match="no journal"):
        oidownload.status(tmp_path / "elsewhere")

    picked = oidownload.select(manifest, tmp_path / "two.csv", limit=2)
    assert isinstance(picked, oidownload.SelectResult)
    assert (picked.rows, picked.exit_code, picked.why) == (2, 0, None)
    assert len((tmp_path / "two.csv").read_text().splitlines()) == 3
    none = oidownload.select(manifest, tmp_path / "none.csv", subset=["test"])
    assert none.rows == 0 and none.exit_code == 4 and none.why
    with pytest.raises(oidownload.ConfigError, match="--seed"):
        oidownload.select(manifest, tmp_path / "x.csv", seed=1)
    with pytest.raises(TypeError, match="select\\(\\) got an unexpected keyword argument 'resize'"):
        oidownload.select(manifest, tmp_path / "x.csv", resize=64)  # type: ignore[call-arg]  # mypy says so too

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
                     + "".join(f"{i},xclick,/m/0152hh,1,0.1,0.5,0.2,0.6\n" for i in corpus.ids))
    exported = oidownload.annotations(out, format="coco", annotations=[boxes])
    assert isinstance(exported, oidownload.ExportResult)
    assert (exported.images, exported.boxes) == (5, 5)
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert len(coco["annotations"]) == 5
    with pytest.raises(oidownload.ConfigError, match="--format"):
        oidownload.annotations(out, format="pascal")
    with pytest.raises(oidownload.ConfigError, match="object store"):
        oidownload.annotations("s3://bucket/x", format="coco")


def test_the_public_names_are_pinned() -> None:
    assert sorted(oidownload.__all__) == sorted([
        "ConfigError", "DownloadResult", "ExportResult", "InputError", "JobStatus", "OidownloadError", "OutputError",
        "SelectResult", "__version__", "annotations", "download", "download_async", "select", "status",
    ])
    for name in oidownload.__all__:
        assert getattr(oidownload, name) is not None
    from oidownload.dataset.annotations import (
        BOXES,  # the submodule of that name is still importable
    )

    assert BOXES and callable(oidownload.annotations)
