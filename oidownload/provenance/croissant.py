"""The Croissant card (MLCommons Croissant 1.0, JSON-LD): OUT/croissant.json, written with
the lock, so that tools that know nothing about Open Images can load what is there
(`mlcroissant.Dataset(jsonld="OUT/croissant.json").records("images")`).

    OUT/croissant.json                 the card: what, whose, how to cite, where
    OUT/oidownload.images.jsonl.gz     one line per written image: its fields for the card
    OUT/oidownload.{boxes,labels}.jsonl.gz   the annotations the download selected with
                                       (its --annotations files or its --db), joined to
                                       the written images in bounded memory (written_index.py)

For a bucket (s3://, az://, gs://) these are made in the state dir, beside the lock's
copy, and uploaded beside the data as the lock is.

The card's record set `images` joins each image file (a file of the `files` layout, or
a member of a webdataset shard, which Croissant readers take out of the tar) with its
line by file name: ImageID, subset, width, height, licence, author, title, source and
SHA-256. The distribution lists the lock and the images file with their SHA-256 and,
for webdataset, every shard with its own (cached: a closed shard never changes).

The @context is inline (Croissant readers fetch no remote context).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import heapq
import html
import io
import json
import os
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from oidownload import __version__
from oidownload.core import fsio
from oidownload.core.config import OutputKind
from oidownload.core.errors import OidownloadError
from oidownload.core.records import Status
from oidownload.dataset.annotations import AnnotationSource, AnnotationTable
from oidownload.dataset.geometry import WrittenBoxes
from oidownload.dataset.kinds import BOXES, LABELS
from oidownload.dataset.selection import class_names, open_annotations
from oidownload.inputs.rows import V3_COLUMNS
from oidownload.provenance.lock import LOCK_NAME, dumps_line, file_sha256, lock_path, upload_beside
from oidownload.provenance.written_index import WrittenIndex
from oidownload.sinks import Blobs, is_remote, open_blobs
from oidownload.sinks.tar import SHARD_RE
from oidownload.state.reader import Entry, StateDir, Written
from oidownload.state.remembered import RememberedSelection

CARD_NAME = "croissant.json"
IMAGES_NAME = "oidownload.images.jsonl.gz"
BOXES_NAME = "oidownload.boxes.jsonl.gz"
LABELS_NAME = "oidownload.labels.jsonl.gz"
_HASH_CACHE = "croissant-hashes.json"
_RANGE = 8 << 20  # bytes of a remote shard read at once to hash it
_AT = {name: V3_COLUMNS.index(name) for name in ("License", "Author", "Title")}
_MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp",
         "tif": "image/tiff"}
CITATION = (
    "@article{OpenImages, author = {Alina Kuznetsova and Hassan Rom and Neil Alldrin and Jasper Uijlings and "
    "Ivan Krasin and Jordi Pont-Tuset and Shahab Kamali and Stefan Popov and Matteo Malloci and Alexander Kolesnikov "
    "and Tom Duerig and Vittorio Ferrari}, title = {The Open Images Dataset V4: Unified image classification, object "
    "detection, and visual relationship detection at scale}, year = {2020}, journal = {IJCV}}"
)
# The Croissant 1.0 @context, inline.
CONTEXT: dict[str, Any] = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet", "format": "cr:format",
    "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key",
    "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source",
    "subField": "cr:subField", "transform": "cr:transform",
}
# (field, Croissant type, description) of each line of the images file.
_FIELDS = (
    ("image_id", "sc:Text", "The Open Images ImageID (16 hex digits)"),
    ("subset", "sc:Text", "The Open Images subset (train, validation, test...)"),
    ("width", "sc:Integer", "Width in pixels of the written image"),
    ("height", "sc:Integer", "Height in pixels of the written image"),
    ("license", "sc:Text", "The image's own licence (a URL), from the image list"),
    ("author", "sc:Text", "The image's author, from the image list"),
    ("title", "sc:Text", "The image's title, from the image list"),
    ("source", "sc:Text", "Where the bytes came from: original, thumbnail or cvdf (the mirror)"),
    ("sha256", "sc:Text", "SHA-256 of the written bytes"),
)


def _rows(state: StateDir) -> Iterator[dict[str, Any]]:
    """The written images with their credits, input by input in line order (each input
    is read once, beside its journal rows), then those no input row names (found in
    the output when a journal was rebuilt)."""
    for info in state.inputs():
        extras: deque[tuple[object, ...]] = deque()
        streams = []
        for journal in state.journals:
            found = state.query(journal, "SELECT id FROM inputs WHERE path=?", (info.display,))
            if found:
                cols = _columns(state, journal, ("line", "subset", "width", "height", "sha256", "source", "location", "ext"))
                streams.append(_by_line(state, journal, int(found[0][0]), cols))  # type: ignore[call-overload]
        merged = heapq.merge(*streams, key=lambda r: int(r[0]))  # type: ignore[call-overload]
        for joined in state.joined(info, _entries(merged, extras)):
            row = extras.popleft()
            yield _line(row[1:], joined.fields)
    for journal in state.journals:
        cols = _columns(state, journal, ("NULL", "subset", "width", "height", "sha256", "source", "location", "ext"))
        for row in state.outcome_rows(journal, cols, "status='ok' AND input IS NULL"):
            yield _line((row[0], *row[2:]), None)


def _columns(state: StateDir, journal: Path, names: tuple[str, ...]) -> str:
    """The columns as SQL, NULL for those a journal from an older version lacks."""
    have = state.columns(journal) | {"NULL"}
    return ", ".join(c if c in have else f"NULL AS {c}" for c in names)


def _entries(rows: Iterator[tuple[object, ...]], extras: deque[tuple[object, ...]]) -> Iterator[Entry]:
    """The rows as `joined` takes them; each row waits in `extras` until its join comes
    out (one for one, in order)."""
    for row in rows:
        extras.append(row)
        yield Entry(int(row[0]), _hex(row[1]), Status.OK.value, "", None, 0, str(row[7] or ""), str(row[6] or ""))  # type: ignore[call-overload]


def _by_line(state: StateDir, journal: Path, input_id: int, cols: str) -> Iterator[tuple[object, ...]]:
    last = -1
    while True:
        rows = state.query(journal, f"SELECT {cols}, id FROM outcomes WHERE status='ok' AND input=? AND line > ? "
                                    "ORDER BY line LIMIT 20000", (input_id, last))
        for r in rows:
            yield (r[0], r[-1], *r[1:-1])
        if len(rows) < 20000:
            return
        last = int(rows[-1][0])  # type: ignore[call-overload]


def _hex(rid: object) -> str:
    return format(int(rid) % (1 << 64), "016x")  # type: ignore[call-overload]


def _line(row: tuple[object, ...], fields: list[str] | None) -> dict[str, Any]:
    rid, subset, w, h, sha, source, location, ext = row
    image_id = _hex(rid)
    f = fields or []

    def at(name: str) -> str:
        i = _AT[name]
        return html.unescape(f[i]) if len(f) > i else ""

    return {"file_name": f"{image_id}.{ext}", "image_id": image_id, "subset": subset, "width": w, "height": h,
            "license": at("License"), "author": at("Author"), "title": at("Title"), "source": source or "",
            "sha256": sha or "", "location": location, "ext": ext}


def _write_annotations(root: Path, state: StateDir) -> dict[str, int]:
    """The boxes (in the written frame) and image-level labels of the written images, as
    `annotations --format csv` exports them, from the annotations the download selected
    with (its --annotations files, or its --db database): the card's boxes and labels
    files. Lines per kind; a kind with none has no file. Bounded memory: the written
    images wait in a temporary table, and the rows are joined to them a chunk at a time."""
    remembered = RememberedSelection.read(state)
    found: dict[str, int] = {}
    try:
        with _selection_source(remembered) as (source, names):
            tables = list(source.tables()) if source is not None else []
            if tables:
                classes = remembered.classes
                with WrittenIndex.build(state) as index:
                    wanted = index.wanted()
                    found[BOXES_NAME] = _write_lines(root / BOXES_NAME, (
                        {"file_name": f"{b.image_id}.{images[b.image_id].ext}", "image_id": b.image_id,
                         "label": b.label, "class_name": names.get(b.label, ""), "xmin": b.xmin,
                         "xmax": b.xmax, "ymin": b.ymin, "ymax": b.ymax}
                        for chunk, images in index.chunks(tables, BOXES, wanted)
                        for b in WrittenBoxes(images, classes).read([chunk])))
                    found[LABELS_NAME] = _write_lines(root / LABELS_NAME, (
                        line for chunk, images in index.chunks(tables, LABELS, wanted)
                        for line in _label_lines([chunk], images, names, classes)))
    except OidownloadError:
        found = {}  # the annotations are gone or unreadable: the card has the images alone
    for name in (BOXES_NAME, LABELS_NAME):
        if not found.get(name):
            (root / name).unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def _selection_source(remembered: RememberedSelection) -> Iterator[tuple[AnnotationSource | None,
                                                                        dict[str, str]]]:
    """The annotations the download selected with, as the `annotations` command opens
    them (`open_annotations`): the --db database, else the --annotations files still
    there; and the class names (the --class-descriptions file, else the database's)."""
    db = remembered.db
    files = tuple(p for p in remembered.annotations if p.is_file())
    if db is None and not files:
        yield None, {}
        return
    desc = remembered.class_descriptions
    with open_annotations(() if db is not None else files, db) as source:
        loaded = class_names(source, desc if desc is not None and desc.is_file() else None)
        yield source, loaded.names if loaded is not None else {}


def _label_lines(tables: Sequence[AnnotationTable], images: dict[str, Written], names: dict[str, str],
                 classes: frozenset[str] | None) -> Iterator[dict[str, Any]]:
    for f in tables:
        if f.kind is not LABELS:
            continue
        i_id, i_label = f.index("ImageID"), f.index("LabelName")
        i_source = f.index("Source") if f.has("Source") else None
        i_conf = f.index("Confidence") if f.has("Confidence") else None
        for fields in f.rows(images):
            if classes is not None and fields[i_label] not in classes:
                continue
            image = images[fields[i_id]]
            try:
                confidence = float(fields[i_conf]) if i_conf is not None else None
            except ValueError:
                confidence = None
            yield {"file_name": f"{image.image_id}.{image.ext}", "image_id": image.image_id,
                   "label": fields[i_label], "class_name": names.get(fields[i_label], ""),
                   "source": fields[i_source] if i_source is not None else "", "confidence": confidence}


def _write_lines(path: Path, lines: Iterator[dict[str, Any]]) -> int:
    n = 0
    with fsio.atomic_file(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped, \
                io.BufferedWriter(zipped, 1 << 20) as gz:
            for line in lines:
                gz.write(dumps_line(line))
                n += 1
        raw.flush()
        os.fsync(raw.fileno())
    return n


_ANNOTATION_FIELDS = (
    ("image_id", "sc:Text", "The ImageID of the image it is about"),
    ("file_name", "sc:Text", "The image's file name, as in the record set images"),
    ("label", "sc:Text", "The class's MID (LabelName)"),
    ("class_name", "sc:Text", "The class's display name (empty when the download had no class descriptions)"),
)
# File name → (record set, what a line is, its own fields).
_ANNOTATION_SETS: dict[str, tuple[str, str, tuple[tuple[str, str, str], ...]]] = {
    BOXES_NAME: ("boxes", "The boxes of the written images, with class names and coordinates in the written frame",
                 tuple((c, "sc:Float", f"{c[1:]} edge's {c[0]}, normalised to the written image (0-1)")
                       for c in ("xmin", "xmax", "ymin", "ymax"))),
    LABELS_NAME: ("labels", "The image-level labels of the written images, with class names",
                  (("source", "sc:Text", "Who gave the label (verification, crowdsource-verification, machine...)"),
                   ("confidence", "sc:Float", "1 present, 0 absent (human); the model's score (machine)"))),
}


def _annotation_set(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An annotations file and its record set."""
    name, description, own = _ANNOTATION_SETS[path.name]
    file_id = f"{name}-file"
    return (
        {"@type": "cr:FileObject", "@id": file_id, "name": file_id, "contentUrl": path.name,
         "encodingFormat": "application/jsonlines", "sha256": file_sha256(path),
         "description": f"{description}: one a line (gzip)"},
        {"@type": "cr:RecordSet", "@id": name, "name": name, "description": description,
         "field": [{"@type": "cr:Field", "@id": f"{name}/{field}", "name": field, "description": text,
                    "dataType": kind, "source": {"fileObject": {"@id": file_id}, "extract": {"column": field}}}
                   for field, kind, text in (*_ANNOTATION_FIELDS, *own)]},
    )


def _cached_hashes(state_dir: Path) -> dict[str, list[Any]]:
    try:
        d = json.loads((state_dir / _HASH_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _shard_objects(blobs: Blobs, state_dir: Path) -> list[dict[str, Any]]:
    """A FileObject per closed shard, with its SHA-256 (hashed once, then cached by
    path, size and mtime, or in a bucket, where objects have no mtime we can set, by
    path and size: a closed shard is never written again)."""
    cache = _cached_hashes(state_dir)
    fresh: dict[str, list[Any]] = {}
    objects = []
    for subset in blobs.folders(""):
        for name, size in sorted(blobs.files(subset)):
            if not SHARD_RE.fullmatch(name):
                continue
            rel = f"{subset}/{name}"
            local = blobs.local_path(rel)
            stamp = local.stat().st_mtime_ns if local is not None else None
            known = cache.get(rel)
            sha = known[2] if known and known[:2] == [size, stamp] else _blob_sha256(blobs, rel, size, local)
            fresh[rel] = [size, stamp, sha]
            objects.append({"@type": "cr:FileObject", "@id": f"shard:{rel}", "name": f"shard:{rel}",
                            "contentUrl": rel, "encodingFormat": "application/x-tar", "sha256": sha})
    try:
        with fsio.atomic_file(state_dir / _HASH_CACHE, "w") as fh:
            json.dump(fresh, fh)
    except OSError:
        pass  # only a cache: the next card hashes again
    return objects


def _blob_sha256(blobs: Blobs, key: str, size: int, local: Path | None) -> str:
    if local is not None:
        return file_sha256(local)
    h = hashlib.sha256()
    for offset in range(0, size, _RANGE):  # a shard of a bucket, a range at a time
        h.update(blobs.read_range(key, offset, min(_RANGE, size - offset)))
    return h.hexdigest()


def _field(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"images/{name}", "name": name, "description": description, "dataType": kind,
            "source": {"field": {"@id": f"meta/{name}"}}}


def card(blobs: Blobs, state: StateDir, lock: Path, images: Path, exts: set[str]) -> dict[str, Any]:
    """The card of the output `blobs` reads, beside which the lock and the images file
    lie (their local copies: `lock`, `images`)."""
    _, kind = state.output()
    settings = {}
    for value in state.meta("settings")[:1]:
        settings = json.loads(value)
    files_id = "image-files"
    distribution: list[dict[str, Any]] = [
        {"@type": "cr:FileObject", "@id": "lock", "name": "lock", "contentUrl": LOCK_NAME,
         "encodingFormat": "application/jsonlines", "sha256": file_sha256(lock),
         "description": "The oidownload lock file: every selected ImageID and what became of it (gzip)"},
        {"@type": "cr:FileObject", "@id": "images-file", "name": "images-file", "contentUrl": IMAGES_NAME,
         "encodingFormat": "application/jsonlines", "sha256": file_sha256(images),
         "description": "One line per written image: its fields in this card (gzip)"},
    ]
    file_set: dict[str, Any] = {"@type": "cr:FileSet", "@id": files_id, "name": files_id,
                                "encodingFormat": sorted({_MIME.get(e, "application/octet-stream") for e in exts}) or "image/jpeg"}
    if kind is OutputKind.WEBDATASET:
        shards = _shard_objects(blobs, state.path)
        distribution += shards
        file_set["containedIn"] = [{"@id": s["@id"]} for s in shards]
        file_set["includes"] = [f"*.{e}" for e in sorted(exts)] or ["*.jpg"]
        file_set["description"] = "The images, as members of the webdataset shards"
    else:
        subsets = sorted({name for name in blobs.folders("") if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)
                          and name not in ("original", "report", "gallery")})
        file_set["includes"] = [f"{s}/*.{e}" for s in subsets for e in sorted(exts)] or ["*/*.jpg"]
        file_set["description"] = "The images, one file each: <subset>/<first 3 hex digits>/<ImageID>.<ext>"
    distribution.append(file_set)
    meta_fields = [{"@type": "cr:Field", "@id": f"meta/{name}", "name": name, "dataType": kind_,
                    "source": {"fileObject": {"@id": "images-file"}, "extract": {"column": name}}}
                   for name, kind_, _ in (("file_name", "sc:Text", ""), *_FIELDS)]
    images_fields = [
        {"@type": "cr:Field", "@id": "images/file_name", "name": "file_name", "dataType": "sc:Text",
         "description": "The image's file name (<ImageID>.<ext>)",
         "source": {"fileSet": {"@id": files_id}, "extract": {"fileProperty": "filename"}},
         "references": {"field": {"@id": "meta/file_name"}}},
        *(_field(name, kind_, description) for name, kind_, description in _FIELDS),
        {"@type": "cr:Field", "@id": "images/file", "name": "file", "dataType": "sc:ImageObject",
         "description": "The image as written",
         "source": {"fileSet": {"@id": files_id}, "extract": {"fileProperty": "content"}}},
    ]
    describe = ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None and v is not False)
    return {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": "open-images-download",
        "description": ("Images of the Open Images dataset as downloaded by oidownload " + __version__ +
                        (f" ({describe})" if describe else "") + ". The lock file lists every selected ImageID "
                        "with the SHA-256 of the bytes written; each image keeps its own licence, in the `license` "
                        "field."),
        "license": "https://creativecommons.org/licenses/by/4.0/",
        "url": "https://storage.googleapis.com/openimages/web/index.html",
        "citeAs": CITATION, "version": "1.0.0", "datePublished": time.strftime("%Y-%m-%d", time.gmtime()),
        "distribution": distribution,
        "recordSet": [
            {"@type": "cr:RecordSet", "@id": "meta", "name": "meta", "key": {"@id": "meta/file_name"},
             "description": "The images file, line by line", "field": meta_fields},
            {"@type": "cr:RecordSet", "@id": "images", "name": "images",
             "description": "Every written image, with its fields and its file", "field": images_fields},
        ],
    }


def write_card(out: str, state: StateDir, lock: Path, grace: float | None = None) -> Path | None:
    """croissant.json and its images, boxes and labels files beside the lock: in OUT, or
    for a bucket made in the state dir (beside the lock's copy) and uploaded beside the
    data, as the lock is. None when `lock` is not the output's own lock."""
    if lock != lock_path(out, state.path):
        return None
    root = lock.parent
    images = root / IMAGES_NAME
    exts: set[str] = set()
    with fsio.atomic_file(images, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped, \
                io.BufferedWriter(zipped, 1 << 20) as gz:
            for line in _rows(state):
                exts.add(str(line.pop("ext")))
                line.pop("location")
                gz.write(dumps_line(line))
        raw.flush()
        os.fsync(raw.fileno())
    doc = card(open_blobs(out, grace), state, lock, images, exts)
    written = [images]
    for name, n in _write_annotations(root, state).items():
        if n:
            file_object, record_set = _annotation_set(root / name)
            doc["distribution"].append(file_object)
            doc["recordSet"].append(record_set)
            written.append(root / name)
    path = root / CARD_NAME
    with fsio.atomic_file(path, "w") as f:
        json.dump(doc, f, indent=1)  # ASCII: an odd byte of a path name cannot stop it
    if is_remote(out):
        for done in (*written, path):  # the card last: a card in the bucket names files already there
            upload_beside(out, done, grace)
    return path
