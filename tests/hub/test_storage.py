"""``hub.storage``: the URL helpers every input and output goes through (no storage needed)."""

from __future__ import annotations

import pytest

from hub.sources import DataError, open_source
from hub.storage import (
    StorageError,
    Store,
    expand_braces,
    filesystem,
    is_url,
    parse_storage_options,
    public_url,
)


def test_brace_ranges_expand_as_webdataset_writes_them():
    assert expand_braces("s3://b/train-{000..003}.tar") == [f"s3://b/train-{i:03d}.tar" for i in range(4)]
    assert expand_braces("a-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar"]
    assert expand_braces("{x,y}/p-{0..1}.tar") == ["x/p-0.tar", "x/p-1.tar", "y/p-0.tar", "y/p-1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(StorageError, match="runs backwards"):
        expand_braces("a-{5..1}.tar")
    with pytest.raises(StorageError, match="expected"):
        expand_braces("a-{abc}.tar")


def test_storage_options_parse_json_values_and_nest_dotted_keys():
    options = parse_storage_options(["endpoint_url=http://h:9000", "anon=true", "config_kwargs.read_timeout=30",
                                     "config_kwargs.retries.max_attempts=2", "profile=dev"])
    assert options == {"endpoint_url": "http://h:9000", "anon": True, "profile": "dev",
                       "config_kwargs": {"read_timeout": 30, "retries": {"max_attempts": 2}}}
    with pytest.raises(StorageError, match="expected KEY=VALUE"):
        parse_storage_options(["endpoint_url"])


def test_urls_lose_their_userinfo():
    assert public_url("s3://AKIA:secret@bucket/x") == "s3://bucket/x"
    assert is_url("s3://b/x") and is_url("hf://datasets/o/n") and not is_url("/data/x") and not is_url("file:///data")


def test_a_missing_fsspec_package_names_the_extra(monkeypatch):
    pytest.importorskip("fsspec")
    import importlib.util

    for url, extra in (("gs://b/x", "gcs"), ("az://c/x", "azure")):
        package = {"gcs": "gcsfs", "azure": "adlfs"}[extra]
        if importlib.util.find_spec(package) is not None:
            continue
        with pytest.raises(StorageError, match=rf"pip install 'byol\[{extra}\]'"):
            filesystem(url)
        with pytest.raises(StorageError, match=rf"byol\[{extra}\]"):
            open_source(url)
    with pytest.raises(StorageError, match="unknown storage protocol"):
        filesystem("nosuchproto://x/y")


def test_local_store_creates_once_and_writes_whole_files(tmp_path):
    store = Store(tmp_path / "out")
    assert store.create("lock", b"a") and not store.create("lock", b"b")
    assert store.read_bytes("lock") == b"a" and store.conditional
    store.write_text("m.json", "{}")
    assert store.names("*.json") == ["m.json"] and not list((tmp_path / "out").glob(".m.json.*"))
    store.remove("lock")
    assert not store.exists("lock")


def test_local_brace_ranges_name_every_missing_shard(tmp_path):
    import io
    import tarfile

    for i in range(2):
        with tarfile.open(tmp_path / f"s-{i}.tar", "w") as tar:
            info = tarfile.TarInfo("a.jpg")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    assert len(open_source(str(tmp_path / "s-{0..1}.tar"))) == 2
    with pytest.raises(DataError, match="1 of the 3 files"):
        open_source(str(tmp_path / "s-{0..2}.tar"))
