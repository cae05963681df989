"""The one definition of image preprocessing, in PIL + numpy (no torch).

Training's evaluation, ``BYOLModel.preprocess``, the ONNX service and the PyTorch service all call
these functions, so every path turns the same bytes into the same ``pixel_values``.

Pipeline (torchvision's ``Resize(256) + CenterCrop(224) + ToTensor + Normalize``, reimplemented):
decode -> EXIF transpose -> first frame -> RGB -> resize shorter side (PIL, antialiased) ->
center crop (torchvision's rounding) -> [0, 1] -> normalize -> NCHW float32.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from hub.config import PreprocessConfig
from hub.errors import ImageDecodeError

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}
DEFAULT_MAX_PIXELS = 50_000_000


def decode_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_min_side: int | None = None) -> Image.Image:
    """Decode bytes into an RGB ``PIL.Image``; raise :class:`ImageDecodeError` on anything else.

    ``max_pixels`` is checked on the header, before any pixel is decoded, so decompression bombs
    are refused cheaply. Animated images give their first frame.

    ``draft_min_side`` (off by default: the exact path matches torchvision's eval transform): a JPEG whose
    shorter side is at least twice this is decoded at a reduced scale in the DCT domain (libjpeg's scaled
    decode, 1/2 to 1/8) keeping its shorter side >= ``draft_min_side``. A 12-megapixel phone photo then decodes
    at 1/8 of the cost; the pixels differ slightly from a full decode + antialiased resize (the cosine of the
    embeddings is measured in the README). EXIF orientation is applied after, as on the exact path.
    """
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", too_large=True
                )
            img.seek(0)
            if draft_min_side and img.format == "JPEG" and min(width, height) >= 2 * draft_min_side:
                img.draft(img.mode, (draft_min_side, draft_min_side))
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"image refused as a decompression bomb: {err}", too_large=True) from None
    except Exception as err:  # PIL raises many types for corrupt input; none of them may escape
        detail = re.sub(r" <[^<>]* at 0x[0-9a-f]+>", "", str(err))  # no object address: the same bytes, the same message
        raise ImageDecodeError(f"not a decodable image ({type(err).__name__}: {detail}); "
                               "send JPEG, PNG, GIF, BMP, TIFF or WebP bytes") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-transpose and convert any PIL mode (palette, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the image
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if (img.mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        img = Image.fromarray(arr)  # uint8 2-D -> "L"
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is ``size``, like ``torchvision.transforms.Resize(size)``."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return img.resize((new_w, new_h), _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """``torchvision.transforms.CenterCrop(size)`` for an image at least ``size`` on both sides."""
    width, height = img.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``(3, 256)`` float32: channel c's value for each 8-bit level, ``(level / 255 - mean[c]) / std[c]``
    computed in float32 exactly as an elementwise pass over the image would (so the result is bit-identical)."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(((levels[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).T)


def normalize_chw(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 normalized: one table look-up per pixel and channel, written
    straight into the channel-first array (no float HWC intermediate, no transpose copy)."""
    table = _normalize_table(cfg.mean, cfg.std)
    out = np.empty((3, *rgb.shape[:2]), np.float32)
    for c in range(3):
        np.take(table[c], rgb[:, :, c], out=out[c])
    return out


def preprocess_one(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB image -> ``(3, crop, crop)`` float32, normalized."""
    img = center_crop(resize_shorter(to_rgb(img), cfg.resize_size, cfg.interpolation), cfg.crop_size)
    return normalize_chw(np.asarray(img), cfg)


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """A list of PIL images -> ``(N, 3, crop, crop)`` float32 ``pixel_values``.

    Example:
        >>> from PIL import Image
        >>> preprocess([Image.new("RGB", (300, 200))], PreprocessConfig()).shape
        (1, 3, 224, 224)
    """
    if len(images) == 0:
        return np.zeros((0, 3, cfg.crop_size, cfg.crop_size), np.float32)
    return np.stack([preprocess_one(img, cfg) for img in images])
