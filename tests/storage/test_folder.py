"""The embedding folder's format (``storage.folder``): a shard is durable before its done marker, a cleared run
loses its markers before its shards."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage import folder
from storage.store import Store

pytest.importorskip("pyarrow")


def test_a_shard_is_on_the_disk_before_its_done_marker(tmp_path, monkeypatch):
    manifest = folder.Manifest(model_id="m", revision="r", weights_sha256=None, architecture="resnet18",
                               layers=["avgpool"], pooling="gap", normalize=False, dtype="float32",
                               dims={"avgpool": 4}, preprocessing={}, input="/x", input_kind="folder",
                               input_fingerprint="f", input_count=2, shard_size=2)
    events: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    rows = folder.ShardRows(0, ["a", "b"], ["/x/a", "/x/b"], [None, None], {"avgpool": np.ones((2, 4), np.float32)})
    folder.write_shard(tmp_path, manifest, rows)
    names = [os.path.basename(e) for e in events]
    shard_synced = next(i for i, n in enumerate(names) if n.startswith(".part-00000.parquet."))
    marker_synced = next(i for i, n in enumerate(names) if n.startswith(".part-00000.done"))
    assert shard_synced < marker_synced and (tmp_path / "part-00000.parquet").exists()


def test_clearing_a_run_removes_markers_before_shards_and_stale_curation(tmp_path, monkeypatch):
    for name in ("part-00000.parquet", "part-00000.done", "manifest.json", "curation/duplicates.parquet",
                 "index/meta.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed: list[str] = []
    real_remove = Store.remove
    monkeypatch.setattr(Store, "remove", lambda self, name: removed.append(name) or real_remove(self, name))
    folder.clear_outputs(tmp_path)
    assert removed.index("part-00000.done") < removed.index("part-00000.parquet") and removed[-1] == "manifest.json"
    assert not any(tmp_path.iterdir())
