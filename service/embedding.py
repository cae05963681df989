"""From request images to response embeddings: decoding, batching, encoding (the options: ``service.options``).

Shared by ``/embed``, ``/v1/embeddings`` and ``/search``; knows the model (through ``hub``) and the engine, not HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

import numpy as np

from hub.config import ModelConfig
from hub.errors import ImageDecodeError
from hub.preprocess import load_image, open_image, preprocess_one
from service.admission import DecodeTicket
from service.engine import BatchEngine
from service.errors import ServiceError, image_error

logger = logging.getLogger(__name__)


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
                          fast_jpeg: bool = False, ticket: DecodeTicket | None = None) -> np.ndarray:
    """Decode every image (any failure names its index) -> ``(N, 3, H, W)`` float32.

    ``fast_jpeg``: large JPEGs are decoded at a reduced scale in the DCT domain (``--fast-jpeg-decode``).
    ``ticket`` (the server's): each image's pixels are reserved from the server's decode budget on its header,
    before it is decoded, and released once it is preprocessed; the request's deadline and its client's
    disconnect stop the loop between images."""
    rows = []
    draft = config.preprocessing.resize_size if fast_jpeg else None
    for index, blob in enumerate(blobs):
        held = 0
        try:
            img = open_image(blob, max_pixels=max_pixels)
            if ticket is not None:
                pixels = img.size[0] * img.size[1]
                ticket.reserve(pixels, index)
                held = pixels
            rows.append(preprocess_one(load_image(img, draft_min_side=draft), config.preprocessing))
        except ImageDecodeError as err:
            if on_error:
                on_error()
            raise image_error(err, index) from None
        finally:
            if held:
                ticket.budget.release(held)
    return np.stack(rows)


async def wait_for_client(awaitable, timeout: float, disconnected=None, *, on_stop=None):
    """Await ``awaitable`` for at most ``timeout`` seconds while its client is connected: 504 at the timeout,
    499 once ``disconnected()`` says the client is gone; ``on_stop`` is called in both cases (to drop the
    work)."""
    task = asyncio.ensure_future(awaitable)
    watcher = None
    try:
        waiting = {task}
        if disconnected is not None:
            async def watch() -> None:
                while not await disconnected():
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            waiting.add(watcher)
        done, _ = await asyncio.wait(waiting, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            if on_stop is not None:
                on_stop()
            if watcher is not None and watcher in done:
                raise ServiceError(499, "client_closed", "the client disconnected")
            raise ServiceError(504, "timeout", "the request ran out of time (request_timeout_s, or the drain "
                               "budget while the server shuts down)")
        return task.result()
    finally:
        if watcher is not None:
            watcher.cancel()
        if not task.done():
            task.cancel()


async def run_images(engine: BatchEngine, pixels: np.ndarray, timeout: float,
                     disconnected=None) -> list[dict[str, np.ndarray]]:
    """Submit and wait; on timeout or client disconnect the images are dropped from the queue."""
    futures = engine.submit(pixels)
    gathered = asyncio.gather(*futures)

    def drop() -> None:
        for fut in futures:
            if not fut.done():
                fut.cancel()

    try:
        return await wait_for_client(gathered, timeout, disconnected, on_stop=drop)
    except RuntimeError as err:  # the runtime's message (shapes, paths, node names) to the log, not the client
        logger.error("inference failed: %s", err)
        raise ServiceError(500, "inference_failed", "inference failed; see the server log") from None
    finally:
        drop()
        if not gathered.done():
            gathered.cancel()


def encode_vector(vector: np.ndarray, normalize: bool, encoding: str) -> np.ndarray | str:
    """One embedding for the response: a float32 array (written by ``NumpyJSONResponse``) or base64 of its
    little-endian float32 bytes."""
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if normalize:
        norm = float(np.linalg.norm(vector))
        vector = vector / np.float32(norm) if norm > 0 else vector
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector
