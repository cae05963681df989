"""``byol-embed``: a real image folder (tar and Parquet inputs too) into Parquet shards, resume after SIGKILL,
a local Ray cluster, a FAISS index, and ``/search`` on the server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("faiss")

from service.embed.cli import main  # noqa: E402
from service.embed.index import LoadedIndex  # noqa: E402
from storage.folder import QUALITY_COLUMNS, Manifest  # noqa: E402
from storage.lock import folder_lock  # noqa: E402
from storage.sources import read_located  # noqa: E402
from tests.support import REPO  # noqa: E402
from tests.support.images import image_bytes, write_images  # noqa: E402
from tests.support.server import float32_from_json_text, make_client  # noqa: E402

LAYERS = ("avgpool", "feature3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    write_images(root, photos, copies=4)
    return root


def run_cli(*args: str) -> int:
    return main(["run", *args, "--no-progress"])


def common(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--input", str(data), "--output", str(out), "--layers", ",".join(LAYERS),
            "--shard-size", "5", "--batch-size", "4", "--max-pixels", "500000", *extra]


def read_all(out: Path):
    import pyarrow.dataset as ds

    return ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table()


@pytest.fixture(scope="module")
def embedded(trained_model, dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "onnx"
    assert run_cli(*common(trained_model, dataset, out)) == 0
    return out


def test_every_file_has_one_row_in_plan_order_with_exact_columns(embedded, dataset):
    listed = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.suffix in (".jpg", ".png"))
    manifest = json.loads((embedded / "manifest.json").read_text())
    assert manifest["input_count"] == len(listed) == 27 and len(manifest["parts"]) == 6
    assert manifest["generation"] == 1 and manifest["changes"]["added"] == 27
    shards = sorted(embedded.glob("*.parquet"))
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(6)]
    assert all((embedded / f"part-{i:05d}.done").exists() for i in range(6))
    table = read_all(embedded)
    assert table.column_names == ["id", "path", "error", "sha256", "version", "locator", "avgpool", "feature3",
                                  *QUALITY_COLUMNS]
    # where each image's bytes are: read again with one read, no listing, they are the bytes that were embedded
    for item_id, locator in zip(table.column("id").to_pylist()[:4], table.column("locator").to_pylist()[:4]):
        assert read_located(locator) == (dataset / item_id).read_bytes()
    # the image statistics, measured from the decoded pixels: none where the image failed
    width = table.column("quality_width").to_pylist()
    assert all((w is None) == bool(e) for w, e in zip(width, table.column("error").to_pylist()))
    assert table.schema.field("avgpool").type == pa.list_(pa.float32(), 512)
    assert table.column("id").to_pylist() == listed  # sorted, relative, unique
    assert table.column("path").to_pylist() == [str((dataset / i).resolve()) for i in listed]
    errors = dict(zip(table.column("id").to_pylist(), table.column("error").to_pylist()))
    assert {k for k, v in errors.items() if v} == {"bad/corrupt.jpg", "bad/huge.png", "bad/truncated.jpg"}
    assert "the limit is 500000" in errors["bad/huge.png"]
    bad = [i for i, e in enumerate(table.column("error").to_pylist()) if e]
    assert all(table.column(layer)[i].as_py() is None for layer in LAYERS for i in bad)
    meta = json.loads(table.schema.metadata[b"byol"])
    assert meta["pooling"] == "gap" and meta["normalize"] is False


def test_pandas_and_duckdb_read_the_shards_as_they_are(embedded):
    pd = pytest.importorskip("pandas")
    duckdb = pytest.importorskip("duckdb")
    shards = sorted(str(p) for p in embedded.glob("*.parquet"))  # emb/*.parquet: the shards and nothing else
    frame = pd.read_parquet(shards)
    assert len(frame) == 27 and len(pd.read_parquet(shards[0])) == 5 and list(frame.columns) == ["id", "path", "error", "sha256", "version", "locator", "avgpool", "feature3", *QUALITY_COLUMNS]
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT count(*), count(error), max(len(avgpool)) FROM '{embedded}/*.parquet'").fetchall()
    assert rows == [(27, 3, 512)]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_vectors_equal_the_model_and_embed(embedded, trained_model, dataset, tmp_path, onnx_client, backend):
    import torch

    from hub import BYOLModel

    out = embedded if backend == "onnx" else tmp_path / "torch"
    if backend == "torch":
        assert run_cli(*common(trained_model, dataset, out, "--backend", "torch")) == 0
    table = read_all(out)
    ok = [i for i, e in enumerate(table.column("error").to_pylist()) if e is None]
    ids = [table.column("id")[i].as_py() for i in ok]
    model = BYOLModel.from_pretrained(trained_model)
    images = [Image.open(dataset / i) for i in ids]
    with torch.no_grad():
        ref = model.features(model.preprocess(images), LAYERS, "gap")
    for layer in LAYERS:
        got = np.array([table.column(layer)[i].as_py() for i in ok])
        assert np.abs(got - ref[layer].numpy()).max() <= 1e-4, layer
    files = [("images", (Path(i).name, (dataset / i).read_bytes(), "image/png")) for i in ids[:4]]
    served = onnx_client.post("/embed?layers=avgpool", files=files).json()
    got = np.array([table.column("avgpool")[i].as_py() for i in ok[:4]])
    assert np.abs(got - np.array([r["embeddings"]["avgpool"] for r in served["data"]])).max() <= 1e-4


def test_killed_run_resumes_to_the_uninterrupted_result(trained_model, photos, tmp_path, embedded):
    data = tmp_path / "many"
    data.mkdir()
    write_images(data, photos, copies=24)  # 147 images in 30 shards of 5
    out = tmp_path / "killed"
    args = [*common(trained_model, data, out), "--regions", "feature3"]  # the codec too is the killed run's
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "service.embed", "run", *args, "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "part-00002.done").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its third shard"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in out.glob("*.done"))
    assert 3 <= len(done_before) < 30
    kept = {name: (out / name.replace(".done", ".parquet")).stat().st_mtime_ns for name in done_before}
    (out / ".part-00029.tmp-424242").write_bytes(b"half a shard from a dead run")
    (codec,) = (out / "regions").glob("codec-*.npz")

    assert run_cli(*args) == 0
    assert list((out / "regions").glob("codec-*.npz")) == [codec]  # resumed with the codec its shards were made with
    assert Manifest.load(out).region_codec["file"] == f"regions/{codec.name}"
    assert not list(out.glob(".part-*.tmp-*"))
    assert all((out / n.replace(".done", ".parquet")).stat().st_mtime_ns == t for n, t in kept.items())
    ref = tmp_path / "uninterrupted"
    assert run_cli(*common(trained_model, data, ref), "--regions", "feature3") == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(p.name for p in ref.glob("*.parquet"))
    assert read_all(out).equals(read_all(ref))


def test_mismatched_rerun_is_refused_and_overwrite_starts_over(trained_model, dataset, embedded, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(embedded, out)
    assert run_cli(*common(trained_model, dataset, out, "--pooling", "mhead")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "pooling: 'gap' -> 'mhead'" in err and "--overwrite" in err
    assert run_cli(*common(trained_model, dataset, out, "--pooling", "mhead", "--overwrite")) == 0
    assert json.loads((out / "manifest.json").read_text())["pooling"] == "mhead"


def test_a_second_run_into_the_same_folder_is_refused(trained_model, dataset, embedded, capsys):
    with folder_lock(embedded):
        assert run_cli(*common(trained_model, dataset, embedded)) == 2
    assert "another byol-embed run holds" in capsys.readouterr().err


def test_tar_and_parquet_inputs(trained_model, photos, tmp_path):
    shard = tmp_path / "train-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, data in [("a/0001", image_bytes(photos[0], "JPEG")), ("a/0002", image_bytes(photos[1], "PNG")),
                          ("a/0003", b"\xff\xd8 broken")]:
            info = tarfile.TarInfo(f"{key}.{'png' if key.endswith('2') else 'jpg'}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            meta = json.dumps({"key": key}).encode()
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))
    assert run_cli("--model", str(trained_model), "--input", str(shard), "--output", str(tmp_path / "t")) == 0
    table = read_all(tmp_path / "t")
    assert table.column("id").to_pylist() == ["train-000.tar/a/0001", "train-000.tar/a/0002", "train-000.tar/a/0003"]
    assert table.column("path")[0].as_py() == f"{shard.resolve()}/a/0001.jpg"
    assert [e is None for e in table.column("error").to_pylist()] == [True, True, False]

    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(photos[:3]):
        img.save(tmp_path / "imgs" / f"{i}.jpg")
    pq.write_table(pa.table({"file": [f"imgs/{i}.jpg" for i in range(3)], "label": [0, 1, 2]}), tmp_path / "l.parquet")
    assert run_cli("--model", str(trained_model), "--input", str(tmp_path / "l.parquet"), "--path-column", "file",
                   "--output", str(tmp_path / "p")) == 0
    assert read_all(tmp_path / "p").column("id").to_pylist() == ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg"]


@pytest.mark.slow
def test_ray_engine_gives_the_local_result(trained_model, dataset, embedded, tmp_path, ray_cluster):
    out = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DISABLE_USAGE_STATS": "1"}
    proc = subprocess.run([sys.executable, "-m", "service.embed", "run", *common(trained_model, dataset, out),
                           "--engine", "ray", "--ray-address", ray_cluster.address, "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine ray" in proc.stdout and "start-up" in proc.stdout  # start-up apart from the steady rate
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(p.name for p in embedded.glob("*.parquet"))
    local, ray = read_all(embedded), read_all(out)
    for name in ("id", "path", "error", "sha256"):
        assert local.column(name).to_pylist() == ray.column(name).to_pylist()
    for layer in LAYERS:
        a = np.array([v if v is not None else [0.0] * local.schema.field(layer).type.list_size
                      for v in local.column(layer).to_pylist()])
        b = np.array([v if v is not None else [0.0] * ray.schema.field(layer).type.list_size
                      for v in ray.column(layer).to_pylist()])
        assert np.abs(a - b).max() <= 1e-5


@pytest.fixture(scope="module")
def indexed(embedded) -> Path:
    assert main(["index", str(embedded)]) == 0
    return embedded


def test_an_image_finds_itself_first_and_ids_find_their_neighbours(indexed, dataset, capsys):
    capsys.readouterr()
    query = dataset / "photo2" / "01.jpg"
    assert main(["search", str(indexed), "--image", str(query), "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 3 and set(results[0]) == {"id", "path", "score"}
    assert results[0]["id"] == "photo2/01.jpg" and results[0]["score"] > 0.999
    assert main(["search", str(indexed), "--id", "photo2/01.jpg", "-k", "3", "--json"]) == 0
    by_id = json.loads(capsys.readouterr().out)["results"]
    assert "photo2/01.jpg" not in [r["id"] for r in by_id] and len(by_id) == 3
    assert not list(indexed.rglob("index/*.parquet")) and (indexed / "index" / "index.json").exists()


def test_ivf_with_too_few_vectors_says_how_many_it_needs(indexed, capsys):
    assert main(["index", str(indexed), "--factory", "IVF64,Flat"]) == 2
    assert "needs about 2496 training vectors" in capsys.readouterr().err
    assert (indexed / "index" / "index.json").exists()  # the previous index is untouched


def test_search_route_answers_like_the_cli(indexed, trained_model, dataset, capsys):
    main(["search", str(indexed), "--image", str(dataset / "photo1" / "02.jpg"), "-k", "5", "--json"])
    cli = json.loads(capsys.readouterr().out)["results"]
    with make_client(trained_model, index=str(indexed), search_max_k=4) as client:
        blob = (dataset / "photo1" / "02.jpg").read_bytes()
        r = client.post("/search?k=5", files={"image": ("q.jpg", blob, "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["k"] == 4 and [x["id"] for x in body["results"]] == [x["id"] for x in cli[:4]]
        assert set(body["results"][0]) == {"id", "score"}  # stored paths stay private by default
        r = client.post("/search", json={"id": "photo1/02.jpg", "k": 2})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        # scores are FAISS's float32, written so that they parse back to exactly those float32
        loaded = LoadedIndex.open(indexed)
        expected = [x["score"] for x in loaded.search(loaded.vector_of("photo1/02.jpg"), 2, exclude="photo1/02.jpg")]
        scores = [float32_from_json_text(r.text, "results", i, "score")[0] for i in range(2)]
        assert np.array_equal(np.array(scores, np.float32), np.array(expected, np.float32))
        import base64

        r = client.post("/search", json={"image": base64.b64encode(blob).decode()})
        assert r.json()["results"][0]["id"] == "photo1/02.jpg"
        assert client.post("/search?k=0", files={"image": ("q.jpg", blob, "image/jpeg")}).status_code == 400
        r = client.post("/search", files={"image": ("q.jpg", blob, "image/jpeg")}, data={"k": "many"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
        bad = client.post("/search", files={"image": ("q.jpg", b"nope", "image/jpeg")})
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_image"
        assert client.post("/search", json={"id": "no/such.jpg"}).json()["error"]["code"] == "unknown_id"
        info = client.get("/info").json()
        assert info["search"]["layer"] == "avgpool" and info["search"]["count"] == 24
        assert "byol_searches_total 3.0" in client.get("/metrics").text


def test_an_index_from_another_model_is_refused_at_start(indexed, tmp_path):
    import torch

    from hub import BYOLModel, ModelConfig

    torch.manual_seed(0)
    other = BYOLModel(ModelConfig(architecture="resnet18", preprocessing={"resize_size": 73, "crop_size": 64}))
    other.save_pretrained(tmp_path / "other", onnx=True, transformers=False)
    with pytest.raises(Exception, match="embedded with another model"):
        with make_client(tmp_path / "other", index=str(indexed)):
            pass


def test_onnx_backend_job_imports_no_torch(trained_model, dataset, tmp_path):
    code = ("import sys; from service.embed.cli import main; "
            f"rc = main(['run', '--model', {str(trained_model)!r}, '--input', {str(dataset)!r}, '--output', "
            f"{str(tmp_path / 'e')!r}, '--no-progress']); print('torch loaded:', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch loaded: False" in proc.stdout
    assert "27 images (2 errors) in 1 new shards" in proc.stdout  # the summary (huge.png is under the default limit)


def test_help_explains_every_option():
    import contextlib
    import io as _io

    for command, needles in (("run", ["--workers", "threads for the local engine", "actors for the ray engine", "--shard-size",
                                      "--ray-address", "--max-pixels", "--dtype", "--overwrite"]),
                             ("index", ["--factory", "--layer"]), ("search", ["--image", "--id", "--json", "-k"])):
        buf = _io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(buf.getvalue().split())
        for needle in needles:
            assert needle in text, (command, needle)


def test_a_query_by_id_reads_one_row_group_of_one_shard(indexed, monkeypatch):
    """IVF/PQ indexes keep no direct map from id to vector: the index records each row's shard and row, so
    the lookup reads one row group of one shard (the same exact vector a scan of every shard finds), never all."""
    import pyarrow.parquet as pq

    from service.embed import index as index_module

    loaded = LoadedIndex.open(indexed)
    flat = loaded.vector_of("photo1/02.jpg")  # a Flat index reconstructs it
    scanned = pq.read_table(sorted(map(str, indexed.glob("part-*.parquet"))), columns=["id", "avgpool"]).to_pydict()
    exact = np.asarray(scanned["avgpool"][scanned["id"].index("photo1/02.jpg")], np.float32)

    class NoDirectMap:  # what IVF/PQ answer to reconstruct()
        def reconstruct(self, row):
            raise RuntimeError("direct map not initialized")

    opened: list[str] = []
    real_open = index_module.open_parquet
    monkeypatch.setattr(index_module, "open_parquet", lambda store, path: opened.append(path) or real_open(store, path))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("a query by id scanned the shards"))
    loaded.index = NoDirectMap()
    got = loaded.vector_of("photo1/02.jpg")
    assert len(opened) == 1 and np.array_equal(got.ravel(), exact)
    assert np.allclose(flat.ravel() / np.linalg.norm(flat), exact / np.linalg.norm(exact), atol=1e-6)
