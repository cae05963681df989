"""Operational routes: the probes (health, readiness, metrics), and what is served (model information, OpenAI
model list)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.layers import output_name
from service.server.routes.search import duplicate_threshold
from service.server.schemas import (
    HealthResponse,
    InfoResponse,
    OpenAIModelList,
    ReadyResponse,
    error_responses,
)
from service.server.state import Auth, State

probe_routes = APIRouter()  # never refused, never counted in flight
info_routes = APIRouter()  # what is served: answers the same on every replica


@probe_routes.get("/health", summary="the process is alive", response_model=HealthResponse)
async def health() -> dict:
    return {"status": "ok"}


@probe_routes.get("/ready", summary="model loaded, warmed up, inference worker answering (503 otherwise)",
            response_model=ReadyResponse, responses={503: {"model": ReadyResponse, "description": "not ready"}})
async def ready(state: State) -> JSONResponse:
    batcher = state.batcher
    ok = state.ready and batcher is not None and batcher.accepting
    body = {"status": "ready" if ok else "not_ready", "queue_depth": batcher.depth if batcher else 0}
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@probe_routes.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus' text exposition format"}})
async def metrics(state: State) -> Response:
    body = generate_latest(state.metrics.registry)
    if not state.serving_unit:
        return Response(body, media_type=CONTENT_TYPE_LATEST)
    # one replica of several: a comment line (Prometheus ignores it, a person reading it does not) and a header
    note = (f"# byol: the view of ONE replica ({state.serving_unit}), not of the deployment; the deployment's "
            "metrics are Ray's (ray_serve_* on each node's metrics export port)\n")
    return Response(note.encode() + body, media_type=CONTENT_TYPE_LATEST, headers={"X-Byol-Metrics-Scope": "replica"})


@info_routes.get("/info", summary="what is served and how", response_model=InfoResponse,
            response_model_exclude_none=True, responses=error_responses(401, 422))
async def info(state: State, _: Auth) -> dict:
    cfg = state.config
    if cfg is None:
        return {"status": "loading"}
    outputs = state.backend.outputs if state.backend else []
    dims = {pooling: {layer: d for layer, d in cfg.dims(pooling).items()
                      if output_name(layer, pooling) in outputs}
            for pooling in ("gap", "mhead")}
    s = state.settings
    return {
        "model": state.model_id, "revision": state.revision, "backend": state.backend.name if state.backend else None,
        "precision": state.backend.precision if state.backend else None, "demo": cfg.demo,
        "architecture": cfg.architecture, "stem": cfg.stem, "layers": list(dims["gap"]), "poolings": ["gap", "mhead"],
        "dims": dims, "preprocessing": cfg.to_dict()["preprocessing"],
        "max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms,
        "inference": None if state.plan is None else {"streams": state.plan.streams,
                                                      "threads_per_stream": state.plan.threads_per_stream},
        "decode": "jpeg-draft (fast_jpeg_decode: reduced-scale DCT decode of large JPEGs)" if s.fast_jpeg_decode
        else "exact",
        "limits": {"max_images": s.max_images, "max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels},
        "provenance": {k: v for k, v in cfg.provenance.items() if k in ("identity", "source_file", "source_sha256")},
        "search": None if state.search_index is None else {
            "index": state.search_index.location, "layer": state.search_index.meta["layer"],
            "pooling": state.search_index.manifest.pooling, "count": state.search_index.meta["count"],
            "factory": state.search_index.meta["factory"], "max_k": s.search_max_k,
            "returns_paths": s.search_return_paths, "generation": state.search_index.generation,
            "duplicate_threshold": duplicate_threshold(state.search_index, s),
            "regions": None if getattr(state.search_index, "regions", None) is None else {
                k: state.search_index.regions.meta[k] for k in ("layer", "windows", "grid", "images", "regions",
                                                                "factory", "generation")},
            "watch": state.index_watch.describe() if state.index_watch is not None else None},
    }


@info_routes.get("/v1/models", summary="OpenAI-compatible model list", response_model=OpenAIModelList,
            responses=error_responses(401, 422))
async def models(state: State, _: Auth) -> dict:
    return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": state.started,
                                        "owned_by": "byol", "demo": bool(state.config and state.config.demo)}]}
