"""``storage.location``: the URL helpers every input and output goes through (no storage needed)."""

from __future__ import annotations

import pytest

from storage.errors import StorageError
from storage.location import expand_braces, filesystem, is_url, parse_storage_options, public_url
from storage.sources import open_source


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


def test_a_local_path_is_one_more_fsspec_filesystem(tmp_path):
    import fsspec.implementations.local

    fs, path = filesystem(tmp_path / "x")
    assert isinstance(fs, fsspec.implementations.local.LocalFileSystem) and path == str(tmp_path / "x")
    assert filesystem(f"file://{tmp_path}/y")[1] == str(tmp_path / "y")
    (tmp_path / "f").write_bytes(b"abc")
    assert fs.info(str(tmp_path / "f"))["mtime_ns"] == (tmp_path / "f").stat().st_mtime_ns
