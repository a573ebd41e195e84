"""The Open Images class hierarchy (`bbox_labels_600_hierarchy.json`): parent → child
MID edges, each a Subcategory (a kind of the parent) or a Part (a piece of it).

A class may sit under several parents; `descendants` follows Subcategory edges at any
depth, and Part edges only when asked. Everything here works on MIDs.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oidownload.core.errors import InputError
from oidownload.dataset.classes import MID_RE

# The JSON's own keys: a node is {"LabelName": MID, "Subcategory": [...], "Part": [...]}.
_KEYS = {"LabelName", "Subcategory", "Part"}
# The real file nests 6 levels; a deeper one is not the Open Images shape (and would
# only be a way to exhaust the stack).
MAX_DEPTH = 64
MAX_BYTES = 64 * 1024 * 1024


class Relation(enum.StrEnum):
    SUBCATEGORY = "subcategory"
    PART = "part"


@dataclass(frozen=True, slots=True)
class Reach:
    """A descendant as seen from an ancestor: the fewest edges to it, and whether every
    way there crosses a Part edge (then only --with-parts reaches it)."""

    depth: int
    via_part: bool


@dataclass
class Hierarchy:
    root: str
    children: dict[str, list[tuple[str, Relation]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Hierarchy:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise InputError(f"{path}: over {MAX_BYTES >> 20} MB, not a class hierarchy")
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{path}: not JSON ({str(exc)[:80]}); expected the Open Images class hierarchy "
                             "(bbox_labels_600_hierarchy.json)") from None
        return cls.from_json(doc, str(path))

    @classmethod
    def from_json(cls, doc: object, name: str = "hierarchy") -> Hierarchy:
        """Validates the shape: nested {"LabelName": MID, "Subcategory"|"Part": [nodes]}."""
        def bad(where: str, what: str) -> InputError:
            return InputError(f"{name}: not the Open Images hierarchy shape at {where}: {what}; expected nested "
                              '{"LabelName": "/m/...", "Subcategory": [...], "Part": [...]} objects')

        if not isinstance(doc, dict):
            raise bad("the top", f"a JSON {type(doc).__name__}, not an object")
        out = cls(root="")
        stack: list[tuple[object, str, int]] = [(doc, "the top", 0)]
        while stack:
            node, where, depth = stack.pop()
            if not isinstance(node, dict):
                raise bad(where, f"a JSON {type(node).__name__}, not an object")
            extra = set(node) - _KEYS
            if extra:
                raise bad(where, f"unknown key {sorted(extra)[0][:40]!r}")
            mid = node.get("LabelName")
            if not isinstance(mid, str) or not MID_RE.fullmatch(mid):
                raise bad(where, f"LabelName {str(mid)[:40]!r} is not a MID")
            if depth > MAX_DEPTH:
                raise bad(mid, f"nested deeper than {MAX_DEPTH}")
            if not out.root:
                out.root = mid
            for key, rel in (("Subcategory", Relation.SUBCATEGORY), ("Part", Relation.PART)):
                kids = node.get(key, [])
                if not isinstance(kids, list):
                    raise bad(mid, f"{key} is not a list")
                for kid in kids:
                    kid_mid = kid.get("LabelName") if isinstance(kid, dict) else None
                    if isinstance(kid_mid, str):
                        edges = out.children.setdefault(mid, [])
                        if (kid_mid, rel) not in edges:  # a class under several parents repeats its subtree
                            edges.append((kid_mid, rel))
                    stack.append((kid, f"{mid} > {key}", depth + 1))
        out._check_acyclic(name)
        return out

    @classmethod
    def from_edges(cls, root: str, edges: Iterable[tuple[str, str, str]]) -> Hierarchy:
        out = cls(root=root)
        for parent, child, rel in edges:
            out.children.setdefault(parent, []).append((child, Relation(rel)))
        return out

    def _check_acyclic(self, name: str) -> None:
        state: dict[str, int] = {}  # 1: on the current path, 2: finished
        for start in list(self.children):
            if state.get(start) == 2:
                continue
            stack: list[tuple[str, Iterator[tuple[str, Relation]]]] = [(start, iter(self.children.get(start, [])))]
            state[start] = 1
            while stack:
                mid, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[mid] = 2
                    stack.pop()
                    continue
                kid = nxt[0]
                if state.get(kid) == 1:
                    raise InputError(f"{name}: {kid} is its own ancestor; not the Open Images hierarchy shape")
                if kid not in state:
                    state[kid] = 1
                    stack.append((kid, iter(self.children.get(kid, []))))

    def __contains__(self, mid: object) -> bool:
        return mid in self.mids()

    def mids(self) -> set[str]:
        return {self.root} | set(self.children) | {k for kids in self.children.values() for k, _ in kids}

    def edges(self) -> Iterator[tuple[str, str, Relation]]:
        for parent, kids in self.children.items():
            for kid, rel in kids:
                yield parent, kid, rel

    def reach(self, mid: str) -> dict[str, Reach]:
        """Every class under mid (itself at depth 0), breadth first, so each depth is the
        fewest edges; via_part is False when some way there uses Subcategory edges only."""
        found = {mid: Reach(0, False)}
        frontier = [mid]
        depth = 0
        while frontier:
            depth += 1
            nxt: list[str] = []
            for parent in frontier:
                parent_part = found[parent].via_part
                for kid, rel in self.children.get(parent, []):
                    via = parent_part or rel is Relation.PART
                    old = found.get(kid)
                    if old is None:
                        found[kid] = Reach(depth, via)
                        nxt.append(kid)
                    elif old.via_part and not via:
                        found[kid] = Reach(old.depth, False)
                        nxt.append(kid)  # its own subtree becomes reachable without parts too
            frontier = nxt
        return found

    def descendants(self, mid: str, *, with_parts: bool = False) -> set[str]:
        """mid and every class under it; Part edges only with with_parts."""
        return {m for m, r in self.reach(mid).items() if with_parts or not r.via_part}

    def closure(self) -> Iterator[tuple[str, str, Reach]]:
        """(ancestor, descendant, reach) for every class, itself included."""
        for mid in sorted(self.mids()):
            for desc, r in self.reach(mid).items():
                yield mid, desc, r

    def render(self, name: Callable[[str], str], start: str | None = None, *, with_parts: bool = False) -> Iterator[str]:
        """The tree as indented lines, `name (MID)`: exactly what `descendants(start,
        with_parts=...)` selects. A class under several parents is shown under each; with
        parts, every line reached through a Part edge is marked [part], at any depth
        below it (a kind of a part is selected only with --with-parts too)."""
        stack: list[tuple[str, int, bool]] = [(start or self.root, 0, False)]
        while stack:
            mid, depth, in_part = stack.pop()
            mark = "[part] " if in_part else ""
            yield f"{'  ' * depth}{mark}{name(mid)} ({mid})"
            kids = [(k, r) for k, r in self.children.get(mid, []) if with_parts or r is Relation.SUBCATEGORY]
            for kid, r in reversed(kids):
                stack.append((kid, depth + 1, in_part or r is Relation.PART))


@dataclass
class Expansion:
    """Requested classes → the MIDs they select, and which requested class each MID
    counts for (a subcategory selected through two requested classes counts for both)."""

    mids: frozenset[str]
    owners: dict[str, frozenset[str]]
    absent: list[str]


def expand(requested: Iterable[str], hierarchy: Hierarchy | None, *, with_parts: bool = False) -> Expansion:
    owners: dict[str, set[str]] = {}
    absent: list[str] = []
    for mid in requested:
        if hierarchy is None:
            got = {mid}
        elif mid not in hierarchy:
            absent.append(mid)
            got = {mid}
        else:
            got = hierarchy.descendants(mid, with_parts=with_parts)
        for m in got:
            owners.setdefault(m, set()).add(mid)
    return Expansion(frozenset(owners), {m: frozenset(o) for m, o in owners.items()}, absent)
