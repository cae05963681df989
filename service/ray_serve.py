"""The embedding service as a Ray Serve application: the same FastAPI app, one model load per replica.

    serve run service.ray_serve:app                        # settings from BYOL_* in the replicas' environment
    serve run service.ray_serve:build model=org/byol-r50-ep200 backend=onnx   # or as builder arguments
    serve deploy docker/ray/serve.yaml                     # the Serve config (KubeRay: docker/k8s/rayservice.yaml)
    byol-serve --engine ray --replicas 2                   # starts Ray (or joins --ray-address) and Serve

Each replica builds the app of :func:`service.server.app.create_app` (every route, API keys, limits, the batcher,
``/search``) inside its actor, so its lifespan loads and warms the model there, once. What Ray adds:

- ``X-Byol-Replica: replica=<id>; node=<node id>; ip=<address>`` on every response: who served it.
- Serve's health check calls the backend: one image through the replica's batcher (an overloaded queue
  is busy, not unhealthy); a replica whose batcher stopped or whose inference fails is replaced by Serve.
- ``/metrics`` through the proxy is the view of the one replica that answered: it says so in a header
  (``X-Byol-Metrics-Scope: replica``) and on its first line. The deployment's figures are Ray's own metrics
  (``ray_serve_*`` on each node's metrics export port), see the README.
- Inference threads: ``BYOL_THREADS=0`` means the CPUs Ray gave the replica (``ray_actor_options.num_cpus``), not
  the node's cores, so replicas sharing a node do not oversubscribe it.
- Requests on a replica that dies mid-request: Serve's HTTP proxy would answer 500 or drop the connection. The
  proxy middleware :func:`proxy_middlewares` (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set by
  ``byol-serve --engine ray``; set it on the Ray nodes for ``serve run``/KubeRay) replays such a request on another
  replica (the embedding routes are pure functions of the request) and answers a clean 503 with Retry-After when
  none can take it. Responses of the app itself, errors included, pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.middleware import Middleware

from service.runtime.batcher import BatcherFull
from service.server.admission import announced_length, refuse
from service.server.app import create_app
from service.server.errors import ServiceError, error_response
from service.server.routes import REPLAYABLE
from service.server.settings import ServiceSettings, bearer_accepted

logger = logging.getLogger("service.ray")

APP_NAME = "byol"
DEPLOYMENT_NAME = "BYOLEmbedder"
REPLICA_HEADER = "X-Byol-Replica"
REPLICA_MARK = REPLICA_HEADER.lower().encode()
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "service.ray_serve:proxy_middlewares"
DEFAULT_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,  # requests batch inside the replica: let them in (Serve's default is 5)
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    "ray_actor_options": {"num_cpus": 1},
}


class _ReplicaHeader:
    """Adds who served the request to every response."""

    def __init__(self, app, value: str) -> None:
        self.app, self.value = app, value.encode("latin-1")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                # Serve's proxy adds the request's x-request-id to the response itself (the same id: the app reads
                # it from the request), so the app's copy would only repeat it
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*kept, (REPLICA_MARK, self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


def replica_auth_problem(settings: ServiceSettings) -> str | None:
    """Why a replica must not start, or ``None``. Serve's proxies listen where the Serve config says (the shipped
    one: every node's address), which a replica cannot see; so without API keys a replica refuses to start unless
    ``allow_no_auth`` says a gateway authenticates. ``byol-serve --engine ray`` sets it only where its own check
    passed (a loopback address, or --allow-no-auth)."""
    if settings.api_keys or settings.allow_no_auth:
        return None
    return ("refusing to start: no API keys (BYOL_API_KEYS, a JSON list, in the environment of every node, e.g. "
            "from a Kubernetes Secret as docker/k8s/rayservice.yaml does) and Serve's proxies may listen beyond "
            "this machine, where anyone who reaches them could use every route. Give the keys, or set "
            "BYOL_ALLOW_NO_AUTH=true if a gateway in front authenticates")


@serve.deployment(name=DEPLOYMENT_NAME, **DEFAULT_OPTIONS)
@serve.ingress()
class BYOLEmbedder:
    """One replica: its own model, batcher and metrics. ``settings``: ``ServiceSettings`` fields that
    override the replica's ``BYOL_*`` environment."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        resolved = ServiceSettings(**(settings or {}))
        context = ray.get_runtime_context()
        if resolved.threads == 0:  # the CPUs Ray gave this replica, not the node's cores
            cpus = context.get_assigned_resources().get("CPU", 0)
            resolved = resolved.model_copy(update={"threads": max(1, int(cpus))})
        self.settings = resolved
        if (problem := replica_auth_problem(resolved)) is not None:  # fail closed, as byol-serve does
            raise RuntimeError(problem)
        if not resolved.api_keys:
            logger.warning("AUTHENTICATION IS OFF on this replica (BYOL_ALLOW_NO_AUTH): every client that reaches "
                           "a Serve proxy may call every route")
        replica = serve.get_replica_context().replica_id.unique_id
        self.identity = f"replica={replica}; node={context.get_node_id()}; ip={ray.util.get_node_ip_address()}"
        self.state = None

    def __serve_build_asgi_app__(self):

        app = create_app(self.settings)
        self.state = app.state.service
        self.state.serving_unit = self.identity
        app.add_middleware(_ReplicaHeader, value=self.identity)
        return app

    async def check_health(self) -> None:
        """Serve's health check: one image through this replica's batcher and backend."""
        state = self.state
        if state is None or state.batcher is None or not state.ready:
            raise RuntimeError("the model is not loaded or the batcher is not running")
        if not state.batcher.alive:
            raise RuntimeError("the batcher stopped")
        size = state.config.input_size
        try:
            (future,) = state.batcher.submit(np.zeros((1, 3, size, size), np.float32))
        except BatcherFull:
            return  # busy, not broken: the batcher's loop is alive and its queue full
        outputs = await asyncio.wait_for(future, timeout=25)
        if not all(np.isfinite(v).all() for v in outputs.values()):
            raise RuntimeError("inference returned non-finite values")


def deployment_options(*, replicas: int | None = None, autoscale: tuple[int, int] | None = None,
                       replica_cpus: float | None = None, max_replicas_per_node: int | None = None,
                       drain_timeout_s: float | None = None) -> dict[str, Any]:
    """Serve deployment options from ``byol-serve --engine ray``'s flags (``None``: Serve's or our default)."""
    options: dict[str, Any] = {}
    if replicas is not None and autoscale is not None:
        raise ValueError("give --replicas or --autoscale, not both")
    if replicas is not None:
        if replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {replicas}")
        options["num_replicas"] = replicas
    if autoscale is not None:
        low, high = autoscale
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}")
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 8}
    if replica_cpus is not None:
        if replica_cpus <= 0:
            raise ValueError(f"--replica-cpus must be > 0, got {replica_cpus}")
        options["ray_actor_options"] = {"num_cpus": replica_cpus}
    if max_replicas_per_node is not None:
        if max_replicas_per_node < 1:
            raise ValueError(f"--max-replicas-per-node must be >= 1, got {max_replicas_per_node}")
        options["max_replicas_per_node"] = max_replicas_per_node
    if drain_timeout_s is not None:  # Serve waits this long for a stopping replica's requests
        options["graceful_shutdown_timeout_s"] = drain_timeout_s
    return options


def build(args: dict[str, Any] | None = None, **options: Any):
    """The application: ``args`` are ``ServiceSettings`` fields (over the replicas' ``BYOL_*``), ``options``
    Serve deployment options. Serve calls it as an application builder (``import_path: service.ray_serve:build``
    with ``args:`` in the Serve config)."""

    args = dict(args or {})
    unknown = sorted(set(args) - set(ServiceSettings.model_fields))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}; accepted: {', '.join(ServiceSettings.model_fields)}")
    deployment = BYOLEmbedder.options(**options) if options else BYOLEmbedder
    return deployment.bind(args or None)


# `serve run service.ray_serve:app`: every setting from the replicas' BYOL_* environment
app = build()


class ReplayOnReplicaLoss:
    """An ASGI middleware in front of Serve's HTTP proxy (see the module docstring).

    A response that did not come from the app (each replica adds ``X-Byol-Replica`` to every response it sends)
    with a 5xx status other than 503, or no response at all, means the replica was lost under the request: for the
    replayable routes the buffered request goes again (``attempts`` in all), then a 503 with Retry-After.

    Buffering costs the proxy memory, so it is bounded before a byte is held: a ``Content-Length`` over the app's
    body limit is answered 413 at once; where the proxy's environment has the API keys (``BYOL_API_KEYS``, as
    docker/k8s/rayservice.yaml gives it), a request without a valid key is answered 401 at once; and the bytes
    buffered across all requests stay under ``max_buffered_bytes``: past it, a request goes through unbuffered
    (no replay), and the app's own admission answers it."""

    def __init__(self, app, attempts: int = 3, max_body_bytes: int = 32 * 1024 * 1024,
                 max_buffered_bytes: int = 128 * 1024 * 1024, api_keys: list[str] | None = None) -> None:
        self.app, self.attempts = app, attempts
        self.max_body_bytes, self.max_buffered_bytes = max_body_bytes, max_buffered_bytes
        self.api_keys = api_keys or []
        self.buffered = 0  # bytes held for replay, all requests together (the proxy's one event loop)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") not in REPLAYABLE:
            return await self.app(scope, receive, send)

        headers = dict(scope.get("headers") or [])
        try:
            announced = announced_length(headers, self.max_body_bytes)
        except ServiceError as err:
            return await refuse(err, receive, send, linger_bytes=self.max_body_bytes)
        if announced > self.max_body_bytes:
            return await refuse(ServiceError(413, "body_too_large", f"request body is {announced} bytes; the limit "
                                             f"is {self.max_body_bytes}"), receive, send,
                                linger_bytes=self.max_body_bytes)
        if self.api_keys and not bearer_accepted(headers.get(b"authorization", b"").decode("latin-1"),
                                                 self.api_keys):
            return await refuse(ServiceError(401, "unauthorized", "missing or invalid API key; send 'Authorization: "
                                             "Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}), receive, send,
                                linger_bytes=self.max_body_bytes)
        if self.buffered + announced > self.max_buffered_bytes:
            return await self.app(scope, receive, send)  # no room to hold it: no replay for this one
        self.buffered += announced
        try:
            await self._buffered(scope, receive, send)
        finally:
            self.buffered -= announced

    async def _buffered(self, scope, receive, send) -> None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:  # too large to hold: no replay, the app answers 413
                return await self.app(scope, _replay(b"".join(chunks), receive, more_body=True), send)
        body = b"".join(chunks)
        for attempt in range(self.attempts):
            forwarded = False  # the response went to the client: it is the answer

            async def forward(message) -> None:
                nonlocal forwarded
                if message["type"] == "http.response.start" and not forwarded:
                    headers = {k.lower() for k, _ in message.get("headers", [])}
                    if message["status"] >= 500 and message["status"] != 503 and REPLICA_MARK not in headers:
                        return  # the proxy's own error: the replica was lost
                    forwarded = True
                if forwarded:
                    await send(message)

            try:
                await self.app(scope, _replay(body, receive), forward)
            except Exception:
                if forwarded:
                    raise
            if forwarded:
                return
            logger.warning("%s: the replica was lost under the request (attempt %d of %d)", scope.get("path"),
                           attempt + 1, self.attempts)
            await asyncio.sleep(0.2 * (attempt + 1))

        response = error_response(503, "replica_unavailable", "the replica serving this request stopped and no "
                                  "other could take it; retry", headers={"Retry-After": "2"})
        await response(scope, receive, send)


def _replay(body: bytes, receive, more_body: bool = False):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()  # the rest of an unbuffered body, or the client's disconnect

    return replay


def proxy_middlewares() -> list:
    """``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.ray_serve:proxy_middlewares``: the middlewares of
    Serve's HTTP proxy (Starlette ``Middleware`` objects, as Serve asks)."""
    # the proxy's own environment: the body limit and the keys the replicas use, where the nodes were given them
    settings = ServiceSettings()
    return [Middleware(ReplayOnReplicaLoss, max_body_bytes=settings.max_body_bytes,
                       max_buffered_bytes=settings.max_inflight_bytes, api_keys=settings.api_keys)]
