"""The gallery's README views as pure functions, on edge cases the real download does not
reach: machine labels and in-between confidences left out, the per-split cap, and a
database hierarchy with a cycle or more lines than the page shows."""

from __future__ import annotations

from oidownload.dataset.hierarchy import Hierarchy
from oidownload.gallery import hierarchy as views
from oidownload.gallery.collect import Classes, Collected, Entry
from oidownload.gallery.labelfreq import TOP_LABELS, label_frequency
from oidownload.state.reader import Written


def written(image_id: str, subset: str) -> Written:
    return Written(image_id, subset, f"{subset}/{image_id}.jpg", "jpg", 10, 10, 1, None, "original", True, 100)


def collected(n_classes: int) -> Collected:
    classes = Classes()
    for k in range(n_classes):
        classes.index(f"/m/c{k}", None)
    return Collected([], classes, ["verification", "machine", "crowdsource-verification"], label_files=1)


def test_label_frequency_counts_human_zero_and_one_only_and_caps_the_chart() -> None:
    data = collected(TOP_LABELS + 20)
    a, b, c = Entry(written("a" * 16, "train")), Entry(written("b" * 16, "train")), Entry(written("c" * 16, "validation"))
    a.labels = [(0, 1.0, 0), (1, 0.0, 2), (2, 1.0, 1), (3, 0.7, 0)]  # class 2: machine; class 3: neither 0 nor 1
    b.labels = [(0, 1.0, 2), (1, 1.0, 0)] + [(k, 0.0, 0) for k in range(4, TOP_LABELS + 20)]
    c.labels = [(5, 0.0, 0)]
    data.entries = [a, b, c]
    train, validation = label_frequency(data)
    assert (train.title, validation.title) == ("Label frequency: train", "Label frequency: validation")
    rows = {key: counts for key, _, counts in train.rows}
    assert rows["/m/c0"] == (2, 0) and rows["/m/c1"] == (1, 1) and "/m/c2" not in rows and "/m/c3" not in rows
    assert [key for key, _, _ in train.rows[:2]] == ["/m/c0", "/m/c1"]  # positives first, then negatives
    assert len(train.rows) == TOP_LABELS + 18 and train.drawn == TOP_LABELS and "the table has all" in train.note
    assert validation.rows == [("/m/c5", "/m/c5", (0, 1))]
    assert label_frequency(Collected([a], data.classes, data.label_sources)) == []  # no label file, no figure


def test_hierarchy_view_survives_a_cycle_and_caps_its_lines() -> None:
    data = collected(0)
    cyclic = Hierarchy.from_edges("/m/r", [("/m/r", "/m/a", "subcategory"), ("/m/a", "/m/b", "part"),
                                           ("/m/b", "/m/a", "subcategory")])
    view = views.hierarchy_view(cyclic, data, None)
    assert view.root.children[0].mid == "/m/a" and view.root.children[0].children[0].mid == "/m/b"
    assert view.root.children[0].children[0].part and view.root.children[0].children[0].children == []
    wide = Hierarchy.from_edges("/m/r", [("/m/r", f"/m/k{i}", "subcategory") for i in range(views.MAX_NODES + 5)])
    view = views.hierarchy_view(wide, data, None)
    assert len(view.root.children) == views.MAX_NODES - 1 and view.cut == 6
