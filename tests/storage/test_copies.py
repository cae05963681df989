"""The local copies of an index on object storage (``$BYOL_CACHE/copies/<store>/<key>/``), which a server
memory-maps: one per content, the newest few kept as generations come, and never a mix of two publishes."""

from __future__ import annotations

import pytest

from service.embed.cli import main
from service.embed.index import local_folder
from storage.errors import FolderError
from storage.store import COPIES_KEPT, Store
from tests.curation.test_import import planted_vectors, write_parquet

pytest.importorskip("s3fs")


@pytest.fixture()
def remote(s3, tmp_path, monkeypatch):
    """An imported folder with an index on the S3 endpoint; the cache in this test's own folder."""
    monkeypatch.setenv("BYOL_CACHE", str(tmp_path / "cache"))
    ids, x, _ = planted_vectors(300)
    write_parquet(tmp_path / "vectors", ids, x)
    url = f"s3://bkt/{tmp_path.name}/emb"
    assert main(["import", str(tmp_path / "vectors"), "--output", url, *s3.option]) == 0
    assert main(["index", url, *s3.option]) == 0
    return Store(url, s3.options), tmp_path / "cache" / "copies", s3


def test_copies_of_older_generations_are_pruned(remote):
    """Six publishes of the index (each other content): the cache keeps the newest copies only, the served one
    among them. Before, every generation's copy stayed until the pod's disk filled."""
    store, copies, s3 = remote
    served = []
    for factory in ("IVF2,Flat", "HNSW8", "IVF4,Flat", "Flat", "IVF3,Flat", "HNSW16"):
        assert main(["index", store.url(), "--factory", factory, "--rebuild", *s3.option]) == 0
        served.append(local_folder(store))
    (group,) = list(copies.iterdir())
    kept = sorted(p for p in group.iterdir() if not p.name.startswith("."))
    assert len(set(served)) == 6 and len(kept) == COPIES_KEPT, kept
    assert set(kept) == set(served[-COPIES_KEPT:]) and (served[-1] / "index" / "faiss.index").is_file()


def test_a_publish_during_the_copy_never_pairs_old_and_new_files(remote, monkeypatch):
    """The index is published again while its files are being copied (after the first one): the copy is dropped
    with a clear error rather than pairing an old ids.arrow with a new faiss.index; the next copy is whole."""
    store, copies, s3 = remote
    real = Store.download
    published: list[str] = []

    def download(self, name, local):
        real(self, name, local)
        if not published:  # a publish lands between this file and the next
            published.append(name)
            assert main(["index", store.url(), "--factory", "HNSW8", "--rebuild", *s3.option]) == 0

    monkeypatch.setattr(Store, "download", download)
    with pytest.raises(FolderError, match="changed while being copied"):
        local_folder(store)
    assert [p for p in copies.rglob("*") if p.is_file()] == []  # nothing half-copied left behind
    monkeypatch.setattr(Store, "download", real)
    folder = local_folder(store)
    for name in ("index/faiss.index", "index/ids.arrow", "index/index.json"):
        assert (folder / name).read_bytes() == store.read_bytes(name), name
