"""Localized narratives (issue 23): JSON-lines files (plain or .gz) → rows of
ImageID, AnnotatorID, Caption, streamed with each line bounded; and the selection by
them (`--with-narrative`, `--narrative-contains WORD`) over any AnnotationSource.

The captions-only files (`open_images_*_captions.jsonl`, ~138 MB for train) and the
full ones (`*_localized_narratives-*.jsonl`, with `timed_caption`, `traces` and
`voice_recording`) both read here; only the caption is kept: traces are read past.
A line is bounded at NARRATIVE_LINE characters (a full file's line with its traces is
tens to hundreds of KB); a longer or malformed line is one bad row with its number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oidownload.core.errors import ConfigError, InputError
from oidownload.core.ids import id_to_int, is_image_id
from oidownload.dataset.kinds import NARRATIVES, AnnotationKind, Narrative, json_header, kind_of
from oidownload.inputs.text import bounded_lines, open_text

if TYPE_CHECKING:
    from oidownload.dataset.annotations import AnnotationSource, AnnotationTable

# 4 MiB: ten times the longest trace line we expect (a minute of mouse trace at 60 Hz is
# ~3,600 points of ~40 bytes = ~150 KB), small enough that one line never costs much.
NARRATIVE_LINE = 4 << 20
COLUMNS = ("ImageID", "AnnotatorID", "Caption")
# A caption longer than this is cut (a real one is a few hundred characters).
MAX_CAPTION = 64 * 1024

Bad = Callable[[int, str], None]  # (line, why)


def compact_traces(traces: Any) -> str:
    """A full file's `traces` (segments of {x, y, t}) as the Traces column's compact JSON
    `[[[x, y, t], ...], ...]`; ValueError when they are not that shape."""
    if not isinstance(traces, list):
        raise ValueError("not a list")
    out = []
    for seg in traces:
        if not isinstance(seg, list):
            raise ValueError("a segment is not a list")
        points = []
        for p in seg:
            if not isinstance(p, dict):
                raise ValueError("a point is not an object")
            x, y, t = (p.get(k) for k in ("x", "y", "t"))
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y, t)):
                raise ValueError("a point's x, y or t is not a number")
            points.append([x, y, t])
        out.append(points)
    return json.dumps(out, separators=(",", ":"))


def parse(line: str | None, traces: bool = False) -> list[str] | str:
    """One line → [ImageID (lower case), AnnotatorID, Caption] (and, with traces, the
    Traces column: "" for a line without), or why it is a bad row."""
    if line is None:
        return f"the line is longer than {NARRATIVE_LINE} characters"
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return f"not JSON: {str(exc)[:80]}"
    if not isinstance(obj, dict):
        return "not a JSON object"
    image_id, caption, annotator = obj.get("image_id"), obj.get("caption"), obj.get("annotator_id", "")
    if not isinstance(image_id, str) or not is_image_id(image_id):
        return f"image_id {str(image_id)[:40]!r} is not 16 hex digits"
    if not isinstance(caption, str):
        return "caption is missing or not text"
    if not isinstance(annotator, str | int) or isinstance(annotator, bool):
        return "annotator_id is not a number or text"
    if "\0" in caption or "\0" in str(annotator):
        return "caption holds a NUL byte"  # PostgreSQL cannot store one; refused in both databases
    fields = [image_id.lower(), str(annotator)[:64], caption[:MAX_CAPTION]]
    if traces:
        try:
            fields.append(compact_traces(obj["traces"]) if "traces" in obj else "")
        except ValueError as exc:
            return f"traces: {exc}"
    return fields


def numbered(lines: Iterable[str | None], traces: bool = False) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, fields or why bad) of every non-blank line."""
    for n, line in enumerate(lines, 1):
        if line is not None and not line.strip():
            continue
        yield n, parse(line, traces)


def narrative_rows(lines: Iterable[str | None], file_id: int, bad: Bad, tally: Any,
                   traces: bool = False) -> Iterator[tuple[Any, ...]]:
    """`db load`'s rows for the narratives table: (image_id, annotator_id, caption, traces
    (None unless asked for), file_id)."""
    for n, fields in numbered(lines, traces):
        if isinstance(fields, str):
            tally.bad += 1
            bad(n, fields)
            continue
        tally.rows += 1
        yield id_to_int(fields[0]), fields[1], fields[2], (fields[3] or None) if traces else None, file_id


@dataclass(frozen=True)
class NarrativeFile:
    """A narratives file as an AnnotationTable (annotations.py): rows in COLUMNS, and
    with `traces` a Traces column too (compact JSON; "" for a line without)."""

    path: Path
    traces: bool = False
    kind: AnnotationKind[Any] = NARRATIVES

    @property
    def columns(self) -> tuple[str, ...]:
        return (*COLUMNS, "Traces") if self.traces else COLUMNS

    @property
    def name(self) -> str:
        name = self.path.name
        return name[:-3] if name.endswith(".gz") else name

    @property
    def where(self) -> str:
        return str(self.path)

    def index(self, name: str) -> int:
        return self.columns.index(name)

    def has(self, name: str) -> bool:
        return name in self.columns

    def rows(self, ids: Container[str] | None = None, bad: Bad | None = None) -> Iterator[list[str]]:
        """Good rows (of the given images); each bad one goes to `bad` when given."""
        try:
            with open_text(self.path) as f:
                for n, fields in numbered(bounded_lines(f, NARRATIVE_LINE), self.traces):
                    if isinstance(fields, str):
                        if bad is not None:
                            bad(n, fields)
                        continue
                    if ids is None or fields[0] in ids:
                        yield fields
        except (OSError, EOFError) as exc:
            raise InputError(f"{self.path}: cannot read: {exc}") from None


def is_json_lines(path: Path) -> bool:
    """Whether a file (plain or gzipped) starts with a JSON object: a narratives file."""
    with open_text(path) as f:
        try:
            head = f.read(64)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
    return head.lstrip().startswith("{")


def open_narratives(path: Path, traces: bool = False) -> NarrativeFile:
    """The file as narratives, or InputError by the one detector's words."""
    with open_text(path) as f:
        head = f.readline(1 << 16)
    kind_of(json_header(head) or (), str(path))  # the kind from its keys, as a CSV's from its header
    return NarrativeFile(path, traces)


# -- selection -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NarrativeChoice:
    """--with-narrative and --narrative-contains: an image is kept when one of its
    narratives contains every WORD (case-insensitive, as whole words; a WORD of several
    words, `"red car"` or `T-shirt`, matches them in a row whatever stands between)."""

    with_narrative: bool = False
    words: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pats = []
        for word in self.words:
            tokens = re.findall(r"\w+", word)
            if not tokens:
                raise ConfigError(f"--narrative-contains {word[:40]!r}: give a word (letters or digits)")
            pats.append(re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, tokens)) + r"(?!\w)", re.IGNORECASE))
        object.__setattr__(self, "patterns", tuple(pats))

    @property
    def active(self) -> bool:
        return self.with_narrative or bool(self.words)

    def accepts(self, caption: str) -> bool:
        return all(p.search(caption) for p in self.patterns)


def narrative_tables(source: AnnotationSource) -> list[AnnotationTable]:
    return [t for t in source.tables() if t.kind is NARRATIVES]


def narrative_ids(source: AnnotationSource, choice: NarrativeChoice, within: Container[str] | None = None) -> set[str]:
    """The images with a narrative the choice accepts (lower-case ImageIDs)."""
    tables = narrative_tables(source)
    if not tables:
        raise ConfigError("--with-narrative and --narrative-contains need a localized narratives file "
                          "(open_images_*_captions.jsonl) among --annotations, or loaded into --db")
    picked: set[str] = set()
    for t in tables:
        i_id, i_caption = t.index("ImageID"), t.index("Caption")
        for fields in t.rows(within):
            image_id = fields[i_id].lower()
            if image_id not in picked and choice.accepts(fields[i_caption]):
                picked.add(image_id)
    return picked


def narratives_of(tables: Sequence[AnnotationTable], images: Container[str]) -> dict[str, list[Narrative]]:
    """The narratives of the given images, by ImageID, in file order."""
    found: dict[str, list[Narrative]] = {}
    for t in tables:
        if t.kind is not NARRATIVES:
            continue
        record = NARRATIVES.reader(t.columns)
        for fields in t.rows(images):
            n = record(fields)
            if n is not None:
                found.setdefault(n.image_id, []).append(n)
    return found
