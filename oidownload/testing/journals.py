"""The journal as the tests read it: every outcome and bad row under a state dir,
typed, without each test writing its own SQL. Reads only; a journal a killed run left
half made (no tables yet) reads as empty.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oidownload.core.ids import int_to_id


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One outcome; `raw` keeps every column, for the tests that look at a rare one."""

    image_id: str
    status: str
    detail: str
    attempts: int
    source: str | None
    location: str | None
    verified: int
    raw: dict[str, Any]


def state_of(path: Path) -> Path:
    """The state dir itself, or OUT's default one (OUT/.oidownload)."""
    return path / ".oidownload" if (path / ".oidownload").is_dir() else path


def _connections(path: Path, read_only: bool) -> Iterator[sqlite3.Connection]:
    state = state_of(path)
    files = [state] if state.is_file() else sorted(state.glob("journal-*.sqlite"))
    for file in files:
        conn = (sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=5) if read_only
                else sqlite3.connect(file))
        try:
            yield conn
        finally:
            conn.close()


def outcomes(path: Path, *, read_only: bool = False) -> dict[str, JournalRow]:
    """ImageID → its outcome, from every journal of a state dir, OUT, or one journal
    file. With read_only, a journal a live run holds is read without taking a lock
    that could stall it, and one that cannot be read yet reads as empty."""
    rows: dict[str, JournalRow] = {}
    for conn in _connections(path, read_only):
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute("SELECT * FROM outcomes").fetchall()
        except sqlite3.Error:
            continue  # killed before its tables were made, or busy (read_only)
        for r in found:
            raw = dict(r)
            image_id = int_to_id(raw["id"])
            rows[image_id] = JournalRow(image_id, raw["status"], raw["detail"], raw["attempts"], raw["source"],
                                        raw["location"], raw["verified"], raw)
    return rows


def statuses(path: Path, *, read_only: bool = False) -> dict[str, str]:
    """ImageID → status."""
    return {i: r.status for i, r in outcomes(path, read_only=read_only).items()}


def bad_rows(path: Path) -> dict[int, tuple[str, str]]:
    """Input line → (raw id, detail) of every bad row journaled (any input)."""
    rows: dict[int, tuple[str, str]] = {}
    for conn in _connections(path, False):
        for line, raw_id, detail in conn.execute("SELECT line, raw_id, detail FROM bad_rows"):
            rows[line] = (raw_id, detail)
    return rows
