"""``POST /search``: nearest neighbours in an embedded dataset (``byol-serve --index emb/``).

The query image goes through the same limits, decoding, queue and batcher as ``/embed``; the FAISS search
runs in a worker thread. The index must have been made by the served model (weights sha256), with a layer
and pooling the server outputs: anything else is refused at start.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile

from curation.calibration import DEFAULT_THRESHOLD, calibration_of
from curation.errors import CurationError
from curation.regions import box_in_pixels, parse_box, query_parts
from hub.hub_io import ResolvedModel
from hub.layers import map_name, output_name
from service.embed.errors import EmbedJobError
from service.embed.index import LoadedIndex, StaleIndexError
from service.embed.region_index import LoadedRegionIndex, has_region_index
from service.runtime.factory import build_backend
from service.runtime.onnx import OnnxRuntimeError
from service.server.errors import ServiceError
from service.server.pipeline import (
    NumpyJSONResponse,
    decode_base64_image,
    decode_image_whole,
    embed_blobs,
    in_lookup_pool,
    parse_bool,
    read_form,
    read_json,
)
from service.server.schemas import (
    BOOLEAN_TEXT,
    BOX_TEXT,
    EMBED_ERRORS,
    SearchBody,
    SearchResponse,
    error_responses,
    request_body,
)
from service.server.settings import ServiceSettings
from service.server.state import Auth, ReadyState, ServiceState
from storage.errors import FolderError
from storage.imported import is_imported

router = APIRouter()
logger = logging.getLogger(__name__)
MULTIPART_SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"image": {"type": "string", "format": "binary", "description": "the query image"},
                   "k": {"type": "integer", "minimum": 1, "description": "as in the query string"},
                   "min_score": {"type": "number", "minimum": -1.0, "maximum": 1.0},
                   "duplicates": {**BOOLEAN_TEXT, "type": "string"}},
    "required": ["image"], "additionalProperties": False,
}


class SearchIndexError(RuntimeError):
    """The index cannot be served with this model (raised at start, so the server never serves a wrong index)."""


def open_search_index(settings: ServiceSettings, resolved: ResolvedModel, outputs: list[str]):
    try:
        index = LoadedIndex.open(settings.index, nprobe=settings.search_nprobe, storage_options=settings.storage_options)
    except (EmbedJobError, CurationError, FolderError) as err:
        raise SearchIndexError(f"--index {settings.index}: {err}") from None
    manifest, meta = index.manifest, index.meta
    if is_imported(manifest):  # no model made them: searched by id only, whatever model the server runs
        logger.info("--index %s holds imported vectors: /search answers queries by id; an image query is refused",
                    settings.index)
        return index
    if manifest.made_with_other_weights(resolved.config):
        raise SearchIndexError(
            f"--index {settings.index} was embedded with another model ({manifest.model_id}, weights sha256 "
            f"{manifest.weights_sha256[:12]}) than the one served ({resolved.model_id}, "
            f"{resolved.config.weights_sha256[:12]}); serve that model, or embed the set again with this one")
    if manifest.architecture != resolved.config.architecture:
        raise SearchIndexError(f"--index {settings.index} holds {manifest.architecture} vectors; this server runs a "
                               f"{resolved.config.architecture}")
    name = output_name(meta["layer"], manifest.pooling)
    if name not in outputs:
        raise SearchIndexError(f"--index {settings.index} indexes {meta['layer']} with pooling {manifest.pooling}, "
                               f"which this server's backend does not output ({', '.join(outputs)})")
    if manifest.regions and index.store is not None and has_region_index(index.store):
        try:
            index.regions = LoadedRegionIndex.open(index.store)
        except (EmbedJobError, FolderError) as err:  # image search goes on; regions=true says why it cannot
            logger.warning("--index %s: its region index cannot be served: %s", settings.index, err)
    return index


class RegionQueries:
    """The served model with the maps of a region layer: a query part's probes (``curation.regions.query_parts``),
    run on the lookup pool beside the batcher. Made at the first region query of a layer."""

    def __init__(self, resolved: ResolvedModel, settings: ServiceSettings, threads: int) -> None:
        self.resolved, self.settings, self.threads = resolved, settings, threads
        self.backends: dict[str, Any] = {}
        self.lock = threading.Lock()

    def parts(self, image: Any, box: Any, layer: str) -> np.ndarray:
        with self.lock:
            if layer not in self.backends:
                runtime = self.settings.model_copy(update={"threads": self.threads, "precision": "fp32"})
                self.backends[layer] = build_backend(self.resolved, runtime, (layer,))
        backend = self.backends[layer]
        return query_parts(image, box, self.resolved.config.preprocessing,
                           lambda pixels: backend.run(pixels)[map_name(layer)])


def _min_score(value: Any) -> float | None:
    if value is None:
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ServiceError(400, "invalid_parameter", f"min_score must be a cosine in [-1, 1], got {value!r}") from None
    if not -1.0 <= score <= 1.0:
        raise ServiceError(400, "invalid_parameter", f"min_score must be a cosine in [-1, 1], got {score}")
    return score


def _duplicates_flag(value: Any) -> bool | None:
    return None if value is None else parse_bool(value, "duplicates")


def _one(query: Any, body: Any, name: str, parse) -> Any:
    """A parameter given in the query string or the body (the same value when both)."""
    a, b = parse(query), parse(body)
    if a is not None and b is not None and a != b:
        raise ServiceError(400, "conflicting_parameters", f"{name} is {query} in the query string but {body} in the "
                           "body")
    return a if a is not None else b


def _k(value: Any, state: ServiceState) -> int:
    if value is None:
        return 10
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ServiceError(400, "invalid_parameter", f"k must be a positive integer, got {value!r}") from None
    if k <= 0:
        raise ServiceError(400, "invalid_parameter", f"k must be a positive integer, got {k}")
    return min(k, state.settings.search_max_k)


@router.post("/search", summary="nearest neighbours of an image (or of an id) in the indexed dataset",
             response_model=SearchResponse, responses={**EMBED_ERRORS, **error_responses(404)},
             openapi_extra=request_body(json_model=SearchBody, multipart=MULTIPART_SEARCH_SCHEMA),
             description="multipart/form-data with one `image` file, or JSON `{image: base64}` or `{id: ...}`; "
                         "`k`, `min_score` and `duplicates` in the body or the query string, `regions` and `box` in the query string "
                         "or the JSON body (k: default 10, capped "
                         "by the server's search_max_k). `duplicates=true` asks whether the image is already in the "
                         "set: matches at or above the duplicate threshold (default: the measured dedup threshold), "
                         "each marked `exact` (the same bytes, by content hash) or `near`. `regions=true` searches "
                         "inside images: the images holding the query part (`box`, else the whole image) in one of "
                         "their regions, ranked per image, each result with the `box` that matched.")
async def search(request: Request, state: ReadyState, _: Auth,
                 k: int | None = Query(None, description="number of results (default 10; below 1: 400)",
                                       json_schema_extra={"minimum": 1}),
                 min_score: float | None = Query(None, ge=-1.0, le=1.0,
                                                 description="only results with a cosine at or above it"),
                 duplicates: bool | None = Query(None, description="is the image already in the set (exact or near "
                                                 "matches at or above the duplicate threshold)"),
                 regions: bool | None = Query(None, description="search inside images: the images holding the "
                                              "query part in one of their regions, each result with its box"),
                 box: str | None = Query(None, description="with regions: the part of the query image, x0,y0,x1,y1 "
                                         "in pixels or fractions (all four at most 1); default the whole image",
                                         pattern=BOX_TEXT)) -> NumpyJSONResponse:
    index = state.search_index  # taken once: a switch to a new generation never reaches a request in flight
    if index is None:
        raise ServiceError(404, "no_index", "this server has no index; start it with --index EMBEDDINGS_FOLDER "
                           "(made by `byol-embed run` and `byol-embed index`)")
    ctype = request.headers.get("content-type", "").lower()
    item_id, blob, body_k, body_min, body_dup, body_regions, body_box = None, None, None, None, None, None, None
    if ctype.startswith("multipart/form-data"):
        form = await read_form(request, max_files=2, max_fields=6)
        unknown = sorted(key for key in form.keys() if key not in FORM_FIELDS)
        items = form.getlist("image")
        if unknown or len(items) != 1 or not isinstance(items[0], UploadFile):
            raise ServiceError(400, "invalid_image", "send exactly one file in an 'image' field" +
                               (f" (unknown fields {unknown})" if unknown else ""))
        blob = await items[0].read()
        body_k, body_min, body_dup = form.get("k"), form.get("min_score"), form.get("duplicates")
    elif ctype.startswith("application/json"):
        body = await read_json(request, SearchBody)
        if (body.image is None) == (body.id is None):
            raise ServiceError(400, "invalid_parameter", "give exactly one of 'image' (base64) and 'id'")
        item_id, body_k, body_min, body_dup = body.id, body.k, body.min_score, body.duplicates
        body_regions, body_box = body.regions, body.box
        if body.image is not None:
            blob = decode_base64_image(body.image, 0)
    else:
        raise ServiceError(415, "unsupported_media_type",
                           "send multipart/form-data (an image file) or application/json ({image} or {id})")
    if k is not None and body_k is not None and _k(body_k, state) != _k(k, state):
        raise ServiceError(400, "conflicting_parameters", f"k is {k} in the query string but {body_k} in the body")
    count = _k(k if k is not None else body_k, state)
    want_duplicates = bool(_one(duplicates, body_dup, "duplicates", _duplicates_flag))
    in_regions = bool(_one(regions, body_regions, "regions", lambda v: None if v is None else parse_bool(v, "regions")))
    part = _one(box, body_box, "box", _box)
    if part is not None and not in_regions:
        raise ServiceError(400, "invalid_parameter", "box names a part to look for inside images: add regions=true")
    if in_regions:
        return await _search_regions(state, request, index, item_id, blob, part, count,
                                     _one(min_score, body_min, "min_score", _min_score), want_duplicates)
    cut = _one(min_score, body_min, "min_score", _min_score)
    if want_duplicates and cut is None:
        cut = duplicate_threshold(index, state.settings)
    layer = index.meta["layer"]
    digest = None
    if item_id is not None:
        try:
            vector = await in_lookup_pool(state, request, index.vector_of, item_id)
        except StaleIndexError as err:
            retry = str(max(1, round(state.settings.index_poll_s or 1)))
            raise ServiceError(503, "index_behind", str(err), headers={"Retry-After": retry}) from None
        except (EmbedJobError, FolderError) as err:
            raise ServiceError(404, "unknown_id", str(err)) from None
        if want_duplicates and index.sha256 is not None:
            digest = index.sha256[index.row_of(item_id)]
    else:
        if is_imported(index.manifest):
            raise ServiceError(400, "invalid_parameter", "this index holds imported vectors (byol-embed import): no "
                               "model made them, so an image cannot be embedded like them; query by id")
        rows = await embed_blobs(state, request, [blob])
        vector = np.asarray(rows[0][output_name(layer, index.manifest.pooling)], np.float32)
        digest = hashlib.sha256(blob).hexdigest() if want_duplicates else None
    results = await in_lookup_pool(state, request, index.search, vector, count, item_id, cut)
    state.metrics.searches.inc()
    keys = ("id", "path") if state.settings.search_return_paths else ("id",)
    body: dict[str, Any] = {"model": state.model_id, "k": count, "generation": index.generation, "min_score": cut}
    if want_duplicates:
        results = _with_kinds(index, results, digest, item_id, count)
        body["duplicate"] = bool(results)
        state.metrics.duplicate_checks.labels("yes" if results else "no").inc()
    # scores are FAISS's float32: written as the shortest text that gives back that float32
    body["results"] = [{**{key: r[key] for key in keys}, "score": np.float32(r["score"]),
                        **({"kind": r["kind"]} if "kind" in r else {})} for r in results]
    return NumpyJSONResponse(body)


FORM_FIELDS = ("image", "k", "min_score", "duplicates")  # regions and box: in the query string


def _box(value: Any) -> tuple[float, float, float, float] | None:
    try:
        return parse_box(value)
    except ValueError as err:
        raise ServiceError(400, "invalid_parameter", str(err)) from None


async def _search_regions(state: ServiceState, request: Request, index: LoadedIndex, item_id: str | None,
                          blob: bytes | None, box: Any, count: int, cut: float | None,
                          duplicates: bool) -> NumpyJSONResponse:
    regions = getattr(index, "regions", None)
    if regions is None:
        raise ServiceError(404, "no_region_index", "the served folder has no region index: embed it with "
                           "`byol-embed run --regions feature4` and build it with `byol-embed index`")
    if item_id is not None or blob is None:
        raise ServiceError(400, "invalid_parameter", "regions=true looks for a part of an image: send the image "
                           "(a query by id compares whole images)")
    if duplicates:
        raise ServiceError(400, "conflicting_parameters", "duplicates compares whole images; leave it out with "
                           "regions=true")
    image = await decode_image_whole(state, request, blob)
    try:
        query_box = box_in_pixels(box, image.width, image.height)
    except ValueError as err:
        raise ServiceError(400, "invalid_parameter", str(err)) from None

    def run() -> list[dict[str, Any]]:
        parts = state.region_queries.parts(image, query_box, regions.layer)
        return regions.search(parts, count)

    try:
        results = await in_lookup_pool(state, request, run)
    except OnnxRuntimeError as err:  # e.g. a graph without the layer's maps and no torch to export one
        raise ServiceError(503, "regions_unavailable", f"this server cannot make region vectors: {err}") from None
    if cut is not None:
        results = [r for r in results if r["score"] >= cut]
    state.metrics.searches.inc()
    keys = ("id", "path") if state.settings.search_return_paths else ("id",)
    return NumpyJSONResponse({
        "model": state.model_id, "k": count, "generation": regions.generation, "min_score": cut, "regions": True,
        "query_box": [round(float(v), 1) for v in query_box],
        "results": [{**{key: r[key] for key in keys}, "score": np.float32(r["score"]), "box": r["box"],
                     "size": r["size"]}
                    for r in results]})


def duplicate_threshold(index: LoadedIndex, settings: ServiceSettings) -> float:
    """The cosine at which /search calls two images duplicates: the server's setting, else the threshold the
    folder's own ``byol-embed dedup`` used, else the folder's calibration of the indexed layer (measured with the
    served model's weights: another model's is never used), else the fixed default."""
    if settings.duplicate_threshold is not None:
        return settings.duplicate_threshold
    used = index.result_summary("duplicates").get("threshold")
    if used is None:
        entry = calibration_of(index.result_summary("calibration"), index.manifest, index.meta.get("layer"))
        used = entry["threshold"] if entry else None
    return float(used if used is not None else DEFAULT_THRESHOLD)


def _with_kinds(index: LoadedIndex, results: list[dict[str, Any]], digest: str | None, item_id: str | None,
                count: int) -> list[dict[str, Any]]:
    """Matches marked exact (the same bytes: found by content hash even where the kNN list missed them) or near."""
    exact = [row for row in (index.same_bytes(digest) if digest else []) if index.ids[row] != item_id]
    exact_ids = {index.ids[row] for row in exact}
    out = [{**r, "kind": "exact" if r["id"] in exact_ids else "near"} for r in results]
    listed = {r["id"] for r in out}
    out += [{"id": index.ids[row], "path": index.paths[row], "score": 1.0, "kind": "exact"} for row in exact
            if index.ids[row] not in listed]
    out.sort(key=lambda r: (r["kind"] != "exact", -r["score"]))
    return out[:count]
