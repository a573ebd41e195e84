"""The lock file: what a download actually obtained, in a form another machine can check.

    OUT/oidownload.lock.jsonl.gz     (for an s3:// output: in the state dir)

A gzip of JSON lines. The first line is the header: the tool and Pillow build, every
setting that changes the bytes written (settings.py), the selection flags, each input
and annotation file with its size and SHA-256, and a fingerprint of the journals it was
made from (`status` compares it to say whether the lock is current). Then one line per
journaled ImageID, in ImageID order, with its final outcome; an ok line carries the
SHA-256 and size of the bytes written, computed by the worker as it wrote them. The
last line is a trailer with the counts: a lock without it was cut short.

Written from the journals a chunk at a time (memory does not grow with the images),
under a temporary name renamed into place: a kill while writing leaves the previous
lock as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import itertools
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from oidownload import __version__
from oidownload.core import fsio
from oidownload.core.errors import InputError, OutputError
from oidownload.core.ids import int_to_id
from oidownload.core.records import clean_text
from oidownload.engine.accel import pillow_build
from oidownload.sinks import Reader, is_remote
from oidownload.state.reader import StateDir
from oidownload.state.remembered import RememberedSelection
from oidownload.state.settings import META_KEY as SETTINGS_KEY

LOCK_NAME = "oidownload.lock.jsonl.gz"
KIND = "oidownload-lock-v1"
# The outcome columns a line is made of; a journal from before a column existed gives NULL.
_COLUMNS = ("status", "detail", "subset", "source", "url", "sha256", "out_bytes", "width", "height", "location",
            "verified", "finished", "original_md5", "original_size")
_HASH_BLOCK = 1 << 20
# A temporary lock older than this was left by a killed writer, not one still running.
_STALE_TMP = 3600.0


def lock_path(out: str, state_dir: Path) -> Path:
    """Where the lock of an output lives: beside the data, or for a bucket in the state dir."""
    return state_dir / LOCK_NAME if is_remote(out) else Path(out) / LOCK_NAME


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def fingerprint(state: StateDir) -> str:
    """Changes whenever a journal's outcomes do: the counts per status (a new row,
    `verify` marking one damaged) and each task's run and outcomes recorded (a retry
    that ended as it was). Two small tables: `status` answers at once on 9M rows."""
    h = hashlib.sha256()
    for journal in state.journals:
        h.update(journal.name.encode())
        for status, n in state.query(journal, "SELECT status, n FROM counts ORDER BY status"):
            h.update(f"|{status}:{n}".encode())
        for shard, started, processed in state.query(journal, "SELECT shard, started, processed FROM progress "
                                                              "ORDER BY shard"):
            h.update(f"|{shard}:{started}:{processed}".encode())
    return h.hexdigest()


@dataclass
class LockResult:
    path: Path
    lines: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _meta_json(state: StateDir, key: str) -> dict[str, Any]:
    for value in state.meta(key):
        try:
            d = json.loads(value)
        except ValueError:
            continue
        if isinstance(d, dict):
            return d
    return {}


def _previous_hashes(path: Path) -> dict[tuple[str, int, int], str]:
    """(path, size, mtime_ns) → SHA-256 from the lock being replaced: an input list of
    gigabytes is hashed once, not at the end of every resumed run."""
    try:
        header = read_header(path)
    except (OSError, ValueError, InputError):
        return {}
    found = {}
    for f in header.get("inputs", []):
        if isinstance(f, dict) and f.get("sha256") and f.get("mtime_ns") is not None:
            found[(str(f.get("path")), int(f.get("size") or 0), int(f["mtime_ns"]))] = str(f["sha256"])
    return found


def _file_entry(role: str, path: Path, cache: dict[tuple[str, int, int], str],
                recorded: tuple[int | None, int | None] | None = None, display: str = "") -> dict[str, Any]:
    """A file the selection was made from, with its size and SHA-256 as it is now; when
    it is gone or no longer the file the run read (`recorded`: size, mtime), its hash is
    null and `changed` says so."""
    # The path as safe text (a name that is not UTF-8 keeps U+FFFD for its odd bytes).
    display = display or clean_text(str(path), 4096)
    entry: dict[str, Any] = {"role": role, "path": display, "name": Path(display).name}
    try:
        st = os.stat(path)
    except OSError:
        entry.update(size=recorded[0] if recorded else None, sha256=None, changed="gone")
        return entry
    if not stat.S_ISREG(st.st_mode):  # a pipe or a FIFO: read once by the run, never opened again
        entry.update(size=None, sha256=None, changed="not a regular file (a pipe?): it was read once")
        return entry
    entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if recorded is not None and recorded[0] is not None and (recorded[0], recorded[1]) != (st.st_size, st.st_mtime_ns):
        entry.update(sha256=None, changed="the file changed after the run read it")
        return entry
    key = (display, st.st_size, st.st_mtime_ns)
    try:
        entry["sha256"] = cache.get(key) or file_sha256(path)
    except OSError as exc:
        entry.update(sha256=None, changed=f"cannot be read: {exc.strerror or exc}")
    return entry


def _inputs(state: StateDir, selection: dict[str, Any], cache: dict[tuple[str, int, int], str]) -> list[dict[str, Any]]:
    files = [_file_entry("images", info.path, cache, (info.size, info.mtime_ns), info.display) for info in state.inputs()]
    for role, key in (("annotations", "annotation_files"), ("class_descriptions", "class_descriptions"),
                      ("hierarchy", "hierarchy"), ("ids", "ids_file"), ("classes", "classes_file")):
        value = selection.get(key)
        for name in value if isinstance(value, list) else [value] if value else []:
            files.append(_file_entry(role, Path(str(name)), cache))
    return files


def header(state: StateDir, previous: Path | None = None) -> dict[str, Any]:
    out, kind = state.output()
    selection = dict(RememberedSelection.read(state).options)
    return {
        "kind": KIND, "tool": "oidownload", "version": __version__, "pillow": pillow_build().describe(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output": out, "output_format": kind.value,
        "settings": _meta_json(state, SETTINGS_KEY), "selection": selection,
        "inputs": _inputs(state, selection, _previous_hashes(previous) if previous else {}),
        "journals": fingerprint(state),
    }


def _journal_lines(state: StateDir, journal: Path) -> Iterator[tuple[int, tuple[object, ...]]]:
    """(unsigned id, row) of one journal in ImageID order: the non-negative half of the
    signed ids first."""
    have = state.columns(journal)
    cols = ", ".join(c if c in have else f"NULL AS {c}" for c in _COLUMNS)
    for half in ("id >= 0", "id < 0"):
        for row in state.outcome_rows(journal, cols, half):
            yield int(row[0]) % (1 << 64), row[1:]  # type: ignore[call-overload]


def _best(rows: list[tuple[object, ...]]) -> tuple[object, ...]:
    """One outcome per ImageID across journals that overlap (a re-split output): an ok
    row wins, the one that knows its hash first; else the latest."""
    oks = [r for r in rows if r[0] == "ok"]
    if oks:
        return max(oks, key=lambda r: (r[5] is not None, float(r[11] or 0)))  # type: ignore[arg-type]
    return max(rows, key=lambda r: float(r[11] or 0))  # type: ignore[arg-type]


def lines(state: StateDir, reader: Reader | None = None) -> Iterator[dict[str, Any]]:
    """One line per journaled ImageID, in ImageID order, merged across the journals. With
    a `reader`, a written image whose row knows no SHA-256 (journaled before hashes were
    kept) is read back and hashed."""
    streams = [_journal_lines(state, j) for j in state.journals]
    for uid, group in itertools.groupby(heapq.merge(*streams, key=lambda r: r[0]), key=lambda r: r[0]):
        status, detail, subset, source, url, sha, out_bytes, w, h, location, verified, _, md5, size = _best([r for _, r in group])
        line: dict[str, Any] = {"id": int_to_id(uid), "subset": subset, "status": status, "source": source or None,
                                "url": url or None}
        if status == "ok" and sha is None and reader is not None and location:
            try:
                data = reader.read(str(location))
            except OSError:
                pass  # not there any more: `verify` says so, the lock keeps no hash
            else:
                sha, out_bytes = hashlib.sha256(data).hexdigest(), len(data)
        if status == "ok":
            line.update(sha256=sha, size=out_bytes, width=w, height=h, location=location,
                        md5_matched=bool(verified) and source == "original",
                        etag_matched=bool(verified) and source == "cvdf")
        else:
            line["detail"] = detail
        if md5:  # the row's OriginalMD5 and OriginalSize: a rebuild from the lock alone checks them
            line.update(original_md5=md5, original_size=size)
        yield line


def _sweep(folder: Path) -> None:
    """Removes the temporary files a killed writer of the lock or the card left behind."""
    now = time.time()
    try:
        for p in folder.glob(f".*{fsio.TMP_SUFFIX}"):
            if p.name.startswith((f".{LOCK_NAME}.", ".croissant.json.", ".oidownload.")) \
                    and now - p.stat().st_mtime > _STALE_TMP:
                p.unlink(missing_ok=True)
    except OSError:
        pass


def write_lock(out: str, state_dir: Path | None = None, *, card: bool = True, hash_missing: bool = False,
               grace: float | None = None) -> LockResult:
    """Writes (replaces) the lock of OUT from its journals, then the Croissant card; with
    `hash_missing`, images journaled without a SHA-256 are read back and hashed; `grace`
    bounds each request of a bucket (the download's --grace), as the run's own uploads are.
    InputError when OUT has no journal, OutputError when the lock cannot be written."""
    started = time.monotonic()
    state = StateDir.open(out, state_dir)
    path = lock_path(out, state.path)
    result = LockResult(path)
    _sweep(path.parent)
    try:
        with fsio.atomic_file(path, "wb") as raw:
            _write(raw, state, path, result, state.reader() if hash_missing else None)
    except OSError as exc:
        raise OutputError(f"cannot write the lock {path}: {exc.strerror or exc}") from None
    if is_remote(out):
        upload_beside(out, path, grace)
    if card:
        from oidownload.provenance.croissant import write_card

        write_card(out, state, path, grace)
    result.seconds = time.monotonic() - started
    return result


def upload_beside(out: str, path: Path, grace: float | None = None) -> None:
    """A bucket's lock (or card file) goes beside its data, under its own name; the copy
    in the state dir stays, for `status` and the next card."""
    from oidownload.sinks.s3 import S3Blobs, parse_uri, reason

    blobs = S3Blobs(parse_uri(out), grace=grace)
    try:
        blobs.put_file(path.name, path)
    except Exception as exc:  # obstore raises its own kinds
        raise OutputError(f"cannot upload {path.name} to {blobs.describe(path.name)}: {reason(exc)}") from None


def _write(raw: IO[bytes], state: StateDir, path: Path, result: LockResult, reader: Reader | None) -> None:
    # mtime=0: the gzip header carries no time, so the same journals give the same bytes
    # but for the header's own `written` field.
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped, \
            io.BufferedWriter(zipped, 1 << 20) as gz:  # one compress call per MB, not per line
        gz.write(dumps_line(header(state, path)))
        for line in lines(state, reader):
            gz.write(dumps_line(line))
            result.lines += 1
            result.counts[line["status"]] = result.counts.get(line["status"], 0) + 1
        gz.write(dumps_line({"end": True, "images": result.lines, "counts": dict(sorted(result.counts.items()))}))
    raw.flush()
    os.fsync(raw.fileno())


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps_line(d: dict[str, Any]) -> bytes:
    text = _ENCODER.encode(d)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate from an undecodable name: escaped, never lost
        return json.dumps(d, separators=(",", ":")).encode() + b"\n"


# -- reading a lock ----------------------------------------------------------------------

def _open_lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    d = json.loads(raw)
                except ValueError:
                    raise InputError(f"{path}: line {n} is not JSON: not an oidownload lock, or damaged") from None
                if not isinstance(d, dict):
                    raise InputError(f"{path}: line {n} is not a JSON object")
                yield d
    except FileNotFoundError:
        raise InputError(f"the lock {path} does not exist") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read the lock {path}: {exc}") from None


def read_header(path: Path) -> dict[str, Any]:
    first = next(_open_lines(path), None)
    if first is None or first.get("kind") != KIND:
        raise InputError(f"{path} is not an oidownload lock (its first line is no {KIND} header)")
    return first


@dataclass
class Lock:
    """A lock being read: its header now, its lines once, in ImageID order."""

    path: Path
    header: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Lock:
        return cls(path, read_header(path))

    def lines(self) -> Iterator[dict[str, Any]]:
        """The image lines; InputError when the lock was cut short (no trailer)."""
        it = _open_lines(self.path)
        next(it, None)
        ended = False
        for d in it:
            if d.get("end") is True:
                ended = True
                break
            if not isinstance(d.get("id"), str):
                raise InputError(f"{self.path}: a line has no ImageID")
            yield d
        if not ended:
            raise InputError(f"the lock {self.path} was cut short (no end line): write it again with `oidownload lock`")


def is_current(out: str, state: StateDir) -> bool | None:
    """Whether OUT's lock matches its journals now; None when there is no lock."""
    path = lock_path(out, state.path)
    if not path.exists():
        return None
    try:
        return bool(read_header(path).get("journals") == fingerprint(state))
    except InputError:
        return False


def lock_status(out: str, state_dir: Path | None = None) -> str | None:
    """`status`'s line about the lock: None when OUT has none."""
    state = StateDir.open(out, state_dir)
    current = is_current(out, state)
    if current is None:
        return None
    path = lock_path(out, state.path)
    if current:
        return f"current ({path})"
    return f"not current: the journals have outcomes newer than {path}; `oidownload lock {out}` rewrites it"
