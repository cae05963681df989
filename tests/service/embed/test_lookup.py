"""A query by id reads about one vector: from the index where it keeps the vectors (Flat, HNSW, IVF with Flat or SQ
lists, through a direct map), else one row group of the one shard that holds the row (PQ codes are approximate,
the shard's vector is exact). A served index whose shards were removed answers 503 until it catches up."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.embed.cli import main
from service.embed.index import LoadedIndex
from storage.folder import SHARD_ROW_GROUP
from tests.curation.test_import import planted_vectors, write_parquet
from tests.support.server import make_client


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """600 vectors imported from Parquet (one shard of several row groups)."""
    root = tmp_path_factory.mktemp("lookup")
    ids, x, _ = planted_vectors(600)
    write_parquet(root / "vectors", ids, x)
    assert main(["import", str(root / "vectors"), "--output", str(root / "emb")]) == 0
    return root / "emb", dict(zip(ids, x))


def _indexed(imported, tmp_path, factory: str):
    import shutil

    folder = tmp_path / "emb"
    shutil.copytree(imported[0], folder)
    assert main(["index", str(folder), "--factory", factory]) == 0
    return folder


def test_shards_are_written_in_small_row_groups(imported):
    (shard,) = sorted(imported[0].glob("part-*.parquet"))
    meta = pq.ParquetFile(shard).metadata
    assert meta.num_rows == 600 and meta.num_row_groups == -(-600 // SHARD_ROW_GROUP)


def test_an_ivf_flat_index_answers_from_its_own_lists_without_a_shard(imported, tmp_path):
    folder = _indexed(imported, tmp_path, "IVF4,Flat")
    loaded = LoadedIndex.open(folder)
    for shard in folder.glob("part-*.parquet"):
        shard.unlink()  # nothing left to read but the index
    got = loaded.vector_of("img/00123.jpg").ravel()
    assert np.allclose(got, imported[1]["img/00123.jpg"], atol=1e-6)


def test_a_pq_index_reads_one_row_group_for_the_exact_vector(imported, tmp_path, monkeypatch):
    folder = _indexed(imported, tmp_path, "IVF2,PQ8x4")
    loaded = LoadedIndex.open(folder)
    read: list[int] = []
    real = pq.ParquetFile.read_row_group

    def counted(self, group, *args, **kwargs):
        table = real(self, group, *args, **kwargs)
        read.append(table.num_rows)
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    got = loaded.vector_of("img/00300.jpg").ravel()
    assert read == [SHARD_ROW_GROUP] and np.array_equal(got, imported[1]["img/00300.jpg"])


def test_a_served_index_whose_shards_are_gone_answers_503_until_it_catches_up(imported, tmp_path, trained_model):
    """The served index is generations behind: the folder's garbage collection removed the shards it points at
    (simulated by removing them). A query by id answers 503 index_behind with Retry-After, not a 500."""
    folder = _indexed(imported, tmp_path, "IVF2,PQ8x4")
    with make_client(trained_model, index=str(folder), index_poll_s=7) as client:
        assert client.post("/search", json={"id": "img/00010.jpg", "k": 3}).status_code == 200
        for shard in folder.glob("part-*.parquet"):
            shard.unlink()
        response = client.post("/search", json={"id": "img/00010.jpg", "k": 3})
    assert response.status_code == 503 and response.headers["retry-after"] == "7", response.text
    error = response.json()["error"]
    assert error["code"] == "index_behind" and "generation 1" in error["message"]
