"""Linear (AvgPool) and multi-head (Feature1-5) classifiers on a frozen backbone.

Recipes (the seed's configs): ``sgd`` linear: lr 30, wd 0, momentum 0.9, steps at 60/80 of 100 epochs,
batch 256; ``lars`` linear (what MMSelfSup's 71.72 used): LARS lr 1.6, batch 4096, cosine, 90 epochs;
``mhead``: BatchNorm(affine=False) -> Linear per layer, SGD lr 0.01 Nesterov momentum 0.9 wd 1e-4, steps at
30/60 of 90 epochs, batch 256. With another ``epochs`` the steps keep their fractions of the run.

``fast`` trains on cached center-crop features; ``faithful`` streams images with the seed's training
augmentation (RandomResizedCrop + flip) through the frozen backbone every epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd" or "lars"
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    epochs: int
    batch_size: int
    milestones: tuple[float, ...] = ()  # fractions of the run; empty -> cosine

    def with_overrides(self, **kw) -> Recipe:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


RECIPES = {
    "sgd": Recipe("sgd", 30.0, 0.9, 0.0, False, 100, 256, (0.6, 0.8)),
    "lars": Recipe("lars", 1.6, 0.9, 0.0, False, 90, 4096),
    "mhead": Recipe("sgd", 0.01, 0.9, 1e-4, True, 90, 256, (1 / 3, 2 / 3)),
}


class Heads(nn.Module):
    """One classifier per layer; ``bn`` adds BatchNorm1d(affine=False) in front (the mhead protocol)."""

    def __init__(self, dims: dict[str, int], classes: int, bn: bool) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            layer: nn.Sequential(nn.BatchNorm1d(d, affine=False), nn.Linear(d, classes)) if bn else nn.Linear(d, classes)
            for layer, d in dims.items()})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {layer: head(feats[layer]) for layer, head in self.heads.items()}


def _optimizer(heads: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "lars":
        from training.lars import LARS, lars_param_groups

        return LARS(lars_param_groups([heads]), lr=recipe.lr, momentum=recipe.momentum,
                    weight_decay=recipe.weight_decay)
    return torch.optim.SGD(heads.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)


def _lr(recipe: Recipe, epoch: float) -> float:
    if recipe.milestones:
        return recipe.lr * 0.1 ** sum(epoch >= m * recipe.epochs for m in recipe.milestones)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))


def train_heads(dims: dict[str, int], classes: int, batches: Callable[[int], Iterator[tuple[dict, torch.Tensor]]],
                recipe: Recipe, *, bn: bool, seed: int, progress: bool = True) -> Heads:
    """Train one head per layer. ``batches(epoch)`` yields ``({layer: (B, D)}, labels)``."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    heads = Heads(dims, classes, bn)
    opt = _optimizer(heads, recipe)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in tqdm(range(recipe.epochs), desc="heads", unit="epoch", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = _lr(recipe, epoch)
        heads.train()
        for feats, labels in batches(epoch):
            logits = heads(feats)
            loss = sum(loss_fn(out, labels) for out in logits.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return heads.eval()


def cached_batches(feats: dict[str, np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
    """Shuffled mini-batches of cached features, a new order each epoch."""
    tensors = {k: torch.from_numpy(v) for k, v in feats.items()}
    y = torch.from_numpy(labels).long()

    def batches(epoch: int):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            yield {k: v[idx] for k, v in tensors.items()}, y[idx]

    return batches


@torch.no_grad()
def top1(heads: Heads, feats: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    logits = heads({k: torch.from_numpy(v) for k, v in feats.items()})
    return {k: 100.0 * float((v.argmax(1).numpy() == labels).mean()) for k, v in logits.items()}


def augmented_batches(model, paths: list, labels: np.ndarray, layers: tuple[str, ...], pooling: str,
                      batch_size: int, seed: int):
    """The faithful mode: RandomResizedCrop + flip of each image, through the frozen backbone (eval mode)."""
    from PIL import Image

    from hub.preprocess import normalize_chw, to_rgb
    from training.augment import crop_box, sample_rng

    pre = model.config.preprocessing
    size = pre.crop_size
    y = torch.from_numpy(labels).long()

    def view(index: int, epoch: int) -> np.ndarray:
        rng = sample_rng(seed, epoch, index)
        with Image.open(paths[index]) as img:
            img = to_rgb(img)
            left, top, w, h = crop_box(rng, img.width, img.height, (0.08, 1.0), (3 / 4, 4 / 3))
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return normalize_chw(np.asarray(out), pre)

    def batches(epoch: int):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        model.eval()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            pixels = torch.from_numpy(np.stack([view(i, epoch) for i in idx]))
            with torch.no_grad():
                feats = model.features(pixels, layers, pooling)
            yield {k: v.float() for k, v in feats.items()}, y[idx]

    return batches
