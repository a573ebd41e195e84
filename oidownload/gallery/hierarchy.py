"""The gallery's hierarchy page: the box-class tree (`bbox_labels_600_hierarchy.json`, or
a database's class_hierarchy table) with each class's images and boxes in this
download, Part edges marked, and a link to the grid filtered by the class.

A class under several parents is shown under each, as the hierarchy JSON repeats it.
Bounded: at most MAX_NODES lines, and no path deeper than the hierarchy allows.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from oidownload.dataset.classes import ClassDescriptions
from oidownload.dataset.hierarchy import MAX_DEPTH, Hierarchy, Relation
from oidownload.gallery.collect import Collected, bound

# The real tree has 848 lines (602 classes); a database's edges are not checked for
# shape, and a DAG's expansion could grow without end.
MAX_NODES = 20_000


@dataclass(slots=True)
class Node:
    mid: str
    name: str
    images: int  # downloaded images with a box of the class or a positive label
    boxes: int
    index: int | None  # the grid's class number, when some image has the class
    part: bool  # reached from its parent by a Part edge
    children: list[Node] = field(default_factory=list)


@dataclass
class HierarchyView:
    root: Node
    classes: int  # distinct classes in the hierarchy
    present: int  # of which some downloaded image has
    outside: list[tuple[str, str]]  # (MID, name) of downloaded classes with boxes the hierarchy lacks
    cut: int = 0  # lines left out past MAX_NODES


def hierarchy_view(hierarchy: Hierarchy, data: Collected, names: ClassDescriptions | None) -> HierarchyView:
    boxes = collections.Counter(b[0] for e in data.entries for b in e.boxes)
    images = collections.Counter(c for e in data.entries for c in e.classes())
    known = {m: c for c, m in enumerate(data.classes.mids)}
    index = {m: c for m, c in known.items() if images[c]}

    def name(mid: str) -> str:
        if names is not None:
            return bound(names.name(mid))
        c = known.get(mid)
        return data.classes.names[c] if c is not None else mid

    def node(mid: str, part: bool) -> Node:
        c = index.get(mid)
        return Node(mid, name(mid), images[c] if c is not None else 0, boxes[c] if c is not None else 0, c, part)

    root = node(hierarchy.root, False)
    shown = 1
    cut = 0
    # Depth first, iteratively; a class already on the path is not entered again (a cycle).
    stack: list[tuple[Node, int, tuple[str, ...]]] = [(root, 0, (root.mid,))]
    while stack:
        parent, depth, path = stack.pop()
        kids = hierarchy.children.get(parent.mid, [])
        if depth >= MAX_DEPTH:
            cut += len(kids)
            continue
        for mid, rel in kids:
            if mid in path:
                continue
            if shown >= MAX_NODES:
                cut += 1
                continue
            child = node(mid, rel is Relation.PART)
            parent.children.append(child)
            shown += 1
            stack.append((child, depth + 1, (*path, mid)))
    in_tree = hierarchy.mids()
    outside = sorted((m, data.classes.names[c]) for m, c in index.items() if boxes[c] and m not in in_tree)
    return HierarchyView(root, len(in_tree), sum(1 for m in in_tree if m in index), outside, cut)
