"""Inputs: what a list or a Parquet row may name. Entries stay inside their folder wherever the data is
untrusted (remote lists, Hugging Face Image rows); the S3 cases are in tests/service/test_object_storage.py."""

from __future__ import annotations

import pytest

from hub.sources import DataError, inside

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.mark.parametrize("entry, expected", [
    ("x/y.jpg", "bkt/lists/x/y.jpg"),
    ("./z.jpg", "bkt/lists/z.jpg"),
    ("a/../b.jpg", "bkt/lists/b.jpg"),
])
def test_entries_inside_their_folder_resolve(entry, expected):
    assert inside("bkt/lists", entry) == expected


@pytest.mark.parametrize("entry", ["/etc/passwd", "../images/x.jpg", "a/../../x.jpg", "s3://other/x.jpg",
                                   "C:\\Windows\\x.jpg", "\\\\host\\share\\x.jpg"])
def test_entries_outside_their_folder_are_refused(entry):
    with pytest.raises(DataError, match="climbs out|is absolute"):
        inside("bkt/lists", entry)


def test_a_hugging_face_image_row_cannot_read_beside_its_folder(tmp_path, photos):
    """An Image row with a path and no bytes reads the file beside the Parquet; one naming a path elsewhere is
    that row's error (the job records it), and the file it named is never read."""
    from hub.sources import ParquetImageSource
    from tests.service.conftest import image_bytes

    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.png").write_bytes(image_bytes(photos[0], "PNG"))
    (tmp_path / "secret.png").write_bytes(image_bytes(photos[1], "PNG"))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [{"bytes": None, "path": "ok.png"}, {"bytes": None, "path": "../secret.png"},
            {"bytes": None, "path": str(tmp_path / "secret.png")}]
    pq.write_table(pa.table({"image": pa.array(rows, type=image)}), data / "train.parquet")
    source = ParquetImageSource([data / "train.parquet"])
    assert source.read(0) == (data / "ok.png").read_bytes()
    for row in (1, 2):
        with pytest.raises(OSError, match="climbs out|is absolute"):
            source.read(row)
