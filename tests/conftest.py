"""Shared fixtures: real photos that ship with scikit-image, and small random models with realistic BN state."""

from __future__ import annotations

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
