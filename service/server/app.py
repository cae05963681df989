"""The app factory: a lifespan that loads the model once, warms it up, and only then reports ready.

    from service.server.app import create_app
    app = create_app(ServiceSettings(model="models/byol-r50-ep200", backend="onnx"))
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.formparsers import MultiPartParser

from hub.hardware import usable_cpus
from service.runtime.backend import Backend
from service.runtime.batcher import Batcher
from service.runtime.factory import build_planned_backend, inference_plan, resolve_for_backend
from service.server.admission import announced_length, refuse
from service.server.errors import DrainingError, ServiceError, error_response, install_error_handlers
from service.server.index_watch import IndexWatcher
from service.server.routes import KNOWN_ROUTES, PROBES, ROUTERS, WORK_ROUTES
from service.server.routes.search import RegionQueries, open_search_index
from service.server.settings import ServiceSettings
from service.server.state import ServiceState

logger = logging.getLogger("service")
access_log = logging.getLogger("service.access")
DOCS_STATIC = "/docs-static"


class RequestMiddleware:
    """Request ids, admission (requests and body bytes in flight, checked before the body is read), the body
    size limit, metrics and structured access logs, as plain ASGI. Every answer goes through here, an unhandled
    error's 500 included, so each one carries its request id and reaches the metrics and the access log."""

    def __init__(self, app, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        start, status, answered = time.perf_counter(), 500, False
        scope.setdefault("state", {})["started"] = time.monotonic()  # the request's deadline counts from here
        limit = self.state.settings.max_body_bytes

        async def send_wrapper(message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                extra = [(b"x-request-id", request_id.encode("latin-1"))]
                sent = list(message.get("headers", []))
                if self.state.draining and all(k.lower() != b"connection" for k, _ in sent):
                    extra.append((b"connection", b"close"))  # no request after this one here: the server is going
                message["headers"] = [*sent, *extra]
            await send(message)

        counted = path not in PROBES
        try:
            length = announced_length(headers, limit)
            refusal = self._refusal(path, length, limit, counted)
        except ServiceError as err:  # a body whose length cannot be told
            length, refusal, counted = 0, err, False
        if refusal is not None:  # answered before the body is read, then the body is read and dropped
            await refuse(refusal, receive, send_wrapper, linger_bytes=limit)
        else:
            received = 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise ServiceError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
                return message

            try:
                await self.app(scope, receive_limited, send_wrapper)
            except Exception:
                logger.exception("unhandled error on %s (request %s)", path, request_id)
                if answered:
                    raise  # the response has begun: nothing left to say but to drop the connection
                await error_response(500, "internal_error", "internal error; see the server log")(
                    scope, receive, send_wrapper)
            finally:
                if counted:
                    self.state.admission.release(length)
                    if self.state.draining:
                        self.state.finished_while_draining += 1
        elapsed = time.perf_counter() - start
        metrics = self.state.metrics
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(elapsed)
        if route not in PROBES:
            access_log.info(json.dumps({"request_id": request_id, "method": scope.get("method"), "path": path,
                                        "status": status, "ms": round(elapsed * 1000, 1)}))


    def _refusal(self, path: str, length: int, limit: int, counted: bool) -> ServiceError | None:
        """Why a request is refused before its body is read, or None: it is admitted (and counted in flight)."""
        if path in WORK_ROUTES and self.state.draining:
            return DrainingError()
        if length > limit:
            return ServiceError(413, "body_too_large", f"request body is {length} bytes; the limit is {limit}")
        return self.state.admission.try_admit(length) if counted else None


def create_app(settings: ServiceSettings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app; the model is loaded by the lifespan (``backend`` may be injected, e.g. by tests)."""
    settings = settings or ServiceSettings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        resolved = await asyncio.to_thread(resolve_for_backend, settings)
        state.config, state.model_id, state.revision = resolved.config, resolved.model_id, resolved.revision
        state.model_folder = resolved.folder
        plan = state.plan = inference_plan(settings)
        if settings.inference_streams > plan.streams:
            logger.warning("inference_streams %d: the %s backend on %s runs one stream", settings.inference_streams,
                           settings.backend, settings.device)
        state.backend = backend or await asyncio.to_thread(build_planned_backend, resolved, settings, plan)
        await asyncio.to_thread(state.backend.warmup, resolved.config.input_size)
        if settings.index:
            outputs = state.backend.outputs
            # a region query's probes run beside the batcher on every core the process may use (the model is its latency)
            state.region_queries = RegionQueries(resolved, settings, settings.threads or usable_cpus())
            state.index_watch = IndexWatcher(state, lambda: open_search_index(settings, resolved, outputs))
            await state.index_watch.start()
        state.batcher = Batcher(state.backend, max_batch_size=settings.max_batch_size,
                                   max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                                   on_batch=state.metrics.observe_batch, streams=plan.streams)
        state.metrics.queue_depth.set_function(lambda: state.batcher.depth if state.batcher else 0)
        state.metrics.in_flight.set_function(lambda: state.in_flight)
        state.metrics.draining.set_function(lambda: int(state.draining))
        await state.batcher.start()
        state.ready = True
        demo = " -- DEMO MODEL (smoke-trained, weak features; not for real work)" if resolved.config.demo else ""
        logger.info("serving %s @ %s with %s (%s, %d stream(s) x %d thread(s)), %s %s%s", state.model_id,
                    state.revision, state.backend.name, state.backend.precision, plan.streams,
                    plan.threads_per_stream, resolved.config.architecture, resolved.folder, demo)
        yield
        state.ready = False
        if state.index_watch is not None:
            await state.index_watch.stop()
        await state.batcher.stop()
        state.decode_pool.shutdown(wait=False)
        state.lookup_pool.shutdown(wait=False)
        state.thumb_pool.shutdown(wait=False)
        logger.info("stopped after draining the queue")

    # /docs and /redoc from assets installed with the package (fastapi-offline ships swagger-ui-dist and redoc):
    # the deployments this image is made for have no internet, so no CDN, no web fonts, no validator badge.
    app = FastAPIOffline(title="BYOL embeddings", version="0.1.0", lifespan=lifespan, static_url=DOCS_STATIC,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Multi-layer image embeddings (feature1..feature5, avgpool) from BYOL ResNets.")
    app.state.service = state
    app.state.settings = settings
    # uploads stay in memory up to the body limit: Starlette spools each file part over 1 MB to a temporary file
    # on disk and reads it back in a worker thread, a disk round trip for every phone photo (the limit bounds memory)
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_body_bytes)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(RequestMiddleware, state=state)
    _served_facts_in_schema(app, state)
    return app


def _served_facts_in_schema(app: FastAPI, state: ServiceState) -> None:
    """``/openapi.json`` says what only the loaded model decides: ``/v1/embeddings``' ``model`` (the served id)
    and ``dimensions`` (the avgpool size), so that a client or a fuzzer the schema guides sends what the server
    takes. Patched into FastAPI's cached schema once the model is loaded."""
    generate = app.openapi
    patched = False

    def openapi() -> dict:
        nonlocal patched
        schema = generate()
        if not patched and state.config is not None:
            operation = schema.get("paths", {}).get("/v1/embeddings", {}).get("post", {})
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            fields = body.get("properties", {})
            if "model" in fields:
                fields["model"]["anyOf"] = [{"type": "string", "enum": [state.model_id]}, {"type": "null"}]
            if "dimensions" in fields:
                fields["dimensions"]["anyOf"] = [{"type": "integer", "enum": [state.config.num_features]},
                                                 {"type": "null"}]
            patched = True
        return schema

    app.openapi = openapi
