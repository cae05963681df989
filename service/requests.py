"""Reading request bodies and embedding their images: shared by ``/embed``, ``/v1/embeddings`` and ``/search``.

Bodies are read by hand (not as FastAPI body parameters) so every malformed body gets this service's error shape.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.admission import DecodeTicket
from service.embedding import decode_and_preprocess, run_images, wait_for_client
from service.errors import ServiceError
from service.state import ServiceState


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


async def embed_blobs(state: ServiceState, request: Request, blobs: list[bytes]) -> list[dict[str, np.ndarray]]:
    """Decode in the decode pool (the server's limits, its pixel budget and decode setting), then through the
    batching engine; both stages count toward the request's deadline and stop when its client is gone."""
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
    return await run_images(state.engine, pixels, state.deadline(started) - time.monotonic(),
                            request.is_disconnected)


def request_started(request: Request) -> float:
    """When the request middleware admitted this request (``time.monotonic()``); now, for apps without it."""
    return request.scope.get("state", {}).get("started", time.monotonic())


async def in_lookup_pool(state: ServiceState, request: Request, fn, *args):
    """Index and thumbnail work (a FAISS search, a vector read by id, a thumbnail, a curation table): on the
    server's small lookup pool, so at most its few threads run at once whatever arrives, within the request's
    deadline, and dropped from the pool's queue when the client is gone first."""
    started = request_started(request)
    work = asyncio.get_running_loop().run_in_executor(state.lookup_pool, fn, *args)
    return await wait_for_client(work, state.deadline(started) - time.monotonic(), request.is_disconnected,
                                 on_stop=work.cancel)
