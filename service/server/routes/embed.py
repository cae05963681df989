"""``POST /embed`` (multipart or JSON) and the OpenAI-compatible ``POST /v1/embeddings``."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile

from hub.layers import output_name
from service.server.errors import ServiceError
from service.server.pipeline import (
    EmbedOptions,
    NumpyJSONResponse,
    decode_base64_image,
    embed_blobs,
    embed_options,
    encode_vector,
    read_form,
    read_json,
)
from service.server.schemas import (
    BOOLEAN_TEXT,
    EMBED_ERRORS,
    ENCODINGS,
    LAYERS_LIST,
    MULTIPART_EMBED_SCHEMA,
    POOLINGS,
    EmbedBody,
    EmbedResponse,
    OpenAIEmbeddingsBody,
    OpenAIEmbeddingsResponse,
    request_body,
)
from service.server.state import Auth, ReadyState, ServiceState

router = APIRouter()


def _check_count(count: int, state: ServiceState) -> None:
    """Refuse empty and oversized requests before any image is read or decoded."""
    if count == 0:
        raise ServiceError(400, "no_images", "no images in the request; send one or more 'images'")
    limit = state.settings.max_images
    if count > limit:
        raise ServiceError(413, "too_many_images", f"{count} images; at most {limit} per request")


def _response(state: ServiceState, results: list[dict[str, np.ndarray]], options: EmbedOptions) -> NumpyJSONResponse:
    names = {layer: output_name(layer, options.pooling) for layer in options.layers}
    data = [{"index": i, "embeddings": {layer: encode_vector(row[name], options.normalize, options.encoding)
                                        for layer, name in names.items()}}
            for i, row in enumerate(results)]
    dims = {layer: int(results[0][name].shape[0]) for layer, name in names.items()}
    return NumpyJSONResponse({"model": state.model_id, "revision": state.revision, "backend": state.backend.name,
                         "pooling": options.pooling, "normalized": options.normalize, "encoding": options.encoding,
                         "dims": dims, "data": data})


@router.post("/embed", summary="embed images from any layer", response_model=EmbedResponse, responses=EMBED_ERRORS,
             openapi_extra=request_body(json_model=EmbedBody, multipart=MULTIPART_EMBED_SCHEMA),
             description="multipart/form-data with one or more `images` files (options in the query string), "
                         "or JSON `{images: [base64 | data URI], layers, pooling, normalize, encoding}`.")
async def embed(request: Request, state: ReadyState, _: Auth,
                layers: str | None = Query(None, description="comma-separated: feature1..feature5, avgpool",
                                           json_schema_extra={"pattern": LAYERS_LIST}),
                pooling: str | None = Query(None, description="gap (default) or mhead",
                                            json_schema_extra={"enum": list(POOLINGS)}),
                normalize: str | None = Query(None, description="L2-normalize each embedding (default false)",
                                              json_schema_extra=BOOLEAN_TEXT),
                encoding: str | None = Query(None, description="float (default) or base64 (little-endian float32)",
                                             json_schema_extra={"enum": list(ENCODINGS)}),
                ) -> NumpyJSONResponse:
    query = {"layers": layers, "pooling": pooling, "normalize": normalize, "encoding": encoding}
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        limit = state.settings.max_images
        form = await read_form(request, max_files=limit + 1, max_fields=limit + 8)
        unknown = sorted({key for key in form.keys() if key != "images"})
        if unknown:
            raise ServiceError(400, "unknown_field", f"unknown form field(s) {unknown}: send files in 'images' fields "
                               "and options in the query string")
        items = form.getlist("images")
        _check_count(len(items), state)
        blobs = []
        for index, item in enumerate(items):
            if not isinstance(item, UploadFile):
                raise ServiceError(400, "invalid_image", f"image {index} is a text field, not a file", index=index)
            blobs.append(await item.read())
        options = embed_options(query, None, state.backend.outputs)
    elif ctype.startswith("application/json"):
        body = await read_json(request, EmbedBody)
        options = embed_options(query, body.model_dump(exclude_unset=True, exclude={"images"}), state.backend.outputs)
        _check_count(len(body.images), state)
        blobs = [decode_base64_image(text, i) for i, text in enumerate(body.images)]
    else:
        raise ServiceError(415, "unsupported_media_type",
                           "send multipart/form-data (images files) or application/json (base64 images)")
    results = await embed_blobs(state, request, blobs)
    return _response(state, results, options)


@router.post("/v1/embeddings", summary="OpenAI-compatible embeddings of images (avgpool, L2-normalized)",
             response_model=OpenAIEmbeddingsResponse, responses=EMBED_ERRORS,
             openapi_extra=request_body(json_model=OpenAIEmbeddingsBody),
             description="`input`: a data:image/...;base64 URI or bare base64, or a list of them.")
async def openai_embeddings(request: Request, state: ReadyState, _: Auth) -> NumpyJSONResponse:
    body = await read_json(request, OpenAIEmbeddingsBody)
    if body.model is not None and body.model != state.model_id:
        raise ServiceError(400, "model_not_found", f"this server serves {state.model_id!r}, not {body.model!r}")
    size = state.config.num_features
    if body.dimensions is not None and body.dimensions != size:
        raise ServiceError(400, "invalid_parameter", f"dimensions must be {size} (the avgpool size) or omitted")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    _check_count(len(inputs), state)
    blobs = [decode_base64_image(text, i) for i, text in enumerate(inputs)]
    results = await embed_blobs(state, request, blobs)
    data: list[dict[str, Any]] = [
        {"object": "embedding", "index": i, "embedding": encode_vector(row["avgpool"], True, body.encoding_format)}
        for i, row in enumerate(results)]
    return NumpyJSONResponse({"object": "list", "data": data, "model": state.model_id,
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})
