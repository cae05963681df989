"""Image statistics for quality flags, computed from pixels already decoded (during ``byol-embed run``, beside the
embedding; for older folders by ``byol-embed quality`` reading the images again).

All on one grey view of the image: box-reduced by the integer factor that brings its shorter side nearest to
``VIEW_SIDE`` pixels (a large photo and its thumbnail give close values; reducing costs less than the
grey conversion of the full image). Per image:

    width, height   the decoded image's size (odd size, odd aspect)
    brightness      mean grey level, 0 (black) .. 1 (white)
    contrast        standard deviation of the grey levels, 0 .. 0.5
    blur            variance of the 4-neighbour Laplacian of the grey levels (0 .. 255 scale): low is blurry
    entropy         Shannon entropy of the 256-level grey histogram, bits (0 .. 8): low is little information
    noise           the Laplacian's variance over 20 x the grey variance: white noise is 1, natural photos a
                    few hundredths (pixel-to-pixel change that is not structure)
    sharpness       the Laplacian's variance over that of the view halved: fine detail against coarse detail,
                    0.5 .. 1 in sharp photos whatever their content, under 0.3 when blurred (a Gaussian blur of 0.5 %
                    of the longer side gives 0.1 .. 0.25): what the blur flag uses
    shadows         the fraction of pixels at grey level <= 10 (crushed to black)
    highlights      the fraction of pixels at grey level >= 245 (clipped to white)
    p1, p99         the 1st and 99th percentiles of the grey levels, 0 .. 1 (a night sky is dark but its stars are
                    bright: p99 tells it from an underexposed photo)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from storage.folder import QUALITY_STATS

VIEW_SIDE = 128
STATS = QUALITY_STATS  # the shards' quality_<name> columns, in this order


def grey_view(img: Image.Image) -> np.ndarray:
    short = min(img.size)
    factor = max(1, round(short / VIEW_SIDE))
    if factor > 1:
        img = img.reduce(factor)
    return np.asarray(img.convert("L"), np.float32)


def image_stats(img: Image.Image) -> tuple[float, ...]:
    """The ``STATS`` of one decoded image, in that order."""
    width, height = img.size
    grey = grey_view(img)
    hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    shadows = float(hist[:11].sum()) / grey.size
    highlights = float(hist[245:].sum()) / grey.size
    cumulative = np.cumsum(hist) / grey.size
    p1 = float(np.searchsorted(cumulative, 0.01)) / 255.0
    p99 = float(np.searchsorted(cumulative, 0.99)) / 255.0
    p = hist[hist > 0] / grey.size
    entropy = max(0.0, float(-(p * np.log2(p)).sum()))
    variance = float(grey.var())
    blur = _laplacian_variance(grey)
    half = grey[: grey.shape[0] // 2 * 2, : grey.shape[1] // 2 * 2]
    half = 0.25 * (half[::2, ::2] + half[1::2, ::2] + half[::2, 1::2] + half[1::2, 1::2])
    coarse = _laplacian_variance(half)
    sharpness = blur / coarse if coarse > 1e-6 else 0.0
    noise = blur / (20.0 * variance) if variance > 1e-6 else 0.0
    return (float(width), float(height), float(grey.mean()) / 255.0, float(np.sqrt(variance)) / 255.0, blur,
            entropy, noise, sharpness, shadows, highlights, p1, p99)


def _laplacian_variance(grey: np.ndarray) -> float:
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1]) - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())
