"""Fixtures built once per session and shared by every package's tests: real photos (scikit-image's), small random
models with realistic BN state, one model trained here by the real trainer, a real S3 endpoint on loopback (moto's
server mode) and one Ray cluster of two nodes. The builders themselves are in :mod:`tests.support`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share two cores (pyproject.toml's -n): one compute thread each, here and in the processes the
    # tests start, or each worker's thread pool spins against the other's and the run takes longer than one worker
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest
import torch
from PIL import Image

from hub import BYOLModel, ModelConfig
from hub.config import PreprocessConfig
from hub.preprocess import preprocess
from service.embed.cli import main as embed_main
from tests.support.images import (
    PHOTOS,
    image_bytes,
    make_near_duplicate_fixture,
    photos_for_quality,
    skimage_data_dir,
)
from tests.support.models import randomize_bn, seen_at, train_test_model
from tests.support.planted import COUNT, LAYER, PER_OBJECT, write_planted
from tests.support.s3 import S3, S3_ENV
from tests.support.server import make_client

WORKER_PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"  # Ray Serve's own: a worker node's proxy port


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject.toml's default): two workers where two cores are, one per core below that. Not more:
    every worker builds the session's fixtures (the trained model, the S3 endpoint, the Ray cluster) again."""
    return max(1, min(2, len(os.sched_getaffinity(0))))


@pytest.fixture(autouse=True)
def _turn(request):
    """Tests marked ``exclusive`` run alone; the rest beside each other (:mod:`tests.support.turns`)."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2:
        yield
        return
    from tests.support.turns import turn

    with turn(request.node.get_closest_marker("exclusive") is not None):
        yield


def _restore(saved: dict[str, str | None]) -> None:
    """Environment variables back as they were (None: unset)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    return [skimage_data_dir() / name for name in PHOTOS]


@pytest.fixture(scope="session")
def photos(photo_paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in photo_paths]


@pytest.fixture(scope="session")
def photo_bytes(photos) -> list[bytes]:
    return [image_bytes(img, "JPEG", quality=92) for img in photos[:4]]


@pytest.fixture()
def make_model():
    """Factory: a random ``BYOLModel`` (resnet18 unless told) with randomized BN, in eval mode."""
    def make(architecture: str = "resnet18", seed: int = 0, **kwargs) -> BYOLModel:
        torch.manual_seed(seed)
        model = BYOLModel(ModelConfig(architecture=architecture, **kwargs))
        randomize_bn(model, seed)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def pixel_batch(photos):
    """Preprocessed real photos, ``(4, 3, 224, 224)``."""
    return torch.from_numpy(preprocess(photos[:4], PreprocessConfig()))


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, photo_paths) -> Path:
    """ResNet-18 at 64x64 after a short BYOL run on scikit-image's photos, published with model.onnx (made once)."""
    return train_test_model(tmp_path_factory.mktemp("trained"), photo_paths)


@pytest.fixture(scope="session")
def emb(tmp_path_factory, trained_model) -> Path:
    """Copies of real photos embedded, indexed, deduplicated and scored: what a user serves with --index (made
    once for the page tests and the fuzzing)."""
    root = tmp_path_factory.mktemp("ui")
    images = root / "images"
    make_near_duplicate_fixture(photos_for_quality(skimage_data_dir())[:5], images)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = root / "emb"
    for argv in (["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress"],
                 ["index", str(out)], ["dedup", str(out), "--no-progress", "--threshold", "0.86"], ["outliers", str(out), "--no-progress"]):
        assert embed_main(argv) == 0, argv
    return out


@pytest.fixture(scope="session")
def region_model(trained_model, tmp_path_factory):
    """The test model's weights seen at 128² (it was trained at 64², where feature3 is an 8x8 grid of cells that
    each see most of the image): the same weights, another preprocessing, saved as a user would."""
    return seen_at(trained_model, tmp_path_factory.mktemp("model128") / "model", 128)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """48 photos, four objects pasted into 8 each (tests/support/planted.py): (folder, holds, boxes)."""
    root = tmp_path_factory.mktemp("planted")
    holds, boxes = write_planted(root, COUNT, PER_OBJECT)
    return root, holds, boxes


@pytest.fixture(scope="session")
def regions_emb(region_model, planted, tmp_path_factory):
    """The planted set embedded with regions of feature3 (at 128²), indexed, and its shared parts found."""
    root, _, _ = planted
    out = tmp_path_factory.mktemp("regions") / "emb"
    assert embed_main(["run", "--model", str(region_model), "--input", str(root / "images"), "--output", str(out),
                 "--regions", LAYER, "--shard-size", "20", "--no-progress"]) == 0
    assert embed_main(["index", str(out)]) == 0
    assert embed_main(["shared", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_client(trained_model):
    with make_client(trained_model, backend="onnx", max_wait_ms=2) as client:
        yield client


@pytest.fixture(scope="module")
def torch_client(trained_model):
    with make_client(trained_model, backend="torch", max_wait_ms=2) as client:
        yield client


@pytest.fixture(scope="session")
def s3():
    """moto's ``ThreadedMotoServer`` on a free loopback port, with credentials in the environment; stopped after."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True)
        fs.mkdir("bkt")
        yield S3(endpoint, fs)
    finally:
        server.stop()
        _restore(saved)


@pytest.fixture(scope="module")
def browser():
    """A headless chromium (Debian's, driven by Playwright) for a module's page tests; skipped where none is
    installed. Per module, not per session: Playwright's sync API holds an event loop on the main thread while it
    runs, and tests elsewhere call asyncio.run."""
    from tests.support.browser import chromium

    with chromium() as launched:
        yield launched


@dataclass
class RayCluster:
    address: str
    worker_proxy_port: int  # the worker node's Serve proxy (the head's is the Serve config's port)


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One Ray cluster for every test that needs one: a head and a worker node of one CPU each on this machine
    (``ray.cluster_utils.Cluster``). Tests reach it by its address (``--ray-address``). Its nodes' processes carry
    the Serve proxy's replay middleware (``service.ray_serve:proxy_middlewares``), and the worker node's proxy a
    port of its own (Ray's per-node override): on one machine the two proxies cannot share one. Its nodes start
    with the S3 endpoint's credentials in their environment, as real nodes have theirs (an instance role). Shut
    down at the end of the session."""
    pytest.importorskip("ray.serve")
    from ray.cluster_utils import Cluster

    from service.ray_serve import PROXY_CALLBACK, PROXY_CALLBACK_ENV
    from tests.support.server import free_port

    saved = {key: os.environ.get(key) for key in (PROXY_CALLBACK_ENV, WORKER_PROXY_PORT_ENV)}
    os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK  # inherited by every process the nodes start
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_port = free_port()
        os.environ[WORKER_PROXY_PORT_ENV] = str(worker_port)
        try:
            cluster.add_node(num_cpus=1)
        finally:
            os.environ.pop(WORKER_PROXY_PORT_ENV)
        cluster.wait_for_nodes()
        yield RayCluster(cluster.address, worker_port)
    finally:
        cluster.shutdown()
        _restore(saved)


def pytest_report_header(config) -> str:
    """The releases this run tests against (CI runs on whatever pip resolved today)."""
    from importlib import metadata

    found = []
    for name in ("torch", "onnxruntime", "transformers", "timm", "ray", "fastapi", "huggingface-hub"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "releases: " + ", ".join(found)
