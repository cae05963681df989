"""Two writers and one manifest: writer A pauses between the last check of its lease and the commit of its
generation (its PUT of manifest.json), and writer B, who took the folder over, commits a generation meanwhile.
A's commit must fail with a clear message and B's generation must stand, on a real S3 endpoint (moto's server:
``If-Match``) and on local disk (a compare-and-rename under ``flock``)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from storage.errors import FolderError  # noqa: E402
from storage.folder import (  # noqa: E402
    Manifest,
    ShardRows,
    commit_generation,
    plan_shards,
    prepare_folder,
    write_shard,
)
from storage.store import Store  # noqa: E402

DIM = 8


@pytest.fixture(params=["disk", "s3"])
def url(request, tmp_path):
    if request.param == "disk":
        return str(tmp_path / "out"), None
    s3 = request.getfixturevalue("s3")
    return f"s3://bkt/{tmp_path.name}/out", s3.options


def _pending(generation: int, digest: str, ids: list[str]) -> Manifest:
    base = Manifest(model_id="synthetic", revision="r", weights_sha256="0" * 64, architecture="resnet18",
                    layers=["avgpool"], pooling="gap", normalize=False, dtype="float32", dims={"avgpool": DIM},
                    preprocessing={}, input="/x", input_kind="files", input_fingerprint=digest,
                    input_count=len(ids), shard_size=100)
    return replace(base, generation=generation, base_generation=generation - 1,
                   shards=plan_shards(len(ids), 100, generation),
                   work={"digest": digest, "rewrites": [], "removed_parts": []})


def _write(store: Store, pending: Manifest, ids: list[str]) -> None:
    prepare_folder(store, pending)
    for shard in pending.shards:
        part = ids[shard["start"]:shard["stop"]]
        write_shard(store, pending, ShardRows(shard["index"], part, [f"/x/{i}" for i in part], [None] * len(part),
                                              {"avgpool": np.ones((len(part), DIM), np.float32)},
                                              [f"sha-{i}" for i in part], name=shard["name"]))


def test_a_writer_paused_before_its_commit_cannot_roll_back_the_next_writers_generation(url):
    root, options = url
    first = Store(root, options)
    _write(first, one := _pending(1, "g1", ["a", "b"]), ["a", "b"])
    commit_generation(first, one)

    a_store, b_store = Store(root, options), Store(root, options)  # two processes' clients
    a = _pending(2, "writer-a", ["a", "b", "from-a"])
    _write(a_store, a, ["a", "b", "from-a"])
    paused, resume = threading.Event(), threading.Event()

    def pausing(write):
        def paused_write(name, *args):  # A stops between its check and its PUT of manifest.json, however made
            if name == "manifest.json":
                paused.set()
                resume.wait(30)
            return write(name, *args)
        return paused_write

    for method in ("write_bytes", "write_text", "create", "replace_if"):
        setattr(a_store, method, pausing(getattr(a_store, method)))
    outcome: list = []

    def writer_a() -> None:
        try:
            outcome.append(commit_generation(a_store, a))
        except FolderError as err:
            outcome.append(err)

    thread = threading.Thread(target=writer_a)
    thread.start()
    assert paused.wait(30)
    b = _pending(2, "writer-b", ["a", "b", "from-b"])  # B took the folder over and runs its own generation 2
    _write(b_store, b, ["a", "b", "from-b"])
    committed_b = commit_generation(b_store, b)
    resume.set()
    thread.join(60)

    (error,) = outcome
    assert isinstance(error, FolderError), error
    assert "another writer committed generation 2" in str(error) and "not committed" in str(error)
    stands = Manifest.load(Store(root, options))
    assert stands.generation == 2 and stands.input_fingerprint == "writer-b" and stands.parts == committed_b.parts
