"""Class names ⇄ MIDs, from a class-descriptions file.

Reads the V3 `class-descriptions.csv` (no header) and the V6/V7
`oidv{6,7}-class-descriptions.csv` (with or without a `LabelName,DisplayName`
header), with standard CSV quoting: "Lemon, lime and bitters", and doubled quotes.
Names match case-insensitively and exactly; a name several MIDs share selects them all.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oidownload.core.errors import ConfigError, InputError
from oidownload.inputs.text import text_lines

# Real MIDs are under 16 characters; the bound keeps a hostile one out of a database
# index (PostgreSQL refuses an index row over 2704 bytes, and then every later load).
MID_RE = re.compile(r"/[mgt]/[0-9a-z_]{1,64}")


@dataclass
class ClassDescriptions:
    names: dict[str, str] = field(default_factory=dict)  # MID → display name
    _by_name: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def load(cls, path: Path) -> ClassDescriptions:
        pairs = []
        for n, row in enumerate(csv.reader(text_lines(path)), 1):
            # oidv6-attributes-description.csv may open with MID,Name (unconfirmed): tolerated.
            if not row or (n == 1 and row[0].strip() in ("LabelName", "LabelName ", "MID")):
                continue
            if len(row) < 2 or not MID_RE.fullmatch(row[0].strip()):
                raise InputError(f"{path}:{n}: expected 'MID,DisplayName', found {','.join(row)[:80]!r}")
            pairs.append((row[0].strip(), row[1]))
        out = cls.from_pairs(pairs)
        if not out.names:
            raise InputError(f"{path}: no class descriptions in it")
        return out

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> ClassDescriptions:
        """From (MID, name) pairs already read elsewhere (the database's classes table)."""
        out = cls()
        for mid, name in pairs:
            out.names[mid] = name
            out._by_name[name.casefold()].append(mid)
        return out

    def name(self, mid: str) -> str:
        return self.names.get(mid, mid)

    def resolve(self, wanted: Iterable[str]) -> set[str]:
        """MIDs for names or MIDs. An unknown name raises ConfigError naming the closest."""
        mids: set[str] = set()
        for raw in wanted:
            item = raw.strip()
            if not item:
                continue
            if MID_RE.fullmatch(item):
                mids.add(item)
                continue
            found = self._by_name.get(item.casefold())
            if not found:
                close = difflib.get_close_matches(item.casefold(), list(self._by_name), n=5, cutoff=0.6)
                shown = ", ".join(repr(self.names[self._by_name[c][0]]) for c in close)
                hint = f"; did you mean {shown}?" if close else ""
                raise ConfigError(f"unknown class name {item!r}{hint}")
            mids.update(found)
        return mids


def read_classes_file(path: Path) -> list[str]:
    """One class name or MID a line; blank lines and # comments are skipped. A line is
    a name as it is (a name may hold commas), not CSV."""
    try:
        return [line.strip() for line in text_lines(path) if line.strip() and not line.lstrip().startswith("#")]
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
