"""Shared fixtures: real photos that ship with scikit-image, small random models with realistic BN state, and a
real S3 endpoint on loopback (moto's server mode)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    return [skimage_data_dir() / name for name in PHOTOS]


@pytest.fixture(scope="session")
def photos(photo_paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in photo_paths]


def randomize_bn(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, so a converter that
    drops or swaps them cannot pass a parity test by accident."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=gen)
            module.bias.data = 0.1 * torch.randn(n, generator=gen)
            module.running_mean = 0.1 * torch.randn(n, generator=gen)
            module.running_var = 0.5 + torch.rand(n, generator=gen)


@pytest.fixture()
def make_model():
    """Factory: a random ``BYOLModel`` (resnet18 unless told) with randomized BN, in eval mode."""
    import torch

    from hub import BYOLModel, ModelConfig

    def make(architecture: str = "resnet18", seed: int = 0, **kwargs) -> BYOLModel:
        torch.manual_seed(seed)
        model = BYOLModel(ModelConfig(architecture=architecture, **kwargs))
        randomize_bn(model, seed)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def pixel_batch(photos):
    """Preprocessed real photos, ``(4, 3, 224, 224)``."""
    import torch

    from hub.config import PreprocessConfig
    from hub.preprocess import preprocess

    return torch.from_numpy(preprocess(photos[:4], PreprocessConfig()))


def max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40, ref: str = "main") -> None:
    """The Hub is the one thing that cannot exist here: a cache laid out as huggingface_hub itself writes it,
    ``models--org--name/{refs/<ref>, snapshots/<commit>/...}``, which the real loaders then resolve offline."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


S3_ENV = {"AWS_ACCESS_KEY_ID": "byol-test-access-key", "AWS_SECRET_ACCESS_KEY": "byol-test-secret-0123456789",
          "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3:
    """A running S3 endpoint: its URL, an s3fs client without caches, and the CLI option that reaches it."""

    endpoint: str
    fs: object

    @property
    def option(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}"]

    @property
    def options(self) -> dict:
        return {"endpoint_url": self.endpoint}

    def env(self) -> dict:
        """Environment for a child process: the credentials, nothing else of this shell's AWS settings."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **S3_ENV}

    def upload_tree(self, local: Path, prefix: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.fs.pipe_file(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())


@pytest.fixture(scope="session")
def s3():
    """moto's ``ThreadedMotoServer`` on a free loopback port, with credentials in the environment; stopped after."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import logging

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
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
