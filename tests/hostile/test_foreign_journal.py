"""Another program's SQLite database at the journal's path, with our table names but not
our columns: `download` said `OperationalError: no such column: input` while the other
commands said "not an oidownload journal"; now every command says the same, and the
file is left as it was."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import run_cli


def test_a_database_with_our_table_names_but_not_our_columns(tmp_path: Path, make_origin: StartOrigin) -> None:
    corpus = Corpus.generate(20, mix="tiny", seed=283)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--format", "keep", "--progress", "none")
    assert run_cli(*args).returncode == 0
    journal = next((out / ".oidownload").glob("journal-*.sqlite"))
    journal.unlink()
    conn = sqlite3.connect(journal)
    conn.executescript("CREATE TABLE outcomes(id INTEGER PRIMARY KEY, title TEXT);"
                       "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);"
                       "CREATE TABLE counts(status TEXT PRIMARY KEY, n INTEGER);"
                       "INSERT INTO outcomes VALUES (1, 'Blue');")
    conn.close()
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    requests = sum(origin.requests.values())
    for cmd in (args, ("status", out), ("report", out), ("verify", out, "--progress", "none")):
        res = run_cli(*cmd)
        assert res.returncode == 1 and "Traceback" not in res.stderr, (cmd, res.stderr)
        message = res.stderr.strip().splitlines()[-1]
        assert f"{journal} is not an oidownload journal (its table counts has no column bytes); move it aside" \
            in message, (cmd, message)
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
    assert sum(origin.requests.values()) == requests
