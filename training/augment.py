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


@dataclass(frozen=True)
class ViewDraw:
    """Every random choice of one view, drawn once by :func:`draw_view` and applied by any backend.

    ``jitter`` is ``None`` (not applied) or ``(order, (brightness, contrast, saturation, hue))``; ``blur_sigma``
    is ``None`` when the view is not blurred.
    """

    box: tuple[int, int, int, int]  # left, top, width, height in the source image
    flip: bool
    jitter: tuple[tuple[int, ...], tuple[float, float, float, float]] | None
    gray: bool
    blur_sigma: float | None
    solarize: bool


def draw_view(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig, view: ViewParams) -> ViewDraw:
    """Draw one view's parameters (torchvision's distributions), in the order the views were always drawn, so
    a sample's views stay a function of (seed, epoch, index) whatever backend applies them."""
    box = crop_box(rng, width, height, cfg.scale, cfg.ratio)
    flip = bool(rng.random() < cfg.flip_prob)
    jitter = None
    if rng.random() < cfg.jitter_prob:
        b, c, s, h = cfg.jitter
        factors = (rng.uniform(max(0, 1 - b), 1 + b), rng.uniform(max(0, 1 - c), 1 + c),
                   rng.uniform(max(0, 1 - s), 1 + s), rng.uniform(-h, h))
        jitter = (tuple(int(op) for op in rng.permutation(4)), factors)
    gray = bool(rng.random() < cfg.gray_prob)
    blur_sigma = float(rng.uniform(*cfg.blur_sigma)) if rng.random() < view.blur_prob else None
    solarize = bool(rng.random() < view.solarize_prob)
    return ViewDraw(box, flip, jitter, gray, blur_sigma, solarize)


# ----------------------------------------------------------------------------------------------------------------
# Backend "pil": PIL operations (torchvision's own on PIL images)


def _hue(img: Image.Image, factor: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int16) + int(round(factor * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8)), s, v)).convert("RGB")


def apply_pil(img: Image.Image, d: ViewDraw, cfg: AugmentConfig) -> np.ndarray:
    """One view as uint8 ``(size, size, 3)`` with PIL."""
    left, top, w, h = d.box
    # crop and resize in one resampling pass (same result as crop() then resize())
    out = img.resize((cfg.size, cfg.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if d.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if d.jitter is not None:
        order, factors = d.jitter
        for op in order:
            if op == 0:
                out = ImageEnhance.Brightness(out).enhance(factors[0])
            elif op == 1:
                out = ImageEnhance.Contrast(out).enhance(factors[1])
            elif op == 2:
                out = ImageEnhance.Color(out).enhance(factors[2])
            else:
                out = _hue(out, factors[3])
    if d.gray:
        out = out.convert("L").convert("RGB")
    if d.blur_sigma is not None:
        out = out.filter(ImageFilter.GaussianBlur(radius=d.blur_sigma))
    if d.solarize:
        out = ImageOps.solarize(out, cfg.solarize_threshold)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Backend "opencv": the same draws applied with OpenCV and vectorised NumPy (one thread per loader worker)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, PIL's "L" and OpenCV's gray


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8 ``(H, W, 3)`` with OpenCV's decoder (EXIF orientation applied), falling back to
    PIL for what OpenCV cannot read (e.g. GIF). Raises on undecodable bytes."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is not None:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    import io

    from hub.preprocess import to_rgb

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(to_rgb(img))


def apply_opencv(img: np.ndarray, d: ViewDraw, cfg: AugmentConfig) -> np.ndarray:
    """One view as uint8 ``(size, size, 3)`` from an RGB uint8 array, with OpenCV + NumPy."""
    import cv2

    left, top, w, h = d.box
    crop = img[top:top + h, left:left + w]
    shrink = w > cfg.size or h > cfg.size
    out = cv2.resize(crop, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if d.flip:
        out = out[:, ::-1]
    if d.jitter is not None:
        order, (bright, contrast, saturation, hue) = d.jitter
        out = np.ascontiguousarray(out)
        for op in order:  # PIL ImageEnhance's blends, as saturating uint8 arithmetic in OpenCV
            if op == 0:  # blend with black
                out = cv2.convertScaleAbs(out, alpha=bright)
            elif op == 1:  # blend with the mean gray level
                mean = float(int(_gray(out).mean() + 0.5))
                out = cv2.addWeighted(out, contrast, out, 0.0, (1.0 - contrast) * mean)
            elif op == 2:  # blend with the grayscale image
                gray = cv2.cvtColor(_gray(out), cv2.COLOR_GRAY2RGB)
                out = cv2.addWeighted(out, saturation, gray, 1.0 - saturation, 0.0)
            else:
                hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2HSV_FULL)  # hue in 0..255, as PIL's
                hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(hue * 255))) % 256
                out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    if d.gray:
        out = np.repeat(_gray(np.ascontiguousarray(out))[..., None], 3, axis=2)
    if d.blur_sigma is not None:
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), sigmaX=d.blur_sigma, borderType=cv2.BORDER_REFLECT)
    if d.solarize:
        out = np.where(out >= cfg.solarize_threshold, 255 - out, out)
    return np.ascontiguousarray(out, dtype=np.uint8)


BACKENDS = ("pil", "opencv")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def two_views(img: Image.Image | np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
              backend: str = "pil") -> tuple[np.ndarray, np.ndarray]:
    """The asymmetric pair (view 1: always blurred; view 2: rarely blurred, sometimes solarized).

    ``img``: a PIL image or an RGB uint8 array (what :func:`decode_rgb` gives). ``backend``: ``pil`` or
    ``opencv``; both apply the same draws (:func:`draw_view`), so they differ only in how the pixels are computed,
    not in the method's distributions."""
    if isinstance(img, np.ndarray):
        height, width = img.shape[:2]
    else:
        if img.mode != "RGB":
            img = img.convert("RGB")
        width, height = img.size
    d1 = draw_view(rng, width, height, cfg, cfg.view1)
    d2 = draw_view(rng, width, height, cfg, cfg.view2)
    if backend == "opencv":
        array = img if isinstance(img, np.ndarray) else np.asarray(img)
        return apply_opencv(array, d1, cfg), apply_opencv(array, d2, cfg)
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    return apply_pil(pil, d1, cfg), apply_pil(pil, d2, cfg)
