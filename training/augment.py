"""BYOL's two asymmetric views, with randomness derived from (seed, epoch, sample index).

Deriving every random choice from ``np.random.default_rng([seed, epoch, index])`` instead of a
worker's RNG state makes a sample's views identical whichever worker draws them and whether or not
the run was resumed (skipping batches cannot replay a worker RNG).

Views are returned as uint8 ``(H, W, 3)`` arrays; conversion to float and normalization happen on
the device, batched (see ``training.data.to_device_views``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


@dataclass(frozen=True)
class ViewParams:
    """Probabilities of one view (BYOL's view 1 / view 2 differ in blur and solarize)."""

    blur_prob: float
    solarize_prob: float


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    view1: ViewParams = ViewParams(blur_prob=1.0, solarize_prob=0.0)
    view2: ViewParams = ViewParams(blur_prob=0.1, solarize_prob=0.2)
    solarize_threshold: int = 128


def crop_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _hue(img: Image.Image, factor: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int16) + int(round(factor * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8)), s, v)).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator, strength: tuple[float, float, float, float]
                 ) -> Image.Image:
    """torchvision's ``ColorJitter`` on a PIL image: the four ops in a random order, random factors."""
    b, c, s, h = strength
    factors = (rng.uniform(max(0, 1 - b), 1 + b), rng.uniform(max(0, 1 - c), 1 + c),
               rng.uniform(max(0, 1 - s), 1 + s), rng.uniform(-h, h))
    for op in rng.permutation(4):
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(factors[0])
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(factors[1])
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(factors[2])
        else:
            img = _hue(img, factors[3])
    return img


def make_view(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig, view: ViewParams) -> np.ndarray:
    """One augmented view as uint8 ``(size, size, 3)``."""
    left, top, w, h = crop_box(rng, img.width, img.height, cfg.scale, cfg.ratio)
    # crop and resize in one resampling pass (same result as crop() then resize())
    out = img.resize((cfg.size, cfg.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if rng.random() < cfg.flip_prob:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < cfg.jitter_prob:
        out = color_jitter(out, rng, cfg.jitter)
    if rng.random() < cfg.gray_prob:
        out = out.convert("L").convert("RGB")
    if rng.random() < view.blur_prob:
        out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_sigma)))
    if rng.random() < view.solarize_prob:
        out = ImageOps.solarize(out, cfg.solarize_threshold)
    return np.asarray(out, dtype=np.uint8)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def two_views(img: Image.Image, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The asymmetric pair (view 1: always blurred; view 2: rarely blurred, sometimes solarized)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return make_view(img, rng, cfg, cfg.view1), make_view(img, rng, cfg, cfg.view2)
