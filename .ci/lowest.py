#!/usr/bin/env python3
"""Prints pip constraints that pin every dependency of pyproject.toml (the core and
the given extras) to its lowest allowed version, its `>=` floor: installing with them
checks that the floors we publish still work. Usage: lowest.py [EXTRA...] > c.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]
pins: dict[str, str] = {}
for req in requirements:
    spec, _, marker = req.partition(";")
    name = re.match(r"\s*([A-Za-z0-9._-]+)", spec)
    floor = re.search(r">=\s*([^,\s]+)", spec)
    if name is None or floor is None:
        continue  # no floor: nothing to pin
    pins.setdefault(name.group(1).lower(), f"{name.group(1)}=={floor.group(1)}" + (f"; {marker.strip()}" if marker.strip() else ""))
print("\n".join(pins.values()))
