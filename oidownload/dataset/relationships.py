"""Visual relationships: `--relationship 'Man plays Guitar'` and `--predicate plays` →
the ImageIDs with a matching row of the relationship tables (CSV or --db, through
`AnnotationTable.rows`, so both give the same answer).

A query is (subject MIDs, predicate, object MIDs), each side None for `*` (any). The
right-hand side of `is` is an attribute (Wooden, Transparent), resolved against the
attributes description; every other side is a class, resolved as --class resolves it.
Rows stay field lists; memory grows with the selected images only.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from oidownload.core.errors import ConfigError
from oidownload.dataset.annotations import AnnotationTable
from oidownload.dataset.classes import MID_RE, ClassDescriptions
from oidownload.dataset.hierarchy import Hierarchy, expand
from oidownload.dataset.kinds import RELATIONSHIPS, SELECT
from oidownload.dataset.selection import ClassChoice, Plan, class_names, open_annotations

ANY = "*"
IS = "is"
# The predicates of the V6 relationship files (the triplets file); a query's middle word
# is looked up here first, so a class name of several words still parses. A triplets
# file given (or loaded) adds its own.
KNOWN_PREDICATES = frozenset({
    "at", "contain", "holds", "hits", "inside_of", "interacts_with", "is", "kicks", "on", "plays", "under",
    "wears", "ride", "drink", "eat", "catch", "cut", "dance", "hang", "highfive", "holding_hands", "hug",
    "kiss", "read", "ski", "skateboard", "surf", "talk_on_phone", "throw",
})


@dataclass(frozen=True)
class RelationshipQuery:
    """One --relationship (or --predicate): None on a side means any."""

    subject: frozenset[str] | None
    predicate: str | None
    object: frozenset[str] | None
    text: str  # as given, for messages

    def test(self, label1: str, label2: str, predicate: str) -> bool:
        return ((self.predicate is None or predicate == self.predicate)
                and (self.subject is None or label1 in self.subject)
                and (self.object is None or label2 in self.object))


def split_query(text: str, predicates: Collection[str] = KNOWN_PREDICATES) -> tuple[str, str, str]:
    """'Coffee table on Floor' → ('Coffee table', 'on', 'Floor'): the predicate is one
    word between two non-empty sides, a known predicate when the words allow several."""
    words = text.split()
    if len(words) < 3:
        raise ConfigError(f"--relationship {text[:80]!r}: give 'SUBJECT PREDICATE OBJECT', e.g. 'Man plays Guitar' "
                          "or '* on Table' (* for any)")
    known = [i for i in range(1, len(words) - 1) if words[i].lower() in predicates or words[i] == ANY]
    if len(known) > 1:
        raise ConfigError(f"--relationship {text[:80]!r}: several words could be the predicate "
                          f"({', '.join(words[i] for i in known)}); use MIDs for the classes")
    if not known:
        # an unknown predicate: the closest known ones, as a misspelled class name gets
        close = [c for w in words[1:-1] for c in difflib.get_close_matches(w.lower(), sorted(predicates), n=3)]
        hint = f"; did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?" if close else ""
        raise ConfigError(f"--relationship {text[:80]!r}: no known predicate in it{hint} "
                          f"(known: {', '.join(sorted(predicates))})")
    at = known[0]
    return " ".join(words[:at]), words[at].lower(), " ".join(words[at + 1:])


@dataclass(frozen=True)
class Resolver:
    """Names → MIDs for either side: classes (expanded through the hierarchy) and, for the
    right side of `is`, attributes."""

    classes: ClassDescriptions | None
    attributes: ClassDescriptions | None
    hierarchy: Hierarchy | None = None
    with_parts: bool = False

    def side(self, name: str, *, attribute: bool) -> frozenset[str] | None:
        if name == ANY:
            return None
        names = self.attributes if attribute else self.classes
        if MID_RE.fullmatch(name):
            mids = {name}
        elif names is None:
            need = ("--attributes (oidv6-attributes-description.csv) or a --db with it loaded" if attribute
                    else "--class-descriptions or a --db with classes loaded")
            raise ConfigError(f"the {'attribute' if attribute else 'class'} name {name[:80]!r} needs {need}; "
                              "MIDs like /m/083vt do not")
        else:
            try:
                mids = names.resolve([name])
            except ConfigError as exc:
                what = "attribute" if attribute else "class"
                raise ConfigError(str(exc).replace("unknown class name", f"unknown {what} name", 1)) from None
        if attribute:
            return frozenset(mids)
        return expand(sorted(mids), self.hierarchy, with_parts=self.with_parts).mids

    def query(self, text: str, predicates: Collection[str] = KNOWN_PREDICATES) -> RelationshipQuery:
        subject, predicate, obj = split_query(text, predicates)
        return RelationshipQuery(self.side(subject, attribute=False), None if predicate == ANY else predicate,
                                 self.side(obj, attribute=predicate == IS), text)


def queries(resolver: Resolver, relationships: Sequence[str], predicates: Sequence[str],
            known: Collection[str] = KNOWN_PREDICATES) -> list[RelationshipQuery]:
    """--relationship and --predicate as queries: a --predicate alone is '* P *'."""
    out = [resolver.query(t, known) for t in relationships]
    out += [RelationshipQuery(None, p.strip().lower(), None, f"* {p.strip()} *") for p in predicates if p.strip()]
    return out


def relationship_tables(tables: Iterable[AnnotationTable]) -> list[AnnotationTable]:
    found = [t for t in tables if t.kind is RELATIONSHIPS]
    for t in found:
        t.kind.require(SELECT, t.where)
    if not found:
        raise ConfigError("--relationship and --predicate need a relationship file "
                          "(oidv6-*-annotations-vrd.csv) among --annotations, or loaded in the --db")
    return found


def matching_rows(tables: Iterable[AnnotationTable], wanted: Sequence[RelationshipQuery],
                  within: Container[str] | None = None) -> Iterator[tuple[str, int]]:
    """(lower-case ImageID, index of the first query it matches) for every matching row."""
    for t in relationship_tables(tables):
        i_id, i_1, i_2, i_p = (t.index(c) for c in ("ImageID", "LabelName1", "LabelName2", "RelationshipLabel"))
        for fields in t.rows(within):
            l1, l2, p = fields[i_1], fields[i_2], fields[i_p]
            for n, q in enumerate(wanted):
                if q.test(l1, l2, p):
                    yield fields[i_id].lower(), n
                    break


def select_relationships(tables: Iterable[AnnotationTable], wanted: Sequence[RelationshipQuery],
                         within: Container[str] | None = None) -> tuple[set[str], list[int]]:
    """The ImageIDs with a row matching any query, and how many rows each query matched
    first (a query that matched none is worth a warning)."""
    picked: set[str] = set()
    counts = [0] * len(wanted)
    for image_id, n in matching_rows(tables, wanted, within):
        picked.add(image_id)
        counts[n] += 1
    return picked, counts


def read_triplet_predicates(rows: Iterable[Sequence[str]]) -> frozenset[str]:
    """The RelationshipLabel column of a triplets file (LabelName1,LabelName2,RelationshipLabel)."""
    return frozenset(r[2].strip().lower() for r in rows if len(r) == 3 and r[2].strip() != "RelationshipLabel")


def attribute_names(source: object, attributes: Path | None) -> ClassDescriptions | None:
    """Attribute names ⇄ MIDs: the --attributes file, else the database's attributes."""
    if attributes is not None:
        return ClassDescriptions.load(attributes)
    loaded = getattr(source, "attribute_descriptions", None)
    return loaded() if loaded is not None else None


def select_relationships_into(choice: ClassChoice, result: Plan) -> None:
    """The images of --relationship/--predicate, within what the plan already selected."""
    if not choice.annotations and choice.db is None:
        raise ConfigError("--relationship and --predicate need --annotations (a relationship file such as "
                          "oidv6-train-annotations-vrd.csv) or --db")
    with open_annotations(choice.annotations, choice.db) as source:
        tree = Hierarchy.load(choice.hierarchy) if choice.hierarchy is not None and choice.expand else None
        resolver = Resolver(class_names(source, choice.class_descriptions),
                            attribute_names(source, choice.attributes), tree, choice.with_parts)
        wanted = queries(resolver, choice.relationships, choice.predicates)
        picked, counts = select_relationships(source.tables(), wanted, within=result.ids)
    result.ids = frozenset(picked)
    result.relationships = tuple(wanted)
    result.ids_from = f"the relationship selection ({len(picked)} images in the annotations)"
    result.notes.append(f"{len(picked)} images carry {len(wanted)} selected relationship(s)")
    none = [q.text for q, n in zip(wanted, counts, strict=True) if n == 0]
    if none:
        shown = ", ".join(repr(t[:80]) for t in none[:20])
        result.warnings.append(f"no relationship row matches {shown}{' ...' if len(none) > 20 else ''}")
