"""Models the tests build: random ResNets with realistic BatchNorm state, one trained here, a Hub cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support import REPO, processes


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


def max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40, ref: str = "main") -> None:
    """The Hub is the one thing that cannot exist here: a cache laid out as huggingface_hub itself writes it,
    ``models--org--name/{refs/<ref>, snapshots/<commit>/...}``, which the real loaders then resolve offline."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


def train_test_model(root: Path, photo_paths: list[Path]) -> Path:
    """ResNet-18 at 64x64 after a short BYOL run on scikit-image's photos (the real trainer, 3 epochs), published
    with model.onnx: ``root/run/final``."""
    data = root / "photos"
    data.mkdir()
    for i, path in enumerate(photo_paths):
        img = Image.open(path).convert("RGB")
        img.thumbnail((160, 160))
        img.save(data / f"{i}.jpg")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / f"{i}_flip.jpg")
        img.crop((0, 0, img.width * 3 // 4, img.height * 3 // 4)).save(data / f"{i}_crop.png")
    out = root / "run"
    proc = processes.run([sys.executable, str(REPO / "training" / "pretrain.py"), "--config", "smoke", "--data",
                          str(data), "--output", str(out), "--epochs", "3", "--batch-size-per-device", "4",
                          "--total-batch-size", "8", "--num-workers", "0", "--model-name", "org/byol-test"],
                         capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "final"


def seen_at(src: Path, dst: Path, crop: int) -> Path:
    """The model at ``src`` saved again at ``dst`` with a preprocessing of ``crop``² (resized to ``crop`` x 256/224
    first, as ImageNet's 224/256): the same weights seeing larger images."""
    import dataclasses

    from hub import BYOLModel

    model = BYOLModel.from_pretrained(src)
    model.config.preprocessing = dataclasses.replace(model.config.preprocessing, crop_size=crop,
                                                     resize_size=round(crop * 256 / 224))
    model.save_pretrained(dst)
    return dst
