"""What a download selected with, as its journals remember it (the meta keys `selection`
and `selection_options`), read once into one typed record for every command that
falls back on it (annotations, gallery)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oidownload.state.reader import StateDir


def _dicts(values: list[str]) -> list[dict[str, Any]]:
    found = []
    for value in values:
        try:
            d = json.loads(value)
        except ValueError:
            continue
        if isinstance(d, dict):
            found.append(d)
    return found


@dataclass(frozen=True)
class RememberedSelection:
    """Every task's journal remembers its own: the annotation files and classes are the
    union over them, the class descriptions and the database the first one named.
    `classes` None: the download selected no class (every class counts)."""

    annotations: tuple[Path, ...] = ()
    classes: frozenset[str] | None = None
    class_descriptions: Path | None = None
    db: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the selection flags as given (the lock's)

    @classmethod
    def read(cls, state: StateDir) -> RememberedSelection:
        remembered = _dicts(state.meta("selection"))
        classes = frozenset(str(c) for m in remembered for c in m.get("classes") or [])
        return cls(
            annotations=tuple(dict.fromkeys(Path(str(a)) for m in remembered for a in m.get("annotations") or [])),
            classes=classes or None,
            class_descriptions=next(
                (Path(str(m["class_descriptions"])) for m in remembered if m.get("class_descriptions")), None),
            db=next((str(m["db"]) for m in remembered if m.get("db")), None),
            options=next(iter(_dicts(state.meta("selection_options"))), {}),
        )
