"""An embedding folder follows its input: an append run embeds only the new and changed images, drops the gone
ones, commits a new generation, and equals a run from scratch on the new input (folders, Parquet and tar inputs,
on disk, on S3 and on Ray); the index follows in place."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("faiss")

import service.embed.pipeline as pipeline  # noqa: E402
from service.embed.cli import main  # noqa: E402
from service.embed.index import LoadedIndex  # noqa: E402
from storage.folder import PENDING, Manifest, finished_shards  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.support.images import image_bytes, write_images  # noqa: E402

LAYERS = "avgpool,feature3"


def args_for(model: Path, data: str, out: str, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--input", data, "--output", out, "--layers", LAYERS, "--shard-size", "4",
            "--batch-size", "4", "--max-pixels", "500000", "--no-progress", *extra]


def rows_by_id(folder: str, storage_options: dict | None = None) -> dict[str, dict]:
    store = Store(folder, storage_options)
    manifest = Manifest.load(store)
    out = {}
    for path in finished_shards(store, manifest):
        table = pq.read_table(path, filesystem=store.fs)
        for row in table.to_pylist():
            assert row["id"] not in out, f"{row['id']} twice in the generation"
            out[row["id"]] = row
    return out


def assert_same_rows(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want)
    for item_id, row in want.items():
        other = got[item_id]
        assert other["error"] == row["error"] and other["sha256"] == row["sha256"], item_id
        for layer in LAYERS.split(","):
            if row["error"] is None:
                assert np.abs(np.array(other[layer]) - np.array(row[layer])).max() <= 1e-6, (item_id, layer)
            else:
                assert other[layer] is None


@pytest.fixture()
def decodes(monkeypatch) -> list[int]:
    """How many images the run decodes (every decode goes through ``decode_blob``)."""
    count = [0]
    real = pipeline.decode_blob

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_blob", counting)
    return count


def change_folder(data: Path, photos) -> None:
    """Two new images, one whose bytes changed, one gone, one touched (new mtime, the same bytes)."""
    new = photos[1].copy()
    new.thumbnail((120, 120))
    new.save(data / "photo0" / "new-a.jpg")
    (data / "arrivals").mkdir()
    new.rotate(90).save(data / "arrivals" / "new-b.png")
    changed = photos[2].copy()
    changed.thumbnail((100, 100))
    changed.save(data / "photo0" / "01.jpg")  # another picture under an old name
    (data / "photo1" / "02.jpg").unlink()
    stat = (data / "photo1" / "01.jpg").stat()
    os.utime(data / "photo1" / "01.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_an_append_embeds_only_what_changed_and_equals_a_run_from_scratch(trained_model, photos, tmp_path, decodes,
                                                                           capsys):
    data = tmp_path / "data"
    listed = write_images(data, photos, copies=3)  # and 3 broken files
    out = tmp_path / "emb"
    assert main(args_for(trained_model, str(data), str(out))) == 0
    assert decodes[0] == len(listed)
    assert main(["index", str(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    change_folder(data, photos)
    capsys.readouterr()

    decodes[0] = 0
    assert main(args_for(trained_model, str(data), str(out), "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "generation 2 (on 1) would add 2, embed again 1 changed, drop 2 rows (1 gone)" in printed, printed
    assert "photo0/new-a.jpg" in printed and "photo1/02.jpg" in printed and "photo0/01.jpg" in printed
    assert decodes[0] == 0 and {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == before
    assert json.loads((out / "manifest.json").read_text())["generation"] == 1

    assert main(args_for(trained_model, str(data), str(out))) == 0
    printed = capsys.readouterr().out
    assert decodes[0] == 3  # the two new images and the changed one: nothing else is decoded
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"] == 2 and manifest["changes"]["compared"] == 2  # the touched and the changed file
    assert {k: manifest["changes"][k] for k in ("added", "changed", "gone", "unchanged")} == \
        {"added": 2, "changed": 1, "gone": 1, "unchanged": len(listed) - 2}
    assert "generation 2 committed" in printed and "index updated in place to generation 2 (3 added, 2 removed)" in printed
    untouched = [p for p in manifest["parts"] if not p["name"].startswith("part-g")]
    assert all((out / p["name"]).stat().st_mtime_ns == before[p["name"]] for p in untouched)  # never rewritten
    assert (out / "generations" / "000001.json").exists() and (out / "generations" / "000002.json").exists()

    scratch = tmp_path / "scratch"
    assert main(args_for(trained_model, str(data), str(scratch), "--no-index-update")) == 0
    assert_same_rows(rows_by_id(str(out)), rows_by_id(str(scratch)))

    index = LoadedIndex.open(out)
    assert index.generation == 2 and len(index.ids) == len(listed) - 3 + 1 and "photo1/02.jpg" not in index.ids
    for item_id in ("photo0/new-a.jpg", "arrivals/new-b.png", "photo0/01.jpg"):
        assert index.search(index.vector_of(item_id), 1)[0]["id"] == item_id
    decodes[0] = 0
    assert main(args_for(trained_model, str(data), str(out))) == 0
    assert "up to date: generation 2" in capsys.readouterr().out and decodes[0] == 0


def test_a_third_generation_removes_the_first_generations_files_and_keeps_the_second(trained_model, photos, tmp_path):
    data = tmp_path / "data"
    write_images(data, photos[:2], copies=4)
    out = tmp_path / "emb"
    assert main(args_for(trained_model, str(data), str(out), "--layers", "avgpool")) == 0
    first = set(Manifest.load(out).parts[i]["name"] for i in range(len(Manifest.load(out).parts)))
    (data / "photo0" / "00.png").unlink()  # its shard is written again without it
    assert main(args_for(trained_model, str(data), str(out), "--layers", "avgpool")) == 0
    second = {p["name"] for p in Manifest.load(out).parts}
    assert "part-00000.parquet" not in second and (out / "part-00000.parquet").exists()  # a reader one behind
    (data / "photo1" / "03.png").unlink()
    assert main(args_for(trained_model, str(data), str(out), "--layers", "avgpool")) == 0
    third = {p["name"] for p in Manifest.load(out).parts}
    on_disk = {p.name for p in out.glob("part-*.parquet")}
    assert on_disk == second | third and not (first - second - third) & on_disk


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _parquet(path: Path, blobs: list[bytes]) -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": b, "path": None} for b in blobs], image)}), path)


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_tar_and_parquet_inputs_append_a_new_file_and_drop_a_gone_one(kind, trained_model, photos, tmp_path, decodes):
    blobs = [image_bytes(p.resize((64, 64)).rotate(angle), "JPEG") for p in photos for angle in (0, 90)]
    data = tmp_path / "data"
    data.mkdir()
    write = (lambda path, part: _tar(path, {f"{i:03d}.jpg": b for i, b in enumerate(part)})) if kind == "tar" else _parquet
    write(data / f"a.{kind}", blobs[:4])
    write(data / f"b.{kind}", blobs[4:7])
    out = tmp_path / "emb"
    assert main(args_for(trained_model, str(data), str(out))) == 0
    write(data / f"c.{kind}", blobs[7:])  # a new shard of the dataset
    (data / f"b.{kind}").unlink()
    decodes[0] = 0
    assert main(args_for(trained_model, str(data), str(out))) == 0
    assert decodes[0] == len(blobs) - 7
    assert Manifest.load(out).changes["gone"] == 3
    scratch = tmp_path / "scratch"
    assert main(args_for(trained_model, str(data), str(scratch))) == 0
    assert_same_rows(rows_by_id(str(out)), rows_by_id(str(scratch)))


def test_an_append_on_s3_with_ray_equals_a_local_run_from_scratch(trained_model, photos, tmp_path, s3, ray_cluster):
    local = tmp_path / "data"
    write_images(local, photos[:3], copies=3)
    s3.fs.put(str(local) + "/", "bkt/grow/data/", recursive=True)
    options = ["--storage-option", f"endpoint_url={s3.endpoint}"]
    remote = args_for(trained_model, "s3://bkt/grow/data/", "s3://bkt/grow/emb/", *options)
    assert main(remote) == 0
    extra = photos[3].copy()
    extra.thumbnail((120, 120))
    extra.save(local / "photo0" / "zz-new.jpg")
    s3.fs.put(str(local / "photo0" / "zz-new.jpg"), "bkt/grow/data/photo0/zz-new.jpg")
    s3.fs.rm("bkt/grow/data/photo2/00.png")
    (local / "photo2" / "00.png").unlink()
    assert main([*remote, "--engine", "ray", "--ray-address", ray_cluster.address, "--workers", "1"]) == 0
    manifest = Manifest.load(Store("s3://bkt/grow/emb/", {"endpoint_url": s3.endpoint}))
    assert manifest.generation == 2 and manifest.changes["added"] == 1 and manifest.changes["gone"] == 1
    scratch = tmp_path / "scratch"
    assert main(args_for(trained_model, str(local), str(scratch))) == 0
    got = rows_by_id("s3://bkt/grow/emb/", {"endpoint_url": s3.endpoint})
    want = rows_by_id(str(scratch))
    for row in list(got.values()) + list(want.values()):
        row["path"] = None  # one set is on S3, the other on disk
    assert_same_rows(got, want)


def test_other_settings_are_refused_with_the_reason(trained_model, photos, tmp_path, capsys):
    data = tmp_path / "data"
    write_images(data, photos[:1], copies=2)
    out = tmp_path / "emb"
    assert main(args_for(trained_model, str(data), str(out))) == 0
    shutil.copy(data / "photo0" / "00.png", data / "photo0" / "copy.png")
    assert main(args_for(trained_model, str(data), str(out), "--normalize")) == 2
    err = capsys.readouterr().err
    assert "normalize: False -> True" in err and "--overwrite" in err
    assert Manifest.load(out).generation == 1
    # a run with other settings was interrupted here: its plan is refused to a rerun with these, not dropped
    replace(Manifest.load(out), normalize=True, generation=2, base_generation=1).save(out, PENDING)
    assert main(args_for(trained_model, str(data), str(out))) == 2
    assert "an interrupted run with other settings (normalize: True -> False)" in capsys.readouterr().err
