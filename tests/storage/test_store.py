"""``storage.store.Store``: the same operations, with the same results, on local disk and on a real S3 endpoint
(moto's server); each kind of storage keeps its writes whole and decides between two writers its own way."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.store import Store


@pytest.fixture(params=["disk", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "disk":
        return Store(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    return Store(f"s3://bkt/{tmp_path.name}/out", s3.options)


def test_whole_files_names_and_versions(store):
    store.mkdir()
    store.write_text("m.json", "{}")
    store.write_bytes("sub/a.bin", b"a")
    assert store.read_text("m.json") == "{}" and store.exists("sub/a.bin") and not store.exists("nope")
    assert store.names("*.json") == ["m.json"]
    version = store.version("m.json")
    store.write_text("m.json", '{"x": 1}')
    assert store.version("m.json") not in (None, version) and store.info("m.json")["size"] == 8
    assert store.version("nope") is None
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope")
    if store.is_local:  # nothing half-written is left beside it
        assert sorted(p.name for p in store.local_path().iterdir()) == ["m.json", "sub"]


def test_create_is_conditional_and_replace_and_remove_happen_only_at_the_version_read(store):
    """What a lock needs from its storage: two writers can never both win."""
    assert store.conditional
    first = store.create("lock", b"a")
    assert first and store.create("lock", b"b") is None and store.read_bytes("lock") == b"a"
    second = store.replace_if("lock", b"c", first)
    assert second and second != first and store.read_bytes("lock") == b"c"
    assert store.replace_if("lock", b"d", first) is None and store.read_bytes("lock") == b"c"  # a stale version
    assert not store.remove_if("lock", first) and store.exists("lock")
    assert store.remove_if("lock", second) and not store.exists("lock")


def test_write_with_streams_a_whole_file_and_publish_folder_swaps_a_whole_folder(store):
    store.write_with("part.bin", lambda tmp: Path(tmp).write_bytes(b"x" * 1000))
    assert store.read_bytes("part.bin") == b"x" * 1000

    def build(files: dict[str, bytes]):
        def write(folder: Path) -> None:
            for name, data in files.items():
                (folder / name).write_bytes(data)
        return write

    store.publish_folder("index", build({"data.bin": b"old", "index.json": b"1"}), last="index.json")
    store.publish_folder("index", build({"data.bin": b"new", "index.json": b"2"}), last="index.json")
    assert store.read_bytes("index/data.bin") == b"new" and store.read_bytes("index/index.json") == b"2"
    local = store.local_copy(["index/data.bin", "index/index.json"], key=store.version("index/index.json").encode())
    assert (local / "index" / "data.bin").read_bytes() == b"new"
    store.remove_tree("index")
    store.remove("part.bin")
    store.remove("part.bin")  # already gone: nothing to do
    assert not store.exists("index/data.bin") and not store.exists("part.bin")


def test_a_fence_is_asked_before_every_write_and_removal(store):
    asked = []
    store.fence = asked.append
    store.write_bytes("a", b"1")
    store.child("sub").write_bytes("b", b"2")
    store.remove("a")
    store.remove_tree("sub")
    assert asked == ["a", "sub/b", "a", "sub"]
