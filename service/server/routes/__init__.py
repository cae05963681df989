"""The server's routes, and what kind each one is: derived once, here, from the routers that declare them.

- work (``/embed``, ``/v1/embeddings``, ``/search``): refused with 503 while the server drains; a request a dying
  Ray Serve replica dropped is replayed on another one (they are pure functions of the request);
- probes (``/health``, ``/ready``, ``/metrics``): never refused, never counted in flight, not access-logged;
- info (``/info``, ``/v1/models``): what is served, the same on every replica (replayable too);
- the pages (``/``, ``/ui``, ``/thumb``) and the curation API they read (``/curation/...``): everything else.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.server.routes import curation, embed, ops, pages, search

ROUTERS: tuple[APIRouter, ...] = (ops.probe_routes, ops.info_routes, embed.router, search.router, pages.router,
                                  curation.router)


def _paths(*routers: APIRouter) -> frozenset[str]:
    return frozenset(route.path for router in routers for route in router.routes)


WORK_ROUTES = _paths(embed.router, search.router)
PROBES = _paths(ops.probe_routes)
REPLAYABLE = WORK_ROUTES | _paths(ops.info_routes)
# the metrics' route label: every fixed path (one with a path parameter counts as "other": the label stays bounded)
KNOWN_ROUTES = frozenset(path for path in _paths(*ROUTERS) if "{" not in path)
