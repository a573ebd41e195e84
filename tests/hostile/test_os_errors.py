"""Issue 15 item 11 and issue 14 item 7: the machine's limits. Permission denied on OUT
is fatal (exit 1, the journal intact), like a full disk; a low RLIMIT_NOFILE lowers
the concurrency to fit, with a warning, and every written image is journaled."""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Latency
from tests.conftest import journal_rows, obey_permissions
from tests.hostile import manifests


def _cli(*args: object, preexec: Callable[[], None] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oidownload", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec, env=dict(os.environ))


def test_an_unwritable_subset_folder_is_fatal(tmp_path: Path, make_origin: StartOrigin) -> None:
    # Root may write anywhere: as root the command runs without the capabilities that allow it.
    drop = obey_permissions if os.geteuid() == 0 else None
    corpus = Corpus.generate(30, mix="tiny", seed=171)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train").chmod(0o555)  # the subset folder may not be written
    res = _cli("download", manifest, "-o", out, "--format", "keep", "--progress", "none", preexec=drop)
    assert res.returncode == 1, res.stderr
    assert "Permission denied" in res.stderr and "fix the permissions" in res.stderr
    assert "Traceback" not in res.stderr
    rows = journal_rows(out)
    assert not any(status == "write_error" for status, _, _ in rows.values())  # the disk's fault, not the images'

    (out / "train").chmod(0o777)
    again = _cli("download", manifest, "-o", out, "--format", "keep", "--progress", "none", preexec=drop)
    assert again.returncode == 0, again.stderr
    rows = journal_rows(out)
    assert len(rows) == 30 and all(status == "ok" for status, _, _ in rows.values())


def _limit_files(n: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def test_a_low_file_limit_lowers_the_concurrency(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(200, mix="tiny", seed=172)
    # Twenty hosts, each slow enough that every slot is busy at once.
    origins = [make_origin(corpus, latency=Latency(0.05)) for _ in range(20)]
    manifest = tmp_path / "images.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(manifests.HEADER)
        w.writerows(corpus.manifest_row(i, origins[n % 20].base_url) for n, i in enumerate(corpus.ids))
    out = tmp_path / "out"
    res = _cli("download", manifest, "-o", out, "--resize", "64", "--concurrency", "64",
               "--processes", "2", "--progress", "none", preexec=_limit_files(64))
    assert res.returncode == 0, res.stderr
    assert "open-file limit (ulimit -n 64)" in res.stderr and "--concurrency lowered" in res.stderr
    journal = journal_rows(out)
    assert len(journal) == 200 and all(status == "ok" for status, _, _ in journal.values())
    on_disk = {p.stem for p in (out / "train").rglob("*.jpg")}
    assert on_disk == set(corpus.ids)
