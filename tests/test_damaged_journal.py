"""Issue 15 item 10: a damaged journal, or a file that is not one, gets a message that
says what is wrong and what to do, from every command, and is never deleted or
changed."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from oidownload.testing.fixtures import StartOrigin
from oidownload.testing.origin import Corpus
from tests.conftest import run_cli


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _garbage(journal: Path) -> None:
    journal.write_bytes(os.urandom(8192))


def _other_program(journal: Path) -> None:
    journal.unlink()
    conn = sqlite3.connect(journal)
    conn.execute("CREATE TABLE songs(title TEXT, artist TEXT)")
    conn.execute("INSERT INTO songs VALUES('Blue', 'Joni')")
    conn.commit()
    conn.close()


def _newer(journal: Path) -> None:
    conn = sqlite3.connect(journal)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
    conn.commit()
    conn.close()


def _truncated(journal: Path) -> None:
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 3])


def _cut_pages(journal: Path) -> None:
    # Pages overwritten in the middle: the header is fine, the tables are not.
    data = bytearray(journal.read_bytes())
    data[4096 * 3: 4096 * 6] = os.urandom(4096 * 3)
    journal.write_bytes(bytes(data))


# (damage, what the download says, whether it is found before anything is written: pages
# overwritten deep inside are found when they are read, after the run's first commits)
DAMAGE: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "garbage": (_garbage, "damaged", True),
    "other program": (_other_program, "not an oidownload journal", True),
    "newer": (_newer, "newer oidownload", True),
    "truncated": (_truncated, "damaged", True),
    "overwritten pages": (_cut_pages, "damaged", False),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_journal_is_said_and_kept(tmp_path: Path, make_origin: StartOrigin, kind: str) -> None:
    corpus = Corpus.generate(300, mix="tiny", seed=181)
    origin = make_origin(corpus)
    manifest = corpus.write_manifest(tmp_path / "images.csv", origin.base_url)
    out = tmp_path / "out"
    args = ("download", manifest, "-o", out, "--format", "keep", "--progress", "none")
    assert run_cli(*args).returncode == 0
    journal = next((out / ".oidownload").glob("journal-*.sqlite"))
    damage, said, at_open = DAMAGE[kind]
    damage(journal)
    before = _digest(journal)
    requests = sum(origin.requests.values())

    # `status` reads only the summary tables: pages overwritten deep inside are found by
    # the commands that read the rows.
    commands = (args, ("status", out), ("report", out)) if at_open else (args, ("report", out))
    for cmd in commands:
        res = run_cli(*cmd)
        assert res.returncode == 1, (cmd, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        message = res.stderr.strip().splitlines()[-1]
        assert message.startswith("oidownload: error:") and str(journal) in message
        if cmd is args:
            assert said in message
        assert "move it aside" in message or "upgrade oidownload" in message
        assert journal.exists() and (_digest(journal) == before or not at_open)
    assert sum(origin.requests.values()) == requests  # nothing was fetched into a journal it could not keep

    # The advice works: moved aside, the next run finds the images in OUT and fetches none.
    journal.rename(journal.with_suffix(".damaged"))
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert sum(origin.requests.values()) == requests
    assert run_cli("status", out).returncode == 0


def test_a_journal_that_is_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".oidownload" / "journal-0-of-1.sqlite").mkdir(parents=True)
    manifest = tmp_path / "images.csv"
    Corpus.generate(3, mix="tiny", seed=182).write_manifest(manifest, "http://127.0.0.1:9")
    res = run_cli("download", manifest, "-o", out)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "not a file" in res.stderr
    assert (out / ".oidownload" / "journal-0-of-1.sqlite").is_dir()
