"""Writes that a crash or a power cut cannot half-do: atomic and durable files, folders swapped whole."""

from __future__ import annotations

import os
import threading

import pytest

from hub import files
from hub.files import atomic_write_text, replace_dir


def test_a_reader_never_sees_no_folder_while_it_is_replaced(tmp_path):
    """An index folder replaced 200 times while a reader looks at it: the reader sees the old or the new one,
    never a moment without one."""
    final = tmp_path / "index"
    final.mkdir()
    (final / "meta.json").write_text("0")
    missing: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not (final / "meta.json").exists():
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 201):
            built = tmp_path / f"built-{i}"
            built.mkdir()
            (built / "meta.json").write_text(str(i))
            replace_dir(built, final)
    finally:
        stop.set()
        thread.join()
    assert not missing and (final / "meta.json").read_text() == "200"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # every old folder removed


def test_without_an_atomic_exchange_the_old_folder_still_goes_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # a kernel or file system without it
    final = tmp_path / "index"
    final.mkdir()
    (final / "a").write_text("old")
    built = tmp_path / "new"
    built.mkdir()
    (built / "a").write_text("new")
    replace_dir(built, final)
    assert (final / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_data_reaches_the_disk_before_the_rename_that_commits_it(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write_text(tmp_path / "part-00000.done", "{}")
    assert events == ["fsync", "replace", "fsync"]  # the file, the rename, the folder entry


def test_a_shard_is_on_the_disk_before_its_done_marker(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    pytest.importorskip("pyarrow")
    from service.embed import shards

    manifest = shards.Manifest(model_id="m", revision="r", weights_sha256=None, architecture="resnet18",
                               layers=["avgpool"], pooling="gap", normalize=False, dtype="float32",
                               dims={"avgpool": 4}, preprocessing={}, input="/x", input_kind="folder",
                               input_fingerprint="f", input_count=2, shard_size=2)
    events: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    rows = shards.ShardRows(0, ["a", "b"], ["/x/a", "/x/b"], [None, None], {"avgpool": np.ones((2, 4), np.float32)})
    shards.write_shard(tmp_path, manifest, rows)
    names = [os.path.basename(e) for e in events]
    shard_synced = next(i for i, n in enumerate(names) if n.startswith(".part-00000.tmp"))
    marker_synced = next(i for i, n in enumerate(names) if n.startswith(".part-00000.done"))
    assert shard_synced < marker_synced and (tmp_path / "part-00000.parquet").exists()


def test_clearing_a_run_removes_markers_before_shards_and_stale_curation(tmp_path, monkeypatch):
    from hub.storage import Store
    from service.embed.shards import clear_outputs

    for name in ("part-00000.parquet", "part-00000.done", "manifest.json", "curation/duplicates.parquet",
                 "index/meta.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed: list[str] = []
    real_remove = Store.remove
    monkeypatch.setattr(Store, "remove", lambda self, name: removed.append(name) or real_remove(self, name))
    clear_outputs(tmp_path)
    assert removed.index("part-00000.done") < removed.index("part-00000.parquet") and removed[-1] == "manifest.json"
    assert not any(tmp_path.iterdir())
