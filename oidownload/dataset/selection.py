"""The up-front selection plan: classes (expanded through a hierarchy) → MIDs →
ImageIDs, balanced per class or sampled with a seed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oidownload.core.errors import ConfigError
from oidownload.dataset.annotations import AnnotationSource, ClassFilter, CsvAnnotations, select_ids
from oidownload.dataset.classes import MID_RE, ClassDescriptions
from oidownload.dataset.hierarchy import Hierarchy, expand
from oidownload.dataset.narratives import NarrativeChoice, narrative_ids
from oidownload.dataset.sampling import per_class, sample
from oidownload.inputs.listing import listed_ids

if TYPE_CHECKING:
    from oidownload.dataset.relationships import RelationshipQuery


@dataclass
class Plan:
    """The id-level selection worked out before a run, and what it came from."""

    ids: frozenset[str] | None
    classes: frozenset[str] = frozenset()
    annotations: tuple[Path, ...] = ()
    class_descriptions: Path | None = None
    db: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Where `ids` came from, in words, for the message of an empty selection.
    ids_from: str = "--ids"
    # relationships and points (issue 23): --relationship/--predicate resolved, so what a
    # download carries of them keeps only the matching ones, as `annotations` does
    relationships: tuple[RelationshipQuery, ...] | None = None


@dataclass(frozen=True)
class ClassChoice:
    """What --class and its companion options ask for."""

    names: tuple[str, ...]
    class_descriptions: Path | None = None
    annotations: tuple[Path, ...] = ()
    db: str | None = None
    hierarchy: Path | None = None
    expand: bool = True
    with_parts: bool = False
    filter: dict[str, Any] = field(default_factory=dict)  # ClassFilter's other fields
    limit_per_class: int | None = None
    # relationships and points (issue 23)
    relationships: tuple[str, ...] = ()
    predicates: tuple[str, ...] = ()
    attributes: Path | None = None


@contextmanager
def open_annotations(annotations: tuple[Path, ...], db: str | None,
                     narrative_traces: bool = False) -> Iterator[AnnotationSource]:
    """The rows to select from: the --annotations CSVs, or the --db database."""
    if db is not None:
        if annotations:
            raise ConfigError("give either --db or --annotations, not both: the database holds the annotations")
        from oidownload.dataset.db.source import DbAnnotations

        with DbAnnotations.open(db) as source:
            yield source
        return
    yield CsvAnnotations(annotations, narrative_traces)  # a --db's narratives have traces when loaded with them


def class_names(source: AnnotationSource, class_descriptions: Path | None) -> ClassDescriptions | None:
    """Names ⇄ MIDs: the --class-descriptions file, else the database's classes table."""
    if class_descriptions is not None:
        return ClassDescriptions.load(class_descriptions)
    loaded = getattr(source, "class_descriptions", None)
    return loaded() if loaded is not None else None


def _select_classes(inputs: tuple[Path, ...], subsets: frozenset[str], ids: frozenset[str] | None,
                    choice: ClassChoice, seed: int | None, result: Plan) -> None:
    if not choice.annotations and choice.db is None:
        raise ConfigError("--class needs --annotations (the box or image-label CSVs to select from) or --db")
    with open_annotations(choice.annotations, choice.db) as source:
        requested = {n.strip() for n in choice.names if MID_RE.fullmatch(n.strip())}
        wanted = [n for n in choice.names if not MID_RE.fullmatch(n.strip())]
        names = class_names(source, choice.class_descriptions)
        if wanted:
            if names is None:
                raise ConfigError("class names need --class-descriptions (class-descriptions.csv) or a --db with "
                                  "classes loaded; MIDs like /m/0152hh do not")
            requested |= names.resolve(wanted)
        shown = names.name if names is not None else str
        tree = Hierarchy.load(choice.hierarchy) if choice.hierarchy is not None and choice.expand else None
        grown = expand(sorted(requested), tree, with_parts=choice.with_parts)
        for mid in grown.absent:
            result.notes.append(f"{shown(mid)} ({mid}) is not in the hierarchy: selected by itself")
        if tree is not None:
            result.notes.append(f"{len(requested)} class(es) with their subcategories"
                                f"{' and parts' if choice.with_parts else ''}: {len(grown.mids)} classes")
        flt = ClassFilter(grown.mids, **choice.filter)
        result.classes = grown.mids
        if choice.limit_per_class is None:
            found: set[str] = set()
            picked = select_ids(source, flt, within=ids, found=found)
            result.ids = frozenset(picked)
            result.ids_from = f"the class selection ({len(picked)} images in the annotations)"
            result.notes.append(f"{len(picked)} images carry {len(requested)} selected class(es)")
            matched = {r for m in found for r in grown.owners.get(m, ())}
            unmatched = sorted(requested - matched)
            if unmatched:
                where = choice.db or ", ".join(str(a) for a in choice.annotations)
                listed = ", ".join(f"{shown(m)} ({m})" if shown(m) != m else m for m in unmatched[:20])
                result.warnings.append(
                    f"no row of the annotations ({where[:300]}) carries class(es) "
                    f"{listed}{' ...' if len(unmatched) > 20 else ''} with the chosen filters")
            return
        n = choice.limit_per_class
        chosen = per_class(source, flt, grown.owners, n, seed or 0, lambda wanted: set(listed_ids(inputs, subsets, wanted)), within=ids)
        result.ids = frozenset(chosen.ids)
        result.notes.append(f"{len(chosen.ids)} images: up to {n} per class with seed {seed or 0}")
        for mid, count in chosen.per_class.items():
            why = ""
            if count.picked < n:
                why = " (fewer available)" if count.exhausted else f" (still short after {chosen.passes} passes)"
            unlisted = f"; {count.not_listed} carrying it are not in the input list" if count.not_listed else ""
            result.notes.append(f"  {shown(mid)} ({mid}): {count.picked} of {n}{why}{unlisted}")
        short = [shown(m) for m, c in chosen.per_class.items() if c.picked < n]
        if short:
            result.notes.append(f"{len(short)} class(es) had fewer than {n}: {', '.join(short)}")


def _select_narratives(choice: ClassChoice, narratives: NarrativeChoice, result: Plan) -> None:
    """Keeps the images (of the selection so far) with a narrative the choice accepts."""
    if not choice.annotations and choice.db is None:
        raise ConfigError("--with-narrative and --narrative-contains need --annotations (a localized narratives "
                          "file) or --db")
    with open_annotations(choice.annotations, choice.db) as source:
        picked = narrative_ids(source, narratives, within=result.ids)
    result.ids = frozenset(picked)
    said = f" containing {' and '.join(repr(w) for w in narratives.words)}" if narratives.words else ""
    result.ids_from = f"the narrative selection ({len(picked)} images with a narrative{said})"
    result.notes.append(f"{len(picked)} images have a narrative{said}")


def plan(
    inputs: tuple[Path, ...],
    *,
    subsets: frozenset[str],
    ids: frozenset[str] | None,
    choice: ClassChoice,
    limit: int | None,
    seed: int | None,
    narratives: NarrativeChoice | None = None,
) -> Plan:
    """Resolves classes to MIDs (and their subcategories with a hierarchy), reads the
    annotations for the images that carry them, intersects with --ids, takes N per class
    or a --limit sample when a --seed is given. Memory grows with the selected images,
    not with the files."""
    result = Plan(ids, annotations=choice.annotations, class_descriptions=choice.class_descriptions, db=choice.db)
    if choice.names:
        _select_classes(inputs, subsets, ids, choice, seed, result)
    elif choice.limit_per_class is not None:
        raise ConfigError("--limit-per-class needs --class (or --classes-file): the classes to balance")
    if narratives is not None and narratives.active:  # narratives (issue 23)
        _select_narratives(choice, narratives, result)
    if choice.relationships or choice.predicates:
        from oidownload.dataset.relationships import select_relationships_into

        select_relationships_into(choice, result)
    if limit is not None and seed is not None:
        # nsmallest keeps only `limit` ids in memory
        result.ids = sample(listed_ids(inputs, subsets, result.ids), limit, seed)
        result.ids_from = f"the sample of seed {seed}"
        result.notes.append(f"sampled {len(result.ids)} of the selection with seed {seed}")
    return result
