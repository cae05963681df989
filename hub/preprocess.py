"""The one definition of image preprocessing, in PIL + numpy (no torch).

Training's evaluation, ``BYOLModel.preprocess``, the ONNX service and the PyTorch service all call
these functions, so every path turns the same bytes into the same ``pixel_values``.

Pipeline (torchvision's ``Resize(256) + CenterCrop(224) + ToTensor + Normalize``, reimplemented):
decode -> EXIF transpose -> first frame -> RGB -> resize shorter side (PIL, antialiased) ->
center crop (torchvision's rounding) -> [0, 1] -> normalize -> NCHW float32.
"""

from __future__ import annotations

import contextlib
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


# What the server and the jobs decode: Pillow's other plugins (EPS through Ghostscript, PSD, ICNS, FITS, ...) are
# never reachable from an upload
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


# The scans of one JPEG, at most. Decoding costs each scan a pass over the whole image, and a valid progressive JPEG
# may repeat a scan thousands of times in a few bytes each (libjpeg-turbo's "LJT-01-003"): 1,000 scans of a
# 3000x3000 image decode in ~11 s. Encoders write far fewer: libjpeg(-turbo)'s progressive mode 10 (6 for grey),
# baseline 1 (or 1 per component); NVIDIA DALI refuses above 500. The cap is ten times libjpeg's progression.
MAX_JPEG_SCANS = 100
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")  # a marker in entropy-coded data (not a stuffed byte, RSTn or fill)
_STANDALONE = {0x01, 0xD8, 0xD9}  # TEM, SOI, EOI: no length field


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The scans (SOS markers) of a JPEG's bytes, counted by walking its segments (an EXIF thumbnail's scans, inside
    an APP1 segment, are skipped with it), stopping once ``stop_after`` is passed. A pass over the bytes with a
    regular expression: ~1 ms for a 4 MB photo."""
    scans, pos, size = 0, 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:  # entropy-coded data: jump to its next marker
            found = _MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x00:  # fill byte, restart marker, stuffing
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in _STANDALONE:
            if marker == 0xD9:
                break
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            scans += 1
            if scans > stop_after:
                break
        pos += 2 + length
    return scans


@contextlib.contextmanager
def _decode_errors():
    """Any failure while reading an image becomes one :class:`ImageDecodeError` (none of PIL's many types escape)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"image refused as a decompression bomb: {err}", too_large=True) from None
    except Exception as err:
        detail = re.sub(r" <[^<>]* at 0x[0-9a-f]+>", "", str(err))  # no object address: the same bytes, the same message
        raise ImageDecodeError(f"not a decodable image ({type(err).__name__}: {detail}); "
                               "send JPEG, PNG, GIF, BMP, TIFF or WebP bytes") from None


def open_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read only the header: the format (one of :data:`FORMATS`) and the size, refused above ``max_pixels``
    before any pixel is decoded, so decompression bombs cost nothing; a JPEG is refused above
    :data:`MAX_JPEG_SCANS` scans, which cost a pass over the image each whatever its pixels. ``img.size`` tells a caller what the
    decode will cost before it calls :func:`load_image`."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    with _decode_errors():
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", too_large=True
            )
        if img.format == "JPEG" and jpeg_scans(data) > MAX_JPEG_SCANS:
            raise ImageDecodeError(
                f"JPEG has more than {MAX_JPEG_SCANS} scans: each scan is a pass over the whole image, and encoders "
                "write at most ~10; re-encode it", too_large=True)
    return img


def load_image(img: Image.Image, *, draft_min_side: int | None = None) -> Image.Image:
    """Decode the pixels of an :func:`open_image` result (its first frame) into an RGB ``PIL.Image``."""
    with _decode_errors():
        img.seek(0)
        width, height = img.size
        if draft_min_side and img.format == "JPEG" and min(width, height) >= 2 * draft_min_side:
            img.draft(img.mode, (draft_min_side, draft_min_side))
        img.load()
    return to_rgb(img)


def decode_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_min_side: int | None = None) -> Image.Image:
    """Decode bytes into an RGB ``PIL.Image``; raise :class:`ImageDecodeError` on anything else.

    ``max_pixels`` is checked on the header, before any pixel is decoded, so decompression bombs
    are refused cheaply. Animated images give their first frame. Only :data:`FORMATS` are opened.

    ``draft_min_side`` (off by default: the exact path matches torchvision's eval transform): a JPEG whose
    shorter side is at least twice this is decoded at a reduced scale in the DCT domain (libjpeg's scaled
    decode, 1/2 to 1/8) keeping its shorter side >= ``draft_min_side``. A 12-megapixel phone photo then decodes
    at 1/8 of the cost; the pixels differ slightly from a full decode + antialiased resize (the cosine of the
    embeddings is measured in the README). EXIF orientation is applied after, as on the exact path.
    """
    return load_image(open_image(data, max_pixels=max_pixels), draft_min_side=draft_min_side)


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-transpose and convert any PIL mode (palette, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the image
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img), sixteen_bit=img.mode.startswith("I;16")))  # -> "L"
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


_ROWS_PER_STEP = 256  # a 36-megapixel 16-bit image converts through ~8 MB of temporaries, not ~1 GB of float64


def _to_uint8(arr: np.ndarray, *, sixteen_bit: bool) -> np.ndarray:
    """A 2-D 16-bit, 32-bit integer or float image -> uint8: 16-bit (and any image whose values pass 255) is
    scaled from 0..65535, others are taken as 0..255; clipped, rounded to the nearest level. Done a band of rows
    at a time, in integers for 16-bit and float32 otherwise, so the temporaries stay a few MB whatever the size."""
    out = np.empty(arr.shape, np.uint8)
    if sixteen_bit:
        for top in range(0, arr.shape[0], _ROWS_PER_STEP):
            band = arr[top:top + _ROWS_PER_STEP].astype(np.uint32)
            out[top:top + _ROWS_PER_STEP] = (band * 255 + 32767) // 65535  # exact: x / 257 never ends in .5
        return out
    peak = 65535.0 if arr.size and float(np.nanmax(arr)) > 255 else 255.0
    scale = np.float32(255.0 / peak)
    for top in range(0, arr.shape[0], _ROWS_PER_STEP):
        band = np.nan_to_num(arr[top:top + _ROWS_PER_STEP].astype(np.float32), nan=0.0, posinf=255.0 / scale,
                             neginf=0.0)
        band *= scale
        np.clip(band, 0, 255, out=band)
        out[top:top + _ROWS_PER_STEP] = np.rint(band)
    return out


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
