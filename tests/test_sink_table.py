"""The sinks come from a table keyed by (where, layout), not an if-ladder: every place
takes every layout, and readers pair any blobs with any layout."""

from __future__ import annotations

from pathlib import Path

from oidownload.core.config import OutputConfig, OutputKind
from oidownload.core.shard import Shard
from oidownload.sinks import BLOBS, LOCAL, READERS, SINKS, STORE, open_reader, open_sink, where
from oidownload.sinks.files import FilesSink
from oidownload.sinks.tar import TarReader, TarSink


def test_every_place_takes_every_layout() -> None:
    assert set(SINKS) == {(w, kind) for w in (LOCAL, STORE) for kind in OutputKind}
    assert set(BLOBS) == {LOCAL, STORE}
    assert set(READERS) == set(OutputKind)
    assert where("s3://bucket/x") == where("az://c/x") == STORE and where("/data/out") == LOCAL


def test_local_sinks_and_readers(tmp_path: Path) -> None:
    shard = Shard(0, 1)
    files = OutputConfig(str(tmp_path / "f"), tmp_path / "state")
    assert type(open_sink(files, shard)) is FilesSink
    tar = OutputConfig(str(tmp_path / "t"), tmp_path / "state", OutputKind.WEBDATASET)
    assert type(open_sink(tar, shard)) is TarSink
    assert type(open_reader(str(tmp_path), OutputKind.WEBDATASET)) is TarReader
