"""The pages: ``GET /`` (the model, its card's summary, layers, links), ``GET /ui`` (search by upload or id,
"more like this", the curation results, each marked stale when made from an older generation than the one served),
their assets, ``/ui/card``, and the images they show: ``GET /thumb?id=`` (and ``/thumb/{id}``). The curation
results they page through are :mod:`service.server.routes.curation`.

Plain HTML, CSS and JavaScript shipped in the package (``service/server/static``): no CDN, no web fonts, no request to
anything but this server. The pages themselves hold nothing secret and need no key; every route they call is
behind the API keys, and the page asks for the key once (kept in ``sessionStorage``, sent as a header).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.server.errors import ServiceError
from service.server.pipeline import in_pool
from service.server.schemas import error_responses
from service.server.state import Auth, State
from service.server.thumbs import ThumbnailError

router = APIRouter()
STATIC = Path(__file__).parents[1] / "static"  # service/server/static
ASSETS = {"style.css": "text/css", "common.js": "text/javascript", "ui.js": "text/javascript",
          "map.js": "text/javascript", "index.js": "text/javascript"}
# the pages may load only what this server sends (no CDN, no inline script, no other origin)
CSP = ("default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers={"Content-Security-Policy": CSP})


@router.get("/", include_in_schema=False)
async def landing() -> HTMLResponse:
    return _page("index.html")


@router.get("/ui", include_in_schema=False)
async def ui() -> HTMLResponse:
    return _page("ui.html")


@router.get("/ui/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: never a path from the request
        raise ServiceError(404, "not_found", f"no asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.get("/ui/card", summary="the served model card's summary (its first paragraph)", include_in_schema=False)
async def card(state: State, _: Auth) -> dict:
    folder = state.model_folder
    return {"model": state.model_id, "summary": _card_summary(str(folder)) if folder else None}


@lru_cache(maxsize=4)
def _card_summary(folder: str) -> str | None:
    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---"):  # the YAML front matter of a Hub card
        text = text.split("---", 2)[-1]
    for block in text.split("\n\n"):
        block = block.strip()
        if block and not block.startswith(("#", "|", "<", "!", "```", "-", "*")):
            return " ".join(block.split())[:800]
    return None


def served_index(state) -> Any:
    if state.search_index is None:
        raise ServiceError(404, "no_index", "this server has no index; start it with --index EMBEDDINGS_FOLDER")
    return state.search_index


THUMB_RESPONSES = {200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most 256 px a side"},
                   **error_responses(401, 404, 422)}


@router.get("/thumb", summary="a small JPEG of an image in the index, its id in the query string (any id, "
            "'.' and '..' included)", response_class=Response, responses=THUMB_RESPONSES)
async def thumb_by_query(request: Request, state: State, _: Auth,
                         id: str = Query(..., min_length=1, description="the image's id in the index")) -> Response:
    return await _thumb(request, state, id)


@router.get("/thumb/{item_id:path}", summary="a small JPEG of an image in the index (ids in the index only)",
            response_class=Response, responses=THUMB_RESPONSES)
async def thumb(item_id: str, request: Request, state: State, _: Auth) -> Response:
    return await _thumb(request, state, item_id)


async def _thumb(request: Request, state, item_id: str) -> Response:
    served_index(state)  # 404 without an index
    thumbnails = state.thumbnails  # taken once: a switch to a new generation never reaches a request in flight
    return await thumbnail(request, state, thumbnails.get, item_id)


THUMB_DEADLINE_S = 10.0  # a thumbnail that takes longer (a slow store, an older index's first listing) answers 504


async def thumbnail(request: Request, state, render, *args) -> Response:
    """A thumbnail made on the server's thumbnail pool (never the pool /search uses), within its deadline."""
    try:
        data = await in_pool(state, request, state.thumb_pool, render, *args, limit_s=THUMB_DEADLINE_S)
    except ThumbnailError as err:
        raise ServiceError(err.status, err.code, err.message) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


