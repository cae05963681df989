"""From request images to response embeddings: options, decoding, batching, encoding.

Shared by ``/embed`` and ``/v1/embeddings``; knows the model (through ``hub``) and the engine, not HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from hub.config import ModelConfig
from hub.errors import ImageDecodeError, LayerError
from hub.layers import check_layers, output_name
from hub.preprocess import decode_image, preprocess_one
from service.engine import BatchEngine
from service.errors import ServiceError, image_error

SERVED_POOLINGS = ("gap", "mhead")
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbedOptions:
    layers: tuple[str, ...] = ("avgpool",)
    pooling: str = "gap"
    normalize: bool = False
    encoding: str = "float"


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ServiceError(400, "invalid_parameter", f"{name} must be true or false, got {value!r}")


def make_options(layers: Any, pooling: Any, normalize: Any, encoding: Any, outputs: list[str]) -> EmbedOptions:
    """Validate options against what the served model outputs."""
    try:
        names = check_layers(layers if layers is not None else ("avgpool",))
    except LayerError as err:
        raise ServiceError(400, "invalid_parameter", str(err)) from None
    pooling = pooling or "gap"
    if pooling not in SERVED_POOLINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown pooling {pooling!r}; accepted: {', '.join(SERVED_POOLINGS)}")
    missing = [n for n in names if output_name(n, pooling) not in outputs]
    if missing:
        raise ServiceError(400, "invalid_parameter", f"pooling {pooling!r} is not available for {', '.join(missing)} on "
                           "this model (its maps are smaller than the mhead grids); use pooling 'gap'")
    encoding = encoding or "float"
    if encoding not in ENCODINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown encoding {encoding!r}; accepted: float, base64")
    return EmbedOptions(names, pooling, parse_bool(normalize, "normalize") if normalize is not None else False,
                        encoding)


def decode_base64_image(text: str, index: int) -> bytes:
    """Bare base64 or a ``data:image/...;base64,`` URI -> bytes (never a URL: the server fetches nothing)."""
    if not isinstance(text, str):
        raise ServiceError(400, "invalid_image", f"image {index} must be a base64 string", index=index)
    if text.startswith(("http://", "https://")):
        raise ServiceError(400, "invalid_image", f"image {index}: URLs are not fetched; send the image bytes as "
                           "base64 or a data: URI", index=index)
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ServiceError(400, "invalid_image", f"image {index}: data URIs must be base64-encoded "
                               "(data:image/png;base64,...)", index=index)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "invalid_base64", f"image {index} is not valid base64", index=index) from None


def decode_and_preprocess(blobs: list[bytes], config: ModelConfig, max_pixels: int, on_error=None,
                          fast_jpeg: bool = False) -> np.ndarray:
    """Decode every image (any failure names its index) -> ``(N, 3, H, W)`` float32.

    ``fast_jpeg``: large JPEGs are decoded at a reduced scale in the DCT domain (``--fast-jpeg-decode``)."""
    rows = []
    draft = config.preprocessing.resize_size if fast_jpeg else None
    for index, blob in enumerate(blobs):
        try:
            rows.append(preprocess_one(decode_image(blob, max_pixels=max_pixels, draft_min_side=draft),
                                       config.preprocessing))
        except ImageDecodeError as err:
            if on_error:
                on_error()
            raise image_error(err, index) from None
    return np.stack(rows)


async def run_images(engine: BatchEngine, pixels: np.ndarray, timeout: float,
                     disconnected=None) -> list[dict[str, np.ndarray]]:
    """Submit and wait; on timeout or client disconnect the images are dropped from the queue."""
    futures = engine.submit(pixels)
    gathered = asyncio.gather(*futures)
    watcher = None
    try:
        if disconnected is not None:
            async def watch() -> None:
                while not await disconnected():
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            done, _ = await asyncio.wait({gathered, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if gathered not in done:
                raise ServiceError(499 if watcher in done else 504, "client_closed" if watcher in done else "timeout",
                                   "the client disconnected" if watcher in done else
                                   f"the request took longer than {timeout:g} s")
            return gathered.result()
        return await asyncio.wait_for(gathered, timeout)
    except TimeoutError:
        raise ServiceError(504, "timeout", f"the request took longer than {timeout:g} s") from None
    except RuntimeError as err:
        raise ServiceError(500, "inference_failed", str(err)) from None
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()
        if watcher is not None:
            watcher.cancel()
        if not gathered.done():
            gathered.cancel()


def encode_vector(vector: np.ndarray, normalize: bool, encoding: str) -> list[float] | str:
    vector = vector.astype(np.float32, copy=False)
    if normalize:
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
