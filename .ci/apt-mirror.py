#!/usr/bin/env python3
"""Prints the Debian mirror this machine's apt already uses for SUITE (default bookworm):
the first URI of an enabled `deb` source that carries the suite, from the deb822
*.sources files under APT_DIR/sources.list.d/ or the one-line *.list files and
APT_DIR/sources.list. Exits 1 when there is none. Usage: apt-mirror.py [SUITE [APT_DIR]]
"""

from __future__ import annotations

import sys
from pathlib import Path


def deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return stanzas


def one_line(text: str) -> list[tuple[str, str]]:
    """(uri, suite) of each `deb` line; an [option list] may follow `deb`."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append((words[0], words[1]))
    return found


def mirror(suite: str, apt: Path) -> str | None:
    parts = apt / "sources.list.d"
    files = sorted(parts.glob("*.sources")) + sorted(parts.glob("*.list")) if parts.is_dir() else []
    if (apt / "sources.list").is_file():
        files.insert(0, apt / "sources.list")
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for s in deb822(text):
                enabled = s.get("enabled", "yes").lower() != "no"
                if enabled and "deb" in s.get("types", "").split() and suite in s.get("suites", "").split():
                    uris = s.get("uris", "").split()
                    if uris:
                        return uris[0]
        else:
            for uri, line_suite in one_line(text):
                if line_suite == suite:
                    return uri
    return None


if __name__ == "__main__":
    found = mirror(sys.argv[1] if len(sys.argv) > 1 else "bookworm", Path(sys.argv[2] if len(sys.argv) > 2 else "/etc/apt"))
    if found is None:
        sys.exit("apt-mirror: no deb source for that suite in this machine's apt configuration")
    print(found.rstrip("/"))
