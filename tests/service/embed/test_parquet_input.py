"""Parquet with the image bytes inside, as input of `byol-embed run` and of training: the Hugging Face datasets
layout (an `Image` column, struct<bytes, path>, written by the `datasets` library itself) and a binary column."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.embed.cli import main as embed_main
from storage.sources import DataError, ParquetImageSource, open_source
from tests.support.images import image_bytes


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory, photos):
    """The same photos as a folder of JPEGs, as Hugging Face Parquet (two files, row groups of 2) and as a
    binary-column Parquet with an id column, a row that is not an image and a null row."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("parquet")
    folder = root / "folder"
    folder.mkdir()
    blobs = [image_bytes(img.convert("RGB"), "JPEG", quality=90) for img in photos]
    for i, blob in enumerate(blobs):
        (folder / f"{i:02d}.jpg").write_bytes(blob)
    hf = root / "hf"
    hf.mkdir()
    half = len(blobs) // 2
    for part, chunk in enumerate((blobs[:half], blobs[half:])):
        ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in chunk],
                                         "label": list(range(len(chunk)))})
        ds = ds.cast_column("image", datasets.Image())
        ds.to_parquet(str(hf / f"train-{part:05d}-of-00002.parquet"), batch_size=2)
    binary = root / "binary.parquet"
    table = pa.table({"key": [f"photo-{i}" for i in range(len(blobs))] + ["not-an-image", "null-row"],
                      "jpeg": pa.array([*blobs, b"definitely not an image", None], pa.binary())})
    pq.write_table(table, binary, row_group_size=3)
    return {"folder": folder, "hf": hf, "binary": binary, "count": len(blobs)}


def _rows(out: Path) -> dict:
    return pa.concat_tables([pq.read_table(p, columns=["id", "error", "avgpool"])
                             for p in sorted(out.glob("part-*.parquet"))]).to_pydict()


def test_the_datasets_layout_embeds_as_the_files_do(photo_set, trained_model, tmp_path):
    files, hf = tmp_path / "files", tmp_path / "hf"
    common = ["--model", str(trained_model), "--shard-size", "4", "--no-progress"]
    assert embed_main(["run", "--input", str(photo_set["folder"]), "--output", str(files), *common]) == 0
    assert embed_main(["run", "--input", str(photo_set["hf"]), "--output", str(hf), *common]) == 0
    a, b = _rows(files), _rows(hf)
    half = photo_set["count"] // 2
    assert b["id"] == [f"train-00000-of-00002.parquet/{i}" for i in range(half)] + \
        [f"train-00001-of-00002.parquet/{i}" for i in range(photo_set["count"] - half)]
    assert a["error"] == b["error"] == [None] * photo_set["count"]
    assert np.abs(np.array(a["avgpool"], np.float32) - np.array(b["avgpool"], np.float32)).max() <= 1e-6
    # a glob of the files is the same input
    glob_out = tmp_path / "glob"
    assert embed_main(["run", "--input", str(photo_set["hf"] / "train-*.parquet"), "--output", str(glob_out),
                       *common]) == 0
    assert _rows(glob_out) == b


def test_binary_column_with_ids_and_bad_rows(photo_set, trained_model, tmp_path):
    out = tmp_path / "bin"
    assert embed_main(["run", "--model", str(trained_model), "--input", str(photo_set["binary"]), "--output",
                       str(out), "--id-column", "key", "--no-progress"]) == 0
    rows = _rows(out)
    n = photo_set["count"]
    assert rows["id"] == [f"photo-{i}" for i in range(n)] + ["not-an-image", "null-row"]
    assert rows["error"][:n] == [None] * n
    assert "not a decodable image" in rows["error"][n] and "no image bytes" in rows["error"][n + 1]


def test_reads_one_row_group_at_a_time_and_travels_to_workers(photo_set):
    source = open_source(photo_set["binary"], id_column="key")
    assert isinstance(source, ParquetImageSource) and source.how == "binary" and source.column == "jpeg"
    from concurrent.futures import ThreadPoolExecutor

    loads = []
    load = source._load
    source._load = lambda f, g: (loads.append((f, g)), load(f, g))[1]
    with ThreadPoolExecutor(8) as pool:  # eight threads on one row group: it is read once, for all of them
        assert len(set(pool.map(source.read, [0, 1, 2] * 8))) == 3
    assert loads == [(0, 0)] and [len(v[0]) for v in source._groups.values()] == [3]  # the row group, not the file
    source.read(4)
    assert loads == [(0, 0), (0, 1)] and list(source._groups) == [(0, 0), (0, 1)]
    for i in range(photo_set["count"]):  # only the last few row groups stay in memory
        source.read(i)
    assert len(source._groups) <= 4
    del source._load
    copy = pickle.loads(pickle.dumps(source))  # a Ray actor or a DataLoader worker gets its own reader
    assert copy.read(4) == source.read(4) and copy.item_id(4) == "photo-4"
    assert source.item_path(4).endswith("binary.parquet#row=4")


def test_bad_parquet_inputs_are_clear_errors(photo_set, tmp_path, capsys):
    plain = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"x": [1, 2], "name": ["a", "b"]}), plain)
    with pytest.raises(DataError, match="has no column of image bytes .* and no column of image paths"):
        open_source(plain)
    with pytest.raises(DataError, match="no column of image bytes|not image bytes"):
        open_source(plain, image_column="x")
    with pytest.raises(DataError, match="has no column 'nope'"):
        open_source(photo_set["binary"], id_column="nope")
    two = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": pa.array([b"x"], pa.binary()), "b": pa.array([b"y"], pa.binary())}), two)
    with pytest.raises(DataError, match="several image columns"):
        open_source(two)
    assert embed_main(["run", "--model", "unused", "--input", str(plain), "--output", str(tmp_path / "o"),
                       "--image-column", "x", "--no-progress"]) == 2
    assert "not image bytes" in capsys.readouterr().err


def test_training_reads_the_datasets_layout(photo_set):
    from training.augment import AugmentConfig
    from training.data import TwoViewDataset

    dataset = TwoViewDataset(open_source(photo_set["hf"]), AugmentConfig(), seed=0)
    view1, view2, skipped = dataset[(0, 3)]
    assert len(dataset) == photo_set["count"] and skipped == 0
    assert view1.dtype == np.uint8 and view1.ndim == 3 and view1.shape == view2.shape
