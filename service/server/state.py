"""What the app holds while it serves: settings, the model's description, backend, batcher, metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from hub.config import ModelConfig
from hub.hardware import usable_cpus
from service.runtime.backend import Backend
from service.runtime.batcher import Batcher
from service.server.admission import Admission, PixelBudget
from service.server.errors import ServiceError
from service.server.metrics import Metrics
from service.server.settings import ServiceSettings, bearer_accepted

DRAIN_MARGIN_S = 1.0  # how long before the drain budget ends admitted work is cut, to leave time for the answers


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    config: ModelConfig | None = None
    model_id: str = ""
    revision: str = ""
    backend: Backend | None = None
    batcher: Batcher | None = None
    plan: Any = None  # service.runtime.factory.InferencePlan, set by the lifespan
    ready: bool = False
    draining: bool = False  # SIGTERM: refuse new work, finish what is in flight, then exit
    drain_started: float | None = None  # time.monotonic() of the signal: deadlines are cut to the drain budget
    admission: Admission = None  # requests and body bytes in flight (set from the settings)
    pixels: PixelBudget = None  # pixels being decoded (set from the settings)
    finished_while_draining: int = 0
    search_index: Any = None  # service.embed.index.LoadedIndex when --index is set
    model_folder: Any = None  # the resolved model folder (its card for GET /)
    region_queries: Any = None  # service.server.routes.search.RegionQueries: the model with a region layer's maps
    thumbnails: Any = None  # service.server.thumbs.Thumbnails of the search index (GET /thumb)
    index_watch: Any = None  # service.server.index_watch.IndexWatcher: the index follows its folder's generations
    serving_unit: str | None = None  # one replica of several (Ray Serve): who this process is, for /metrics
    started: int = field(default_factory=lambda: int(time.time()))
    # sized from the CPUs this process may use (a container's quota), not the host's count
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=max(2, usable_cpus()), thread_name_prefix="byol-decode"))
    # /search's index work and /curation/*: two at a time (they read files and search; the cores are the
    # batcher's), queued behind the request admission, each within its request's deadline
    lookup_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="byol-lookup"))
    # /thumb and the leaks' thumbnails: a pool of their own (a slow store or an older index's listing never holds
    # /search), each within a deadline
    thumb_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="byol-thumb"))

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.settings.max_concurrent_requests, self.settings.max_inflight_bytes)
        if self.pixels is None:
            self.pixels = PixelBudget(self.settings.max_decode_pixels)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not answered yet (every route but the probes and /metrics)."""
        return self.admission.requests

    def begin_drain(self) -> None:
        self.draining, self.ready = True, False
        self.drain_started = time.monotonic()

    def deadline(self, started: float) -> float:
        """When a request admitted at ``started`` (``time.monotonic()``) must be answered: ``request_timeout_s``
        after it came, or, once a drain has begun, a second before the drain budget runs out (so that admitted
        work ends with an answer rather than a cancelled connection)."""
        end = started + self.settings.request_timeout_s
        if self.drain_started is not None:
            end = min(end, self.drain_started + self.settings.drain_timeout_s - DRAIN_MARGIN_S)
        return end

    @property
    def drained(self) -> bool:
        return self.in_flight == 0 and (self.batcher is None or self.batcher.depth == 0)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def ready_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    # while draining, requests admitted before the signal go on (the middleware refuses new ones)
    if not (state.ready or state.draining) or state.batcher is None or not state.batcher.accepting:
        raise ServiceError(503, "not_ready", "the model is not loaded yet or the server is shutting down",
                           headers={"Retry-After": "5"})
    return state


def check_api_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer API keys, compared in constant time; an empty token never matches. No keys configured means no
    authentication (refused at start beyond loopback unless ``allow_no_auth``, and logged loudly)."""
    keys = request.app.state.service.settings.api_keys
    if keys and not bearer_accepted(authorization, keys):
        raise ServiceError(401, "unauthorized", "missing or invalid API key; send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})


State = Annotated[ServiceState, Depends(get_state)]
ReadyState = Annotated[ServiceState, Depends(ready_state)]
Auth = Annotated[None, Depends(check_api_key)]
