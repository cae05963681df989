"""Inputs, one case at a time, each run on local disk and on a real S3 endpoint (moto's server): every kind of input
lists the same ids, reads the same bytes and fails with the same error in both places; the one difference a user
meets is said where it is (a list on object storage names objects under its own prefix only)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest

from storage.errors import DataError
from storage.sources import inside, open_source
from tests.support.images import image_bytes, tar_bytes

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


class Place:
    """Where a case puts its files: a folder on disk, or a prefix on the S3 endpoint."""

    def __init__(self, kind: str, tmp_path: Path, s3=None) -> None:
        self.kind, self.s3 = kind, s3
        self.root = tmp_path / "data" if kind == "disk" else f"bkt/{tmp_path.name}"

    def put(self, name: str, data: bytes) -> None:
        if self.kind == "disk":
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.s3.fs.pipe_file(f"{self.root}/{name}", data)

    def url(self, name: str = "") -> str:
        base = str(self.root) if self.kind == "disk" else f"s3://{self.root}"
        return f"{base}/{name}" if name else base

    def open(self, name: str = "", **kwargs):
        options = self.s3.options if self.kind == "s3" else None
        return open_source(self.url(name), storage_options=options, **kwargs)


@pytest.fixture(params=["disk", "s3"])
def place(request, tmp_path):
    if request.param == "disk":
        return Place("disk", tmp_path)
    return Place("s3", tmp_path, request.getfixturevalue("s3"))


@pytest.fixture(scope="module")
def blobs(photos) -> list[bytes]:
    small = [img.copy() for img in photos[:3]]
    for img in small:
        img.thumbnail((48, 48))
    return [image_bytes(img, "JPEG", quality=80) for img in small] + [image_bytes(small[0], "PNG")]


def _ids(source) -> list[str]:
    return [source.item_id(i) for i in range(len(source))]


def _parquet(table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature


def test_a_folder_lists_every_image_below_it_sorted_with_ids_relative_to_it(place, blobs):
    for name, data in (("b/2.jpg", blobs[1]), ("a/1.jpg", blobs[0]), ("a/deeper/3.png", blobs[3]),
                       ("notes.txt", b"not an image")):
        place.put(name, data)
    source = place.open()
    assert source.kind == "files" and _ids(source) == ["a/1.jpg", "a/deeper/3.png", "b/2.jpg"]
    assert [source.read(i) for i in range(3)] == [blobs[0], blobs[3], blobs[1]]
    assert source.item_path(0) == place.url("a/1.jpg")
    assert place.open().fingerprint() == source.fingerprint()  # listed again, unchanged: the same input
    place.put("a/1.jpg", blobs[2])
    assert place.open().fingerprint() != source.fingerprint()  # a changed image changes the input
    again = pickle.loads(pickle.dumps(source))  # what Ray actors and DataLoader workers receive
    assert again.read(2) == blobs[1]


def test_a_list_names_images_relative_to_itself_and_a_missing_one_is_that_rows_error(place, blobs):
    place.put("imgs/x.jpg", blobs[0])
    place.put("imgs/sub/y.jpg", blobs[1])
    place.put("imgs/list.txt", b"# a list\nx.jpg\n\nsub/./y.jpg extra columns are ignored\nmissing.jpg\n")
    source = place.open("imgs/list.txt")
    assert _ids(source) == ["x.jpg", "sub/./y.jpg", "missing.jpg"]
    assert source.item_path(1) == place.url("imgs/sub/y.jpg")
    first, missing, second = source.read_many([0, 2, 1])  # an error in its place, the others read
    assert first == blobs[0] and second == blobs[1] and isinstance(missing, FileNotFoundError)
    with pytest.raises(OSError):
        source.read(2)


def test_a_parquet_column_of_paths_is_a_list(place, blobs):
    place.put("imgs/x.jpg", blobs[0])
    place.put("imgs/y.jpg", blobs[1])
    place.put("imgs/paths.parquet", _parquet(pa.table({"file": ["y.jpg", "x.jpg"], "label": [1, 0]})))
    with pytest.raises(DataError, match="--path-column"):
        place.open("imgs/paths.parquet")
    source = place.open("imgs/paths.parquet", path_column="file")
    assert _ids(source) == ["y.jpg", "x.jpg"] and source.read(1) == blobs[0]
    with pytest.raises(DataError, match="has no column 'nope'"):
        place.open("imgs/paths.parquet", path_column="nope")


def test_tar_shards_as_a_file_a_folder_a_glob_and_a_brace_range(place, blobs):
    for shard in range(3):
        place.put(f"shards/train-{shard:03d}.tar", tar_bytes([(f"k{shard}/a.jpg", blobs[shard]), ("k/b.png", blobs[3]),
                                                         ("k/b.txt", b"a caption")]))
    one = place.open("shards/train-000.tar")
    assert one.kind == "tar" and _ids(one) == ["train-000.tar/k0/a", "train-000.tar/k/b"]
    assert one.read(0) == blobs[0] and one.read(1) == blobs[3]
    folder, glob = place.open("shards"), place.open("shards/train-*.tar")
    braces = place.open("shards/train-{000..002}.tar")
    assert _ids(folder) == _ids(glob) == _ids(braces) and len(folder) == 6
    assert braces.read_many([4, 5]) == [blobs[2], blobs[3]]
    assert braces.fingerprint() == place.open("shards/train-{000..002}.tar").fingerprint()
    with pytest.raises(DataError, match="1 of the 4 files"):
        place.open("shards/train-{000..003}.tar")
    with pytest.raises(DataError, match="no files match"):
        place.open("shards/val-*.tar")


def test_parquet_with_the_images_inside_a_file_a_folder_and_a_glob(place, blobs):
    rows = [{"bytes": b, "path": None} for b in blobs[:3]]
    place.put("hf/train-00000.parquet", _parquet(pa.table({"image": pa.array(rows[:2], IMAGE), "key": ["a", "b"]})))
    place.put("hf/train-00001.parquet", _parquet(pa.table({"image": pa.array(rows[2:], IMAGE), "key": ["c"]})))
    folder = place.open("hf")
    assert folder.kind == "parquet-images" and _ids(folder) == ["train-00000.parquet/0", "train-00000.parquet/1",
                                                                "train-00001.parquet/0"]
    assert [folder.read(i) for i in range(3)] == blobs[:3]
    assert _ids(place.open("hf/train-*.parquet")) == _ids(folder)
    keyed = place.open("hf/train-00000.parquet", id_column="key")
    assert _ids(keyed) == ["a", "b"] and keyed.read(1) == blobs[1]
    place.put("bad/no-image.parquet", _parquet(pa.table({"text": ["a"]})))
    with pytest.raises(DataError, match="has no column of image bytes .* and no column of image paths"):
        place.open("bad/no-image.parquet")
    with pytest.raises(DataError, match="not image bytes"):
        place.open("bad/no-image.parquet", image_column="text")


def test_what_does_not_exist_or_holds_no_images_is_a_clear_error(place, blobs):
    with pytest.raises(DataError, match="does not exist"):
        place.open("nothing-here")
    place.put("empty/readme.md", b"# no images")
    with pytest.raises(DataError, match="holds no images"):
        place.open("empty")
    place.put("odd/file.xyz", b"?")
    with pytest.raises(DataError, match="cannot read"):
        place.open("odd/file.xyz")


def test_a_list_on_object_storage_stays_under_its_prefix_and_on_disk_may_name_any_file(place, blobs, tmp_path):
    """The one difference between the two: a list on object storage is read with credentials that may reach far
    beyond it, so its entries stay under its own prefix; a list on disk may name any file its user can read."""
    place.put("lists/in/x.jpg", blobs[0])
    place.put("elsewhere/y.jpg", blobs[1])
    place.put("lists/up.txt", b"in/x.jpg\n../elsewhere/y.jpg\n")
    if place.kind == "s3":
        for entry in (b"../elsewhere/y.jpg", b"s3://bkt/elsewhere/y.jpg", b"/bkt/elsewhere/y.jpg"):
            place.put("lists/escape.txt", b"in/x.jpg\n" + entry + b"\n")
            with pytest.raises(DataError, match="climbs out|is absolute"):
                place.open("lists/escape.txt")
    else:
        source = place.open("lists/up.txt")
        assert source.read(1) == blobs[1]
        place.put("lists/absolute.txt", f"{place.root / 'elsewhere' / 'y.jpg'}\n".encode())
        assert place.open("lists/absolute.txt").read(0) == blobs[1]


def test_a_hugging_face_image_row_reads_beside_its_file_and_never_elsewhere(place, blobs):
    """An Image row with a path and no bytes reads the file beside the Parquet; one naming a path elsewhere is
    that row's error (the job records it), and the file it named is never read."""
    place.put("data/ok.png", blobs[3])
    place.put("secret.png", blobs[1])
    rows = [{"bytes": None, "path": "ok.png"}, {"bytes": None, "path": "../secret.png"},
            {"bytes": None, "path": "/secret.png"}]
    place.put("data/train.parquet", _parquet(pa.table({"image": pa.array(rows, IMAGE)})))
    source = place.open("data/train.parquet")
    assert source.read(0) == blobs[3]
    for row in (1, 2):
        with pytest.raises(OSError, match="climbs out|is absolute"):
            source.read(row)


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
