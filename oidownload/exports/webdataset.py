"""`--format webdataset`: the annotations added to the samples of a local webdataset
output (download --output-format webdataset), in its own shards:

    <ImageID>.txt    the first caption of the image's localized narratives
    <ImageID>.json   with `captions` (every caption), `relationships` and `points` (the HF
                     export's columns, hf_kinds.hf_columns) and `objects` (its boxes, as
                     the HF export's `objects`), in the frame of the written pixels
    OUT/oidownload.classes.txt   the class names `objects.category` indexes, a line each

A tar member cannot grow after it is written, so each shard holding a sample that
changes is written again beside itself (its part name), every other member copied byte
for byte, then ended, fsynced, indexed (the offsets moved) and published as the sink
publishes a closed shard: index first, then the tar. A crash between the two renames
leaves the old tar with the new index; a run of this command again finds the index
out of step with the tar's own headers and writes the shard again. Names do not
change, so the journal's locations (`<subset>/<shard>.tar#<ImageID>`) stay true; the
images' bytes do not either, so the lock still holds, and the Croissant card, which
names each shard's SHA-256, is written again.

The JSON keys of each kind given are set on every selected image (empty when it has
none: a loader can type them), as a download into shards with those annotations sets
them; `captions` and the `.txt` only where the image has a narrative (taken out where
it has none). Running it again with the same annotations changes nothing, and a shard
nothing in it changes is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from oidownload.core.config import OutputKind
from oidownload.core.errors import InputError, OidownloadError
from oidownload.core.fsio import Tree
from oidownload.core.ids import is_subset
from oidownload.dataset.geometry import pixels
from oidownload.dataset.kinds import (
    BOXES,
    NARRATIVES,
    POINTS,
    RELATIONSHIPS,
    AnnotationKind,
    Box,
    BoxAttribute,
)
from oidownload.exports.base import Annotated, ExportContext, categories
from oidownload.exports.hf_kinds import hf_columns
from oidownload.sinks.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    INDEX_SUFFIX,
    BadIndex,
    LocalShards,
    copy_range,
    index_doc,
    index_part_name,
    member_block,
    member_end,
    member_mtime,
    parse_index,
    part_name,
    shard_of_name,
    whole_samples,
    write_index,
)
from oidownload.state.journal import journal_files, take_lock
from oidownload.state.reader import Written

CLASSES_NAME = "oidownload.classes.txt"
_SHARD_LOCK = re.compile(r"\.shards-\d{5}\.lock")  # a download's claim on its task's shards (tar.LocalShards.lock)
_PURPOSE = "annotations --format webdataset"
# After its last sample a shard holds its end-of-archive (zeros, padded by some writers to a
# record of 10 KiB); anything longer, or not zeros, is damage this command does not paper over.
_MAX_TAIL = 64 << 10

Members = dict[str, tuple[int, int]]  # suffix → (data offset, size)
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class Change:
    """What one sample becomes: the keys set in its JSON, those taken out, and its
    `.txt` (decided only when narratives were given: `texts`)."""

    put: dict[str, Any]
    drop: tuple[str, ...] = ()
    texts: bool = False
    text: bytes | None = None

    def meta(self, old: dict[str, Any]) -> dict[str, Any]:
        # Keys already there keep their place: the same input gives the same bytes.
        new = {k: v for k, v in old.items() if k not in self.drop}
        new.update(self.put)
        return new


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A shard to write again: its samples, in tar order, and the new JSON and `.txt`
    of those that change."""

    samples: list[tuple[str, Members]]
    new: dict[str, tuple[bytes, bytes | None]]
    index: dict[str, Any]


@dataclass
class _Pending:
    """Unchanged samples in a row, copied at once: (old start, new start, length)."""

    old: int = 0
    new: int = 0
    length: int = 0


@dataclass
class _Item:
    image_id: str
    fields: dict[str, Any]  # the JSON keys but `objects`
    boxes: list[Box] = field(default_factory=list)
    captions: list[str] | None = None  # None: no narratives given


class WebdatasetExporter:
    name: ClassVar[str] = "webdataset"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset({BOXES, NARRATIVES, RELATIONSHIPS, POINTS})
    needs_annotations: ClassVar[bool] = True
    beside_images: ClassVar[bool] = True  # into OUT's own shards: -d does not apply

    def start(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        where, kind = ctx.state.where()
        if kind is not OutputKind.WEBDATASET:
            raise InputError(f"--format webdataset adds the annotations to webdataset shards, but {where} holds "
                             f"{kind.value} output: download with --output-format webdataset for it (the files "
                             "output has hf, coco and the other formats)")
        given = {t.kind for t in ctx.tables}
        self.extra = [k for k in (RELATIONSHIPS, POINTS) if k in given]
        self.boxed = BOXES in given
        self.narrated = NARRATIVES in given
        self.items: list[_Item] = []
        self.notes: list[str] = []
        self.locks: list[int] = []
        self.locks = self._hold()  # last: a start that fails holds nothing

    def add(self, item: Annotated) -> None:
        self.items.append(_Item(item.image.image_id, hf_columns(item, self.extra, self.ctx.name),
                                list(item.boxes) if self.boxed else [],
                                [n.caption for n in item.narratives] if self.narrated else None))
        result = self.ctx.result
        result.boxes += len(item.boxes)
        result.captions += len(item.narratives)
        result.relationships += len(item.relationships)
        result.points += len(item.points)

    def abort(self) -> None:
        self._release()

    def finish(self) -> None:
        try:
            changes = self._changes()
            closed, rewritten = self._rewrite_all(changes)
            self._say_unfound(changes, closed)
            if rewritten:
                self._write_card()
        finally:
            self._release()
        self.ctx.result.notes += self.notes

    # -- what changes ---------------------------------------------------------------------

    def _changes(self) -> dict[str, Change]:
        """Each selected image's change; the class list first, which `category` indexes."""
        index: dict[str, int] = {}
        if self.boxed:
            cats = categories((b for it in self.items for b in it.boxes), self.ctx.classes)
            index = {mid: i for i, mid in enumerate(cats)}
            with self.ctx.tree.atomic_file(CLASSES_NAME) as fh:
                fh.write("".join(f"{self.ctx.name(mid)}\n" for mid in cats))
            self.ctx.result.files.append(self.ctx.tree.path / CLASSES_NAME)
        images = self.ctx.images
        return {it.image_id: self._change(it, index, images[it.image_id]) for it in self.items}

    def _change(self, it: _Item, index: dict[str, int], image: Written) -> Change:
        put = dict(it.fields)
        if self.boxed:  # the HF export's `objects`, field for field
            put["objects"] = {"bbox": [pixels(b, image) for b in it.boxes],
                              "category": [index[b.label] for b in it.boxes],
                              "labels": [self.ctx.name(b.label) for b in it.boxes],
                              "is_group_of": [b.flag(BoxAttribute.IS_GROUP_OF) for b in it.boxes]}
        if it.captions is None:
            return Change(put)
        if not it.captions:  # as a download with these narratives: no caption, no key
            return Change(put, ("captions",), texts=True)
        return Change({"captions": it.captions, **put}, texts=True, text=it.captions[0].encode())

    # -- the shards -------------------------------------------------------------------------

    def _rewrite_all(self, changes: dict[str, Change]) -> tuple[set[str], int]:
        """Every closed shard of every subset of OUT (other tasks' and splits' too): the
        ones holding a sample that changes written again. Returns the ImageIDs found in
        a closed shard, and how many shards were written."""
        tree, rewritten, total = self.ctx.tree, 0, 0
        found: set[str] = set()
        for subset in sorted(n for n in tree.names() if is_subset(n) and _is_dir(tree, n)):
            with tree.sub(subset, create=False) as folder:
                names = set(folder.names())
                for name in sorted(names):
                    if not shard_of_name(name, subset) or name + INDEX_SUFFIX not in names or not folder.is_file(name):
                        continue
                    total += 1
                    if self._rewrite(folder, subset, name, changes, found):
                        rewritten += 1
                        self.ctx.result.files.append(folder.path / name)
        self.notes.append(f"{rewritten} of the {total} shard(s) of {tree.path} written again with the annotations; "
                          "the others hold nothing that changed")
        return found, rewritten

    def _rewrite(self, folder: Tree, subset: str, name: str, changes: dict[str, Change], found: set[str]) -> bool:
        fd = folder.open(name, os.O_RDONLY)
        try:
            plan = self._plan(fd, folder, name, changes, found)
            if plan is None:
                return False
            self._write(fd, folder, subset, name, plan)
        finally:
            os.close(fd)
        LocalShards(self.ctx.tree.path).publish(subset, name)  # the sink's order: index, then tar
        return True

    def _plan(self, fd: int, folder: Tree, name: str, changes: dict[str, Change], found: set[str]) -> Rewrite | None:
        """What this shard becomes, or None when nothing in it changes (or it cannot be
        rewritten, which a note says)."""
        size = os.fstat(fd).st_size

        def read_at(pos: int, n: int) -> bytes:
            return os.pread(fd, n, pos)

        scanned, length = whole_samples(read_at, size)
        samples = [(s.outcome.image_id, s.members) for s in scanned]
        mine = [(key, members) for key, members in samples if key in changes]
        if not mine:
            return None
        found.update(key for key, _ in mine)
        where = folder.path / name
        index = self._index(folder, name, read_at, size, length)
        if index is None:
            return None
        new = {key: got for key, members in mine if (got := self._sample(read_at, members, changes[key], where, key))}
        if not new and _in_step(index, samples, size):
            return None
        return Rewrite(samples, new, index)

    def _index(self, folder: Tree, name: str, read_at: ReadAt, size: int, length: int) -> dict[str, Any] | None:
        """The shard's index, when the shard ends where its last whole sample does and
        its index reads; else None, and a note (it is left as it is)."""
        where = folder.path / name
        tail = read_at(length, min(size - length, _MAX_TAIL))
        if size - length > _MAX_TAIL or len(tail) < len(END_OF_ARCHIVE) or tail.strip(b"\0"):
            self.notes.append(f"{where} is damaged at byte {length} (`oidownload verify` finds what it lost): "
                              "left as it is, without annotations")
            return None
        try:
            return parse_index(folder.read_bytes(name + INDEX_SUFFIX), f"{where}{INDEX_SUFFIX}")
        except (OSError, BadIndex) as exc:
            self.notes.append(f"{where} has no index this command can read ({exc}): left as it is, without "
                              "annotations")
            return None

    def _sample(self, read_at: ReadAt, members: Members, change: Change, where: object,
                key: str) -> tuple[bytes, bytes | None] | None:
        """The sample's new JSON and `.txt`, or None when they are what it holds."""
        raw = read_at(*members["json"])
        try:
            old = json.loads(raw)
        except ValueError:
            old = None
        if not isinstance(old, dict):
            self.notes.append(f"{where}#{key}: its JSON member does not parse, so it was left as it is")
            return None
        meta = json.dumps(change.meta(old), ensure_ascii=False).encode()  # as the sink writes it
        had = read_at(*members["txt"]) if "txt" in members else None
        text = change.text if change.texts else had
        return None if (meta, text) == (raw, had) else (meta, text)

    def _write(self, src: int, folder: Tree, subset: str, name: str, plan: Rewrite) -> None:
        """The new tar and its index, durable under their part names."""
        dst = folder.open(part_name(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            try:
                members, size = _copy_samples(src, dst, plan)
                os.pwrite(dst, END_OF_ARCHIVE, size)
                size += len(END_OF_ARCHIVE)
                os.fsync(dst)
            finally:
                os.close(dst)
            entries = [{**e, "members": members[e["key"]]} for e in plan.index["samples"]
                       if isinstance(e, dict) and e.get("key") in members]
            write_index(folder.path, name, index_doc(name, subset, size, entries))
        except BaseException:
            for left in (part_name(name), index_part_name(name)):
                with contextlib.suppress(OSError):
                    folder.unlink(left, missing_ok=True)
            raise

    # -- after the shards -------------------------------------------------------------------

    def _say_unfound(self, changes: dict[str, Change], closed: set[str]) -> None:
        left = sorted(set(changes) - closed)
        if left:
            self.notes.append(
                f"{len(left)} image(s) (e.g. {left[0]}) are in no closed shard: in a shard a stopped download has "
                "not closed yet (run the download to its end, then this again), or lost (`oidownload verify`)")

    def _write_card(self) -> None:
        """The Croissant card names each shard's SHA-256: written again, as a download's
        end writes it. The lock lists the images' bytes, which did not change."""
        from oidownload.provenance.croissant import write_card
        from oidownload.provenance.lock import lock_path

        out = self.ctx.state.where()[0]
        lock = lock_path(out, self.ctx.state.path)
        if not lock.exists():
            return
        try:
            write_card(out, self.ctx.state, lock)
        except (OSError, ValueError, OidownloadError) as exc:
            self.notes.append(f"the Croissant card was not written again ({exc}): `oidownload lock {out}` writes it")

    # -- excluding a download ---------------------------------------------------------------

    def _hold(self) -> list[int]:
        """Every task's shard lock in OUT (a download takes its own before it touches a
        shard) and every journal's writer lock (a download's, and `verify`'s, which reads
        the shards to mark what it cannot), held until the end: OutputError naming the
        process that holds one. A task that never wrote here has no shard to lose."""
        tree = self.ctx.tree
        paths = [tree.path / n for n in sorted(tree.names()) if _SHARD_LOCK.fullmatch(n)]
        paths += [j.with_suffix(".lock") for j in journal_files(self.ctx.state.path)]
        fds: list[int] = []
        try:
            for path in paths:
                fd = take_lock(path, f"{_PURPOSE}, ", _busy(tree, path), required=False)
                if fd >= 0:
                    fds.append(fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _release(self) -> None:
        while self.locks:
            os.close(self.locks.pop())


def _busy(tree: Tree, lock: Path) -> Callable[[str], str]:
    return lambda holder: (
        f"another oidownload process ({holder}) holds {lock}: {_PURPOSE} rewrites the webdataset shards of "
        f"{tree.path} only while no download (or verify) uses them; wait for it to end, or stop it first")


def _is_dir(tree: Tree, name: str) -> bool:
    st = tree.lstat(name)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _in_step(index: dict[str, Any], samples: list[tuple[str, Members]], size: int) -> bool:
    """Whether the index says where each of its samples is, as the tar's headers do (a
    crash between the two renames leaves it out of step)."""
    held = dict(samples)
    try:
        return index.get("size") == size and all(
            held.get(e["key"]) == {str(k): (int(v[0]), int(v[1])) for k, v in e["members"].items()}
            for e in index["samples"])
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):
        return False


def _copy_samples(src: int, dst: int, plan: Rewrite) -> tuple[dict[str, Members], int]:
    """The shard's samples into dst: each run of unchanged ones copied whole, a changed
    one written by _write_sample. Returns each sample's members and the length."""
    members: dict[str, Members] = {}
    run, old, new = _Pending(), 0, 0  # old, new: where the next sample starts in src, in dst
    for key, had in plan.samples:
        end = member_end(*had["json"])  # samples follow each other: each ends with its JSON
        if key in plan.new:
            _flush(src, dst, run)
            meta, text = plan.new[key]
            members[key], new = _write_sample(src, dst, key, had, meta, text, new)
        else:
            if not run.length:
                run.old, run.new = old, new
            run.length += end - old
            members[key] = {k: (off - old + new, n) for k, (off, n) in had.items()}
            new += end - old
        old = end
    _flush(src, dst, run)
    return members, new


def _flush(src: int, dst: int, run: _Pending) -> None:
    if run.length:
        copy_range(src, dst, run.old, run.new, run.length)
        run.length = 0


def _write_sample(src: int, dst: int, key: str, had: Members, meta: bytes, text: bytes | None,
                  pos: int) -> tuple[Members, int]:
    """One changed sample at pos: its image, original and masks as they were, then the
    new `.txt` and JSON, stamped with the old JSON's time (the same input gives the same
    bytes). Returns its members and where it ends."""
    members: Members = {}
    for suffix, (off, n) in had.items():
        if suffix not in ("txt", "json"):
            length = member_end(off, n) - (off - BLOCK)
            copy_range(src, dst, off - BLOCK, pos, length)
            members[suffix] = (pos + BLOCK, n)
            pos += length
    mtime = member_mtime(lambda at, n: os.pread(src, n, at), had["json"][0])
    for suffix, data in (("txt", text), ("json", meta)):
        if data is not None:
            block = member_block(f"{key}.{suffix}", data, mtime)
            os.pwrite(dst, block, pos)
            members[suffix] = (pos + BLOCK, len(data))
            pos += len(block)
    return members, pos


