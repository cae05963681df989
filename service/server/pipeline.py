"""One request's way from body to response, shared by ``/embed``, ``/v1/embeddings`` and ``/search``.

In the order a request passes through it:

1. the body is read by hand (:func:`read_json`, :func:`read_form`; not as FastAPI body parameters, so every
   malformed body gets this service's error shape) and its images' bytes taken out (:func:`decode_base64_image`);
2. the options are parsed and validated once (:func:`embed_options` -> :class:`EmbedOptions`): a body field wins
   over the query string, both giving different values is a 400, a layer the served graph lacks is a 400;
3. the images are decoded and preprocessed in the decode pool within the server's pixel budget
   (:func:`decode_and_preprocess`), then run through the batcher (:func:`run_images`), both within the request's
   deadline and stopped when its client is gone (:func:`embed_blobs`);
4. each vector is encoded (:func:`encode_vector`) into a :class:`NumpyJSONResponse`.

It knows the model (through ``hub``) and the runtime's batcher; routes only read bodies and call it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from hub.config import ModelConfig
from hub.errors import ImageDecodeError, LayerError
from hub.layers import check_layers, output_name
from hub.preprocess import load_image, open_image, preprocess_one
from service.runtime.batcher import Batcher, BatcherClosed, BatcherFull
from service.server.admission import DecodeTicket
from service.server.errors import DrainingError, QueueFullError, ServiceError, image_error
from service.server.schemas import ENCODINGS, FALSE_WORDS, POOLINGS, TRUE_WORDS
from service.server.state import ServiceState

logger = logging.getLogger(__name__)


# --- 1. bodies ------------------------------------------------------------------------------------------

def malformed(err: ValidationError | ValueError) -> ServiceError:
    if isinstance(err, ValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
    else:
        detail = str(err)
    return ServiceError(422, "malformed_request", f"malformed JSON body: {detail}")


async def read_json(request: Request, schema: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    try:
        return schema.model_validate(orjson.loads(raw))
    except json.JSONDecodeError as err:
        raise malformed(ValueError(f"not JSON ({err.msg} at position {err.pos})")) from None
    except ValidationError as err:
        raise malformed(err) from None


async def read_form(request: Request, *, max_files: int, max_fields: int):
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except ServiceError:  # the body limit (413), raised while the form streams in
        raise
    except Exception as err:
        raise ServiceError(400, "malformed_multipart", f"cannot parse the multipart body: {err}") from None


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


# --- 2. options -----------------------------------------------------------------------------------------



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
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ServiceError(400, "invalid_parameter", f"{name} must be true or false, got {value!r}")


def _layers(value: Any) -> tuple[str, ...]:
    try:
        return check_layers(value if value is not None else ("avgpool",))
    except LayerError as err:
        raise ServiceError(400, "invalid_parameter", str(err)) from None


def _pooling(value: Any) -> str:
    pooling = value or "gap"
    if pooling not in POOLINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown pooling {pooling!r}; accepted: {', '.join(POOLINGS)}")
    return pooling


def _normalize(value: Any) -> bool:
    return parse_bool(value, "normalize") if value is not None else False


def _encoding(value: Any) -> str:
    encoding = value or "float"
    if encoding not in ENCODINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown encoding {encoding!r}; accepted: float, base64")
    return encoding


# each option, its parser (value or None -> the validated value or its default), in the order they are checked
PARSERS: dict[str, Callable[[Any], Any]] = {"layers": _layers, "pooling": _pooling, "normalize": _normalize,
                                           "encoding": _encoding}


def embed_options(query: Mapping[str, Any], body: Mapping[str, Any] | None, outputs: Sequence[str]) -> EmbedOptions:
    """The request's options from the query string and (JSON requests) the body's given fields.

    A field given in the body wins over the query string, but both giving different values is a 400
    ``conflicting_parameters``; a value that does not parse, or a layer the served graph has no output for
    with that pooling, is a 400 ``invalid_parameter`` that says what is accepted.
    """
    body = body or {}
    values = {}
    for name, parse in PARSERS.items():
        from_query = query.get(name)
        if body.get(name) is not None:  # a null in the body is the option not given
            value = parse(body[name])
            if from_query is not None and parse(from_query) != value:
                raise ServiceError(400, "conflicting_parameters",
                                   f"{name} is {from_query!r} in the query string but {body[name]!r} in the body")
        else:
            value = parse(from_query)
        values[name] = value
    options = EmbedOptions(**values)
    missing = [n for n in options.layers if output_name(n, options.pooling) not in outputs]
    if missing:
        raise ServiceError(400, "invalid_parameter", f"pooling {options.pooling!r} is not available for "
                           f"{', '.join(missing)} on this model (its maps are smaller than the mhead grids); "
                           "use pooling 'gap'")
    return options


# --- 3. images through the model ------------------------------------------------------------------------

def request_started(request: Request) -> float:
    """When the request middleware admitted this request (``time.monotonic()``); now, for apps without it."""
    return request.scope.get("state", {}).get("started", time.monotonic())


async def embed_blobs(state: ServiceState, request: Request, blobs: list[bytes]) -> list[dict[str, np.ndarray]]:
    """Decode in the decode pool (the server's limits, its pixel budget and decode setting), then through the
    batcher; both stages count toward the request's deadline and stop when its client is gone."""
    settings = state.settings
    started = request_started(request)
    ticket = DecodeTicket(state.pixels, settings.max_request_pixels, lambda: state.deadline(started))
    loop = asyncio.get_running_loop()
    decoding = loop.run_in_executor(state.decode_pool, decode_and_preprocess, blobs, state.config,
                                    settings.max_pixels, state.metrics.decode_errors.inc,
                                    settings.fast_jpeg_decode, ticket)

    def stop_decoding() -> None:
        ticket.cancelled.set()  # the decode thread stops before its next image (or its wait for pixels)
        decoding.cancel()  # not started yet: never starts

    pixels = await wait_for_client(decoding, state.deadline(started) - time.monotonic(), request.is_disconnected,
                                   on_stop=stop_decoding)
    return await run_images(state.batcher, pixels, state.deadline(started) - time.monotonic(),
                            request.is_disconnected)


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


async def run_images(batcher: Batcher, pixels: np.ndarray, timeout: float,
                     disconnected=None) -> list[dict[str, np.ndarray]]:
    """Submit and wait; on timeout or client disconnect the images are dropped from the queue. A full queue is a
    503 with Retry-After, a stopping batcher a 503 ``draining``."""
    try:
        futures = batcher.submit(pixels)
    except BatcherFull:
        raise QueueFullError() from None
    except BatcherClosed:
        raise DrainingError() from None
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


def decode_whole(blob: bytes, max_pixels: int, ticket: DecodeTicket) -> Any:
    """One image decoded whole (a PIL image: a query part's box is in its pixels), its pixels reserved from the
    server's decode budget for the decode."""
    try:
        img = open_image(blob, max_pixels=max_pixels)
        pixels = img.size[0] * img.size[1]
        ticket.reserve(pixels, 0)
        try:
            return load_image(img)
        finally:
            ticket.budget.release(pixels)
    except ImageDecodeError as err:
        raise image_error(err, 0) from None


async def decode_image_whole(state: ServiceState, request: Request, blob: bytes) -> Any:
    """:func:`decode_whole` on the decode pool, within the request's deadline."""
    started = request_started(request)
    ticket = DecodeTicket(state.pixels, state.settings.max_request_pixels, lambda: state.deadline(started))
    return await in_pool(state, request, state.decode_pool, decode_whole, blob, state.settings.max_pixels, ticket)


async def in_pool(state: ServiceState, request: Request, pool, fn, *args, limit_s: float | None = None):
    """Blocking work on one of the server's small pools, so at most its few threads run at once whatever arrives:
    within the request's deadline (and ``limit_s``, where given), dropped from the pool's queue when the client is
    gone first."""
    started = request_started(request)
    remaining = state.deadline(started) - time.monotonic()
    if limit_s is not None:
        remaining = min(remaining, limit_s)
    work = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    return await wait_for_client(work, remaining, request.is_disconnected, on_stop=work.cancel)


async def in_lookup_pool(state: ServiceState, request: Request, fn, *args):
    """Index work (a FAISS search, a vector read by id, a page of a curation result) on the lookup pool."""
    return await in_pool(state, request, state.lookup_pool, fn, *args)


# --- 4. responses ---------------------------------------------------------------------------------------

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


# The standard library writes a float32 as the 17-digit text of its float64 value (0.10000000149011612); orjson
# writes numpy float32 arrays and scalars with the shortest text that parses back to the same float32 (0.1): about
# half the bytes, no tolist() of every vector, and a client that parses the response as float32 gets exactly the
# vectors the model produced.
OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class NumpyJSONResponse(JSONResponse):
    """A ``JSONResponse`` whose content may hold numpy arrays and scalars (float32 written shortest)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=OPTIONS)
