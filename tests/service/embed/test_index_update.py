"""An index follows its folder's generations: in place where the index type allows it (Flat, IVF with its trained
quantizer: rows removed and added by label), rebuilt where it does not or should not, saying why."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("faiss")

from service.embed.index import LoadedIndex, build_index, update_index  # noqa: E402
from storage.folder import (  # noqa: E402
    Manifest,
    ShardRows,
    commit_generation,
    plan_shards,
    prepare_folder,
    rewrite_name,
    rewrite_shard,
    write_shard,
)
from storage.store import Store  # noqa: E402

DIM = 16


def _manifest() -> Manifest:
    return Manifest(model_id="synthetic", revision="r", weights_sha256="0" * 64, architecture="resnet18",
                    layers=["avgpool"], pooling="gap", normalize=False, dtype="float32", dims={"avgpool": DIM},
                    preprocessing={}, input="/x", input_kind="files", input_fingerprint="", input_count=0,
                    shard_size=100)


def _rows(index: int, name: str, ids: list[str], rng) -> ShardRows:
    vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    return ShardRows(index, ids, [f"/x/{i}" for i in ids], [None] * len(ids), {"avgpool": vectors},
                     [f"sha-{i}" for i in ids], name=name)


def generation(store: Store, number: int, new_ids: list[str], drop: dict[str, list[int]], rng) -> Manifest:
    """Commit generation ``number``: ``new_ids`` in new shards, rows ``drop`` (shard -> rows) dropped."""
    rewrites = [{"from": name, "name": rewrite_name(k, number), "drop": rows} for k, (name, rows) in
                enumerate(sorted(drop.items()))]
    pending = replace(_manifest(), generation=number, base_generation=number - 1,
                      shards=plan_shards(len(new_ids), 100, number),
                      work={"digest": str(number), "rewrites": rewrites, "removed_parts": []})
    prepare_folder(store, pending)
    parts = {p["name"]: p["rows"] for p in (Manifest.load(store).parts if number > 1 else [])}
    for r in rewrites:
        rewrite_shard(store, r["from"], r["name"], [k for k in range(parts[r["from"]]) if k not in r["drop"]])
    for shard in pending.shards:
        write_shard(store, pending, _rows(shard["index"], shard["name"], new_ids[shard["start"]:shard["stop"]], rng))
    return commit_generation(store, pending)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_an_index_follows_in_place_then_is_rebuilt_past_twice_its_training_set(factory, tmp_path):
    rng = np.random.default_rng(0)
    store = Store(str(tmp_path))
    generation(store, 1, [f"a{i:03d}" for i in range(200)], {}, rng)
    build_index(store, factory=factory)
    first = LoadedIndex.open(store)
    kept_vector = first.vector_of("a150")

    generation(store, 2, [f"b{i:03d}" for i in range(50)], {"part-00000.parquet": [0, 1]}, rng)
    meta = update_index(store)
    assert meta["action"] == "updated in place to generation 2 (50 added, 2 removed)"
    index = LoadedIndex.open(store)
    assert index.generation == 2 and len(index.ids) == 248 and {"a000", "a001"}.isdisjoint(index.ids)
    for item_id in ("b000", "b049", "a150", "a002"):
        assert index.search(index.vector_of(item_id), 1)[0]["id"] == item_id
    assert np.allclose(index.vector_of("a150"), kept_vector, atol=1e-6)
    assert index.sha256[index.ids.index("b007")] == "sha-b007"
    assert update_index(store)["action"] == "already at generation 2"

    generation(store, 3, [f"c{i:03d}" for i in range(200)], {}, rng)
    meta = update_index(store)
    if factory == "Flat":
        assert meta["action"].startswith("updated in place to generation 3 (200 added, 0 removed)")
    else:
        assert meta["action"].startswith("rebuilt (the set grew from 200 to 448 vectors (2.2x) since its quantizer "
                                         "was trained")
    index = LoadedIndex.open(store)
    assert len(index.ids) == 448 and index.search(index.vector_of("c199"), 1)[0]["id"] == "c199"


def test_an_index_that_cannot_remove_is_rebuilt_and_says_so(tmp_path):
    rng = np.random.default_rng(1)
    store = Store(str(tmp_path))
    generation(store, 1, [f"a{i:03d}" for i in range(60)], {}, rng)
    build_index(store, factory="HNSW8")
    generation(store, 2, ["b000"], {"part-00000.parquet": [3]}, rng)
    assert update_index(store)["action"] == "rebuilt (HNSW8 cannot remove vectors)"
    index = LoadedIndex.open(store)
    assert len(index.ids) == 60 and "a003" not in index.ids and index.generation == 2
