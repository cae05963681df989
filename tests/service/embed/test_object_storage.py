"""Data where it lives: ``byol-embed`` reading from and writing to a real S3 endpoint on loopback (moto's server
mode, reached by s3fs with ``endpoint_url``; nothing mocked inside the process): the same rows as on disk,
resume after SIGKILL, the Ray engine writing its own shards, index, search, curation and the server on a remote
folder, Parquet and tar inputs on S3, and the errors a user meets (unreachable endpoint, no credentials, no
bucket, no image column, bytes that are not an image)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("faiss")
pytest.importorskip("s3fs")

from service.embed.cli import main  # noqa: E402
from storage.errors import DataError  # noqa: E402
from storage.folder import REGION_CODES, REGION_SEEN  # noqa: E402
from tests.support import REPO  # noqa: E402
from tests.support.images import image_bytes, tar_bytes, write_images  # noqa: E402
from tests.support.s3 import S3_ENV  # noqa: E402
from tests.support.server import free_port, make_client  # noqa: E402

LAYERS = ("avgpool", "feature3")
PRINTED: dict[str, str] = {}  # what the child processes printed


def settings(model: Path, data: str, out: str, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--input", data, "--output", out, "--layers", ",".join(LAYERS),
            "--shard-size", "5", "--batch-size", "4", "--max-pixels", "500000", "--no-progress", *extra]


def table_of(s3, prefix: str):
    """Every shard of an S3 output folder, in order, read back through s3fs."""
    names = sorted(p for p in s3.fs.ls(prefix) if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(s3.fs.open(p, "rb")) for p in names]), [n.rsplit("/", 1)[-1] for n in names]


def local_table(folder: Path):
    paths = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths]), [p.name for p in paths]


def vectors(table, layer: str) -> np.ndarray:
    dim = table.schema.field(layer).type.list_size
    return np.array([v if v is not None else [0.0] * dim for v in table.column(layer).to_pylist()], np.float32)


def assert_same_rows(a, b, *, paths: bool = True, tol: float = 1e-6) -> None:
    for name in ("id", "error", "sha256") + (("path",) if paths else ()):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for layer in LAYERS:
        assert np.abs(vectors(a, layer) - vectors(b, layer)).max() <= tol, layer
    if REGION_CODES in a.column_names or REGION_CODES in b.column_names:  # codes of the same codec: equal up to rounding
        assert np.abs(vectors(a, REGION_CODES) - vectors(b, REGION_CODES)).max() <= 1
        assert np.abs(vectors(a, REGION_SEEN) - vectors(b, REGION_SEEN)).max() <= 1e-3


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos, s3) -> Path:
    """27 real images (3 of them broken) on disk and the same files under s3://bkt/images/."""
    root = tmp_path_factory.mktemp("images")
    write_images(root, photos, copies=4)
    s3.upload_tree(root, "bkt/images")
    return root


REGIONS = ("--regions", "feature3")  # the folders served and compared below carry region codes too


@pytest.fixture(scope="module")
def on_disk(trained_model, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk") / "emb"
    assert main(settings(trained_model, str(images), str(out), *REGIONS)) == 0
    return out


@pytest.fixture(scope="module")
def on_s3(trained_model, images, s3) -> str:
    """The same run with its input and output on S3, in a child process with -v: what it prints is checked."""
    proc = subprocess.run([sys.executable, "-m", "service.embed", "-v",
                           *settings(trained_model, "s3://bkt/images/", "s3://bkt/emb/", *s3.option, *REGIONS)],
                          capture_output=True, text=True, timeout=300, env={**s3.env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    PRINTED["on_s3"] = proc.stdout + proc.stderr
    return "bkt/emb"


def test_a_run_on_s3_equals_the_run_on_disk_row_by_row(on_disk, on_s3, s3):
    remote, names = table_of(s3, on_s3)
    local, local_names = local_table(on_disk)
    assert names == local_names == [f"part-{i:05d}.parquet" for i in range(6)]
    assert all(s3.fs.exists(f"{on_s3}/part-{i:05d}.done") for i in range(6))
    assert_same_rows(remote, local, paths=False)
    assert remote.column("path").to_pylist() == [f"s3://bkt/images/{i}" for i in local.column("id").to_pylist()]
    assert {i for i, e in zip(remote.column("id").to_pylist(), remote.column("error").to_pylist()) if e} == \
        {"bad/corrupt.jpg", "bad/huge.png", "bad/truncated.jpg"}
    # credentials and storage options are never logged nor written
    manifest = s3.fs.cat_file(f"{on_s3}/manifest.json").decode()
    assert json.loads(manifest)["input"] == "s3://bkt/images/"
    for secret in S3_ENV["AWS_SECRET_ACCESS_KEY"], S3_ENV["AWS_ACCESS_KEY_ID"]:
        assert secret not in manifest and secret not in PRINTED["on_s3"]
    assert "endpoint_url" not in manifest and s3.endpoint not in manifest
    assert not s3.fs.exists(f"{on_s3}/.lock")  # released at the end


def test_killed_run_on_s3_resumes_to_the_uninterrupted_result(trained_model, photos, tmp_path, s3, capsys):
    data = tmp_path / "many"
    data.mkdir()
    write_images(data, photos, copies=24)  # 147 images in 30 shards of 5
    s3.upload_tree(data, "bkt/many")
    args = settings(trained_model, "s3://bkt/many", "s3://bkt/killed", *s3.option)
    proc = subprocess.Popen([sys.executable, "-m", "service.embed", *args], env={**s3.env(), "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while not s3.fs.exists("bkt/killed/part-00002.done"):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its third shard"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [p for p in s3.fs.ls("bkt/killed") if p.endswith(".done")]
    assert 3 <= len(done_before) < 30 and s3.fs.exists("bkt/killed/.lock")  # a dead run's lock stays behind
    capsys.readouterr()
    assert main(args) == 0  # the dead run's lock is taken over: its process is gone from this host
    assert "generation 1 committed: " in capsys.readouterr().out
    assert main(settings(trained_model, "s3://bkt/many", str(tmp_path / "reference"), *s3.option)) == 0
    resumed, names = table_of(s3, "bkt/killed")
    reference, ref_names = local_table(tmp_path / "reference")
    assert names == ref_names and len(names) == 30
    assert resumed.equals(reference)


def test_a_live_runs_lock_is_refused_and_break_lock_takes_it(trained_model, on_s3, s3, capsys):
    import socket

    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "started": time.time(),
            "heartbeat": time.time()}
    s3.fs.pipe_file(f"{on_s3}/.lock", json.dumps(lock).encode())
    args = settings(trained_model, "s3://bkt/images/", "s3://bkt/emb/", *s3.option, *REGIONS)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another byol-embed run holds s3://bkt/emb/.lock" in err and "--break-lock" in err
    assert main([*args, "--break-lock"]) == 0
    assert "generation 1 already holds this input" in capsys.readouterr().out and not s3.fs.exists(f"{on_s3}/.lock")


def test_index_search_curation_and_the_server_on_a_remote_folder(on_s3, on_disk, trained_model, images, s3,
                                                                   tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BYOL_CACHE", str(tmp_path / "cache"))
    folder = f"s3://{on_s3}"
    assert main(["index", folder, *s3.option]) == 0
    assert {p.rsplit("/", 1)[-1] for p in s3.fs.ls(f"{on_s3}/index")} == {"faiss.index", "ids.arrow", "index.json"}
    assert {p.rsplit("/", 1)[-1] for p in s3.fs.ls(f"{on_s3}/regions/index")} == {"faiss.index", "images.arrow",
                                                                                  "index.json"}
    capsys.readouterr()
    assert main(["search", folder, "--id", "photo2/01.jpg", "-k", "3", "--json", *s3.option]) == 0
    remote = json.loads(capsys.readouterr().out)["results"]
    assert main(["index", str(on_disk)]) == 0
    capsys.readouterr()
    assert main(["search", str(on_disk), "--id", "photo2/01.jpg", "-k", "3", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in remote] == [r["id"] for r in local]
    (store_copies,) = list((tmp_path / "cache" / "copies").iterdir())  # the copies of this one store
    assert len(list(store_copies.iterdir())) == 1  # one local copy, keyed by content
    # search inside images on S3: the region index copied once, the same hits and boxes as on disk
    query = ["--image", str(images / "photo1" / "02.jpg"), "--regions", "--box", "0.2,0.2,0.6,0.6", "-k", "4",
             "--json"]
    assert main(["search", folder, *query, *s3.option]) == 0
    remote = json.loads(capsys.readouterr().out)["results"]
    assert main(["search", str(on_disk), *query]) == 0
    local = json.loads(capsys.readouterr().out)["results"]
    assert [(r["id"], r["box"]) for r in remote] == [(r["id"], r["box"]) for r in local] and len(remote) == 4
    assert len(list(store_copies.iterdir())) == 2  # the region index's copy beside the index's

    assert main(["dedup", folder, "--write-lists", "--no-progress", *s3.option]) == 0
    assert main(["outliers", folder, "--no-progress", *s3.option]) == 0
    written = {p.rsplit("/", 1)[-1] for p in s3.fs.ls(f"{on_s3}/curation")}
    assert {"duplicates.parquet", "outliers.parquet", "keep.txt", "remove.txt"} <= written
    outliers = pq.read_table(s3.fs.open(f"{on_s3}/curation/outliers.parquet", "rb"))
    assert set(outliers.filter(pa.compute.equal(outliers.column("kind"), "broken")).column("id").to_pylist()) == \
        {"bad/corrupt.jpg", "bad/huge.png", "bad/truncated.jpg"}

    # thumbnails by the locator `run` recorded: one read of the object on S3, never a listing of the input
    monkeypatch.setattr("service.server.thumbs.open_input", lambda *args: pytest.fail("the input was listed"))
    with make_client(trained_model, index=folder, storage_options=s3.options) as client:
        blob = (images / "photo1" / "02.jpg").read_bytes()
        r = client.post("/search?k=3", files={"image": ("q.jpg", blob, "image/jpeg")})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "photo1/02.jpg"
        thumb = client.get("/thumb/photo1/02.jpg")  # read from the object its locator names, on S3
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert client.get("/curation").json() == {"duplicates": True, "outliers": True, "leaks": False, "map": False, "shared_parts": False, "generation": 1,
                                                   "stale": {}}
        assert client.get("/info").json()["search"]["index"] == folder
        r = client.post("/search?k=3&regions=true", files={"image": ("q.jpg", blob, "image/jpeg")})
        assert r.status_code == 200 and r.json()["regions"] and r.json()["results"][0]["id"] == "photo1/02.jpg"
    # the curation files made a new content key for the index (3 copies: the newest kept of this store's)
    assert len(list(store_copies.iterdir())) == 3


def test_tars_with_a_brace_range_and_parquet_with_bytes_on_s3(trained_model, photos, tmp_path, s3, capsys):
    datasets = pytest.importorskip("datasets")
    blobs = [image_bytes(p.resize((96, 96)), "JPEG") for p in photos]
    for shard in range(3):
        members = [(f"s{shard}/{i:04d}.jpg", blobs[(shard + i) % len(blobs)]) for i in range(2)]
        members.append((f"s{shard}/0000.json", b'{"label": 1}'))
        s3.fs.pipe_file(f"bkt/shards/train-{shard:06d}.tar", tar_bytes(members))
    s3.fs.pipe_file("bkt/shards/train-000099.tar", tar_bytes([("other/0000.jpg", blobs[0])]))  # not in the range
    spec = "s3://bkt/shards/train-{000000..000002}.tar"
    assert main(settings(trained_model, spec, "s3://bkt/tar-emb", *s3.option)) == 0
    table, _ = table_of(s3, "bkt/tar-emb")
    assert table.column("id").to_pylist() == [f"train-{s:06d}.tar/s{s}/{i:04d}" for s in range(3) for i in range(2)]
    assert table.column("path")[0].as_py() == "s3://bkt/shards/train-000000.tar/s0/0000.jpg"
    assert table.column("error").null_count == 6

    # Parquet written by the datasets library (its Image feature), on S3, against the same file on disk
    local = tmp_path / "hf.parquet"
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs[:4]] +
                                     [{"bytes": b"not an image at all", "path": None}], "name": list("abcde")})
    ds.cast_column("image", datasets.Image()).to_parquet(str(local))
    s3.fs.pipe_file("bkt/hf/train-00000.parquet", local.read_bytes())
    assert main(settings(trained_model, "s3://bkt/hf/", "s3://bkt/hf-emb", "--id-column", "name", *s3.option)) == 0
    assert main(settings(trained_model, str(local), str(tmp_path / "hf-local"), "--id-column", "name")) == 0
    remote, _ = table_of(s3, "bkt/hf-emb")
    assert remote.column("id").to_pylist() == list("abcde")
    assert_same_rows(remote, local_table(tmp_path / "hf-local")[0], paths=False)
    assert remote.column("error")[4].as_py() is not None  # bytes that are not an image: an error row

    pq.write_table(pa.table({"name": ["x"], "label": [1]}), tmp_path / "no-image.parquet")
    s3.fs.pipe_file("bkt/bad/no-image.parquet", (tmp_path / "no-image.parquet").read_bytes())
    capsys.readouterr()
    assert main(settings(trained_model, "s3://bkt/bad/no-image.parquet", str(tmp_path / "x"), *s3.option)) == 2
    assert "has no column of image bytes" in capsys.readouterr().err
    assert main(settings(trained_model, "s3://bkt/shards/train-{000000..000005}.tar", str(tmp_path / "y"),
                         *s3.option)) == 2
    assert "3 of the 6 files" in capsys.readouterr().err


def _cli(args: list[str], env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.embed", *args], capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONPATH": str(REPO)})


def test_storage_that_cannot_be_used_is_a_clear_error_in_seconds(trained_model, images, s3, tmp_path):
    closed = free_port()  # a port nobody listens on
    cases = [
        (settings(trained_model, str(images), "s3://bkt/x", "--storage-option", f"endpoint_url=http://127.0.0.1:{closed}"),
         s3.env(), "cannot reach the storage endpoint"),
        (settings(trained_model, str(images), "s3://bkt/x", *s3.option),
         {**{k: v for k, v in s3.env().items() if k not in S3_ENV}, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
          "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}, "no credentials for s3://bkt/x"),
        (settings(trained_model, str(images), "s3://no-such-bucket/emb", *s3.option), s3.env(),
         "the bucket of s3://no-such-bucket/emb does not exist"),
        (settings(trained_model, "s3://bkt/no/such/prefix/", str(tmp_path / "z"), *s3.option), s3.env(),
         "s3://bkt/no/such/prefix/ does not exist"),
        (settings(trained_model, "gs://bucket/images/", str(tmp_path / "g")), s3.env(), "pip install 'byol[gcs]'"),
    ]
    for args, env, message in cases:
        started = time.monotonic()
        proc = _cli(args, env)
        assert proc.returncode == 2, (message, proc.stderr[-2000:])
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert time.monotonic() - started < 60, message


@pytest.mark.slow
def test_ray_actors_write_the_local_engines_shards_and_the_driver_gets_no_vectors(trained_model, on_s3, s3,
                                                                                  ray_cluster, monkeypatch):
    from service.embed import job
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings

    received = []
    commit = job.ShardWriter.commit
    monkeypatch.setattr(job.ShardWriter, "commit", lambda self, ack: (received.append(ack), commit(self, ack))[1])
    monkeypatch.setenv("RAY_DISABLE_USAGE_STATS", "1")
    runtime = RuntimeSettings(model=str(trained_model), max_pixels=500000)
    summary = run_job(EmbedSettings(runtime=runtime, input="s3://bkt/images/", output="s3://bkt/ray-emb",
                                    layers=LAYERS, shard_size=5, batch_size=4, engine="ray", workers=2,
                                    ray_address=ray_cluster.address, storage_options=s3.options, progress=False,
                                    regions="feature3"))
    assert summary.shards_written == 6 and summary.engine == "ray"
    # what reached the driver: one small acknowledgement per shard, no vectors
    assert sorted(a["index"] for a in received) == list(range(6))
    assert all(set(a) == {"index", "name", "rows", "errors", "error_examples", "regions_s"} for a in received)
    assert max(len(pickle.dumps(a)) for a in received) < 2048
    ray_table, names = table_of(s3, "bkt/ray-emb")
    local_table_, local_names = table_of(s3, on_s3)
    assert names == local_names
    assert_same_rows(ray_table, local_table_, tol=1e-5)


def test_remote_folders_lists_and_globs_list_as_on_disk(images, s3):
    from storage.sources import open_source

    local = open_source(str(images))
    remote = open_source("s3://bkt/images", storage_options=s3.options)
    assert [remote.item_id(i) for i in range(len(remote))] == [local.item_id(i) for i in range(len(local))]
    assert remote.read(0) == local.read(0) and remote.fingerprint() != local.fingerprint()
    assert open_source("s3://bkt/images/", storage_options=s3.options).fingerprint() == remote.fingerprint()
    entries = ["photo1/00.png", "photo0/01.jpg", "more/./photo2/../photo2/02.jpg"]
    s3.fs.pipe_file("bkt/lists/some.txt", ("# a list\n" + "\n".join(entries) + "\n").encode())
    s3.fs.pipe_file("bkt/lists/more/photo2/02.jpg", (images / "photo2" / "02.jpg").read_bytes())
    listed = open_source("s3://bkt/lists/some.txt", storage_options=s3.options)
    assert [listed.item_id(i) for i in range(3)] == entries
    assert listed.item_path(0) == "s3://bkt/lists/photo1/00.png"
    assert listed.item_path(2) == "s3://bkt/lists/more/photo2/02.jpg"  # relative to the list, as on disk
    assert listed.read(2) == (images / "photo2" / "02.jpg").read_bytes()
    # a remote list names objects under its own prefix only (its credentials may reach much further)
    for entry in ("../images/photo2/02.jpg", "s3://bkt/images/photo2/02.jpg", "/bkt/images/photo2/02.jpg"):
        s3.fs.pipe_file("bkt/lists/escape.txt", f"photo1/00.png\n{entry}\n".encode())
        with pytest.raises(DataError, match="climbs out|is absolute"):
            open_source("s3://bkt/lists/escape.txt", storage_options=s3.options)
    s3.fs.pipe_file("bkt/lists/photo1/00.png", (images / "photo1" / "00.png").read_bytes())
    assert listed.read(0) == (images / "photo1" / "00.png").read_bytes()
    with pytest.raises(OSError):  # a listed object that does not exist: that row's error, not the job's
        listed.read(1)
    first, missing, third = listed.read_many([0, 1, 2])  # the requests sent together, an error in its place
    assert first == listed.read(0) and isinstance(missing, FileNotFoundError) and third == listed.read(2)
    pickled = pickle.loads(pickle.dumps(remote))  # what Ray actors and DataLoader workers receive
    assert pickled.read(3) == remote.read(3)


def _race_input(photos, tmp_path, s3, name: str) -> Path:
    data = tmp_path / name
    data.mkdir()
    write_images(data, photos, copies=24)  # 147 images in 30 shards of 5: a run of several seconds
    s3.upload_tree(data, f"bkt/{name}")
    return data


def _writer(args: list[str], log: Path, s3) -> subprocess.Popen:
    """A `byol-embed run` in its own process, one image at a time (many commits to fence)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "service.embed", *args, "--batch-size", "1", "--workers", "1",
                                 "--threads", "1"], env={**s3.env(), "PYTHONPATH": str(REPO)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def _first_writer(args: list[str], log: Path, s3, marker: str):
    """Writer A, stopped (SIGSTOP) once ``marker`` exists, so that what the test does next happens between two
    of A's commits on any machine; killed at the end if it is still there."""
    proc = _writer(args, log, s3)
    try:
        deadline = time.time() + 180
        while not s3.fs.exists(marker):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _assert_complete_as_on_disk(trained_model, data: Path, prefix: str, tmp_path, s3) -> None:
    assert main(settings(trained_model, str(data), str(tmp_path / "reference"))) == 0
    got, names = table_of(s3, prefix)
    reference, ref_names = local_table(tmp_path / "reference")
    assert names == ref_names and len([p for p in s3.fs.ls(prefix) if p.endswith(".done")]) == len(names) == 30
    assert_same_rows(got, reference, paths=False)


def test_two_writers_on_s3_one_refused_then_one_taken_over_and_the_loser_stops(trained_model, photos, tmp_path,
                                                                              s3, capsys):
    """Writer A runs (paused between two shards, so that the interleaving is the same on a loaded machine). B is
    refused while A's lease is live; B with --break-lock --overwrite takes the folder (a conditional overwrite of
    the lock) and runs to the end; A, going on, stops before its next commit instead of writing on to the end."""
    data = _race_input(photos, tmp_path, s3, "race-in")
    args = settings(trained_model, "s3://bkt/race-in", "s3://bkt/race", *s3.option)
    log = tmp_path / "a.log"
    with _first_writer(args, log, s3, "bkt/race/part-00001.done") as first:  # its lease (10 minutes) is live
        capsys.readouterr()
        assert main(args) == 2
        assert "another byol-embed run holds s3://bkt/race/.lock" in capsys.readouterr().err
        assert main([*args, "--break-lock", "--overwrite"]) == 0
        os.kill(first.pid, signal.SIGCONT)
        code = first.wait(timeout=180)
    printed = log.read_text()
    assert code == 2 and "no longer holds s3://bkt/race/.lock (another run took the lock over)" in printed, printed[-2000:]
    assert "committed" not in printed  # it did not write on to the end
    _assert_complete_as_on_disk(trained_model, data, "bkt/race", tmp_path, s3)
    assert not s3.fs.exists("bkt/race/.lock")


def test_a_writer_paused_past_its_lease_loses_the_folder_and_stops(trained_model, photos, tmp_path, s3):
    """Writer A (a 3 s lease) is paused (SIGSTOP) past its lease; B takes the folder over by itself, without
    --break-lock, and finishes the run; A, resumed, finds it lost the lease and stops before its next commit."""
    data = _race_input(photos, tmp_path, s3, "paused-in")
    args = settings(trained_model, "s3://bkt/paused-in", "s3://bkt/paused", *s3.option, "--lock-ttl", "3")
    log = tmp_path / "a.log"
    with _first_writer(args, log, s3, "bkt/paused/part-00001.done") as first:
        time.sleep(3.5)  # past A's lease
        assert main(args) == 0  # A's lease ran out: taken over, and A's run resumed to the end
        os.kill(first.pid, signal.SIGCONT)
        code = first.wait(timeout=120)
    printed = log.read_text()
    assert code == 2 and "no longer holds s3://bkt/paused/.lock" in printed, printed[-2000:]
    _assert_complete_as_on_disk(trained_model, data, "bkt/paused", tmp_path, s3)
