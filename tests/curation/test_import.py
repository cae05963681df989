"""`byol-embed import`: vectors a user already has (Parquet or NumPy) made into an embedding folder, on disk and on
S3, then curated, indexed, searched and served like any other; without images, what needs them says why."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.embed.cli import main
from tests.support.server import make_client

DIM = 48


def planted_vectors(n: int = 600, seed: int = 0) -> tuple[list[str], np.ndarray, set[frozenset[str]]]:
    """Unit vectors in a few clusters, with planted near-duplicate pairs (cosine ~0.99) and an exact pair."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIM))
    x = centres[rng.integers(0, 12, n)] + 0.8 * rng.normal(size=(n, DIM))
    pairs: set[frozenset[str]] = set()
    if n < 60:
        return [f"img/{i:05d}.jpg" for i in range(n)], (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
            np.float32), pairs
    for k in range(0, 40, 2):
        x[k + 1] = x[k] + 0.05 * rng.normal(size=DIM)
        pairs.add(frozenset((f"img/{k:05d}.jpg", f"img/{k + 1:05d}.jpg")))
    x[41] = x[40]
    pairs.add(frozenset(("img/00040.jpg", "img/00041.jpg")))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [f"img/{i:05d}.jpg" for i in range(n)], x.astype(np.float32), pairs


def write_parquet(path, ids, x, id_column="id", vector_column="embedding", files=1) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for f, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        table = pa.table({id_column: [ids[i] for i in part],
                          vector_column: pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), DIM)})
        pq.write_table(table, path / f"part-{f}.parquet", row_group_size=100)


def found_pairs(folder) -> set[frozenset[str]]:
    table = pq.read_table(folder / "curation" / "duplicates.parquet").to_pydict()
    groups: dict[int, list[str]] = {}
    for g, i in zip(table["group"], table["id"]):
        groups.setdefault(g, []).append(i)
    return {frozenset((a, b)) for members in groups.values() for a in members for b in members if a < b}


def test_imported_parquet_is_curated_indexed_and_searched(tmp_path, capsys):
    ids, x, pairs = planted_vectors()
    write_parquet(tmp_path / "vectors", ids, x, files=3)
    out = tmp_path / "emb"
    assert main(["import", str(tmp_path / "vectors"), "--output", str(out), "--shard-size", "250"]) == 0
    assert "imported 600 vectors (48-d, as layer embedding)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"] == "imported" and manifest["layers"] == ["embedding"] and len(manifest["parts"]) == 3
    # every curation command, on the folder's only layer without --layer
    for argv in (["index", str(out)], ["dedup", str(out), "--no-progress", "--json"],
                 ["outliers", str(out), "--no-progress"], ["select", str(out), "-n", "20", "--no-progress"],
                 ["map", str(out), "--no-progress", "--clusters", "4"]):
        assert main(argv) == 0, argv
    dedup = json.loads(capsys.readouterr().out.splitlines()[1])  # index printed one line first
    assert dedup["threshold"] == 0.86 and "no model to calibrate with" in dedup["threshold_from"]["why"]
    assert pairs <= found_pairs(out)  # every planted pair, found by the vectors alone
    assert main(["search", str(out), "--id", "img/00000.jpg", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "img/00001.jpg"
    # what needs a model or the images says why, and loses nothing
    image = tmp_path / "q.png"
    image.write_bytes(b"\x89PNG")
    for argv, words in ((["search", str(out), "--image", str(image)], "imported"),
                        (["calibrate", str(out)], "imported"),
                        (["quality", str(out), "--no-progress"], "without --input")):
        assert main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv


def test_imported_numpy_with_its_images_gets_thumbnails_and_quality(tmp_path, trained_model, photo_paths, capsys):
    images = tmp_path / "images"
    images.mkdir()
    names = []
    for i, path in enumerate(photo_paths[:6]):
        shutil.copy(path, images / f"p{i}{path.suffix}")
        names.append(f"p{i}{path.suffix}")
    x = np.random.default_rng(1).normal(size=(len(names), DIM)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "emb"
    assert main(["import", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"), "--output", str(out),
                 "--input", str(images)]) == 0
    assert "images at" in capsys.readouterr().out
    assert main(["quality", str(out), "--no-progress", "--json"]) == 0  # the images are read again
    assert json.loads(capsys.readouterr().out)["measured"] == len(names)
    assert main(["index", str(out)]) == 0
    with make_client(trained_model, index=str(out)) as client:  # any model serves an imported index
        assert client.get("/ready").status_code == 200
        found = client.post("/search", json={"id": names[0], "k": 2})
        assert found.status_code == 200 and len(found.json()["results"]) == 2
        refused = client.post("/search", files={"image": ("q.jpg", (images / names[1]).read_bytes())})
        assert refused.status_code == 400 and "imported" in refused.json()["error"]["message"]
        thumb = client.get("/thumb", params={"id": names[2]})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # the same vectors again: refused without --overwrite, replaced with it
    argv = ["import", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"), "--output", str(out)]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_bad_vectors_are_refused_with_what_was_wrong(tmp_path, capsys):
    ids, x, _ = planted_vectors(20)
    write_parquet(tmp_path / "a", ids, x, id_column="key")
    cases = [(["import", str(tmp_path / "a"), "--output", str(tmp_path / "o1")], "no column 'id'"),
             (["import", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "o2")], "no Parquet files"),
             (["import", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o3")], "--ids")]
    write_parquet(tmp_path / "b", ids[:5] + ids[:5], np.concatenate([x[:5], x[:5]]))
    cases.append((["import", str(tmp_path / "b"), "--output", str(tmp_path / "o4")], "more than once"))
    ragged = pa.table({"id": ["a", "b"], "embedding": pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32()))})
    (tmp_path / "c").mkdir()
    pq.write_table(ragged, tmp_path / "c" / "r.parquet")
    cases.append((["import", str(tmp_path / "c"), "--output", str(tmp_path / "o5")], "lengths differ"))
    np.save(tmp_path / "x.npy", x)
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err, (argv, err)
    assert not (tmp_path / "o4" / "manifest.json").exists()  # nothing half-written is committed


def test_import_from_and_to_s3(s3, tmp_path, capsys):
    ids, x, pairs = planted_vectors(300, seed=2)
    write_parquet(tmp_path / "v", ids, x, files=2)
    s3.upload_tree(tmp_path / "v", "bkt/imports/v")
    options = s3.option
    out = "s3://bkt/imports/emb"
    assert main(["import", "s3://bkt/imports/v/*.parquet", "--output", out, *options]) == 0
    assert main(["dedup", out, "--no-progress", "--threshold", "0.9", *options]) == 0
    local = tmp_path / "copy"
    s3.fs.get("bkt/imports/emb/curation", str(local / "curation"), recursive=True)
    assert pairs <= found_pairs(local)
