"""The pages: ``GET /`` (the model, its card's summary, layers, links), ``GET /ui`` (search by upload or id,
"more like this", the curation results of ``byol-embed dedup`` / ``outliers`` / ``leaks``, each marked stale when
made from an older generation than the one served), and what they read: ``GET /thumb?id=`` (and ``/thumb/{id}``),
``GET /curation``, ``/curation/duplicates``, ``/curation/outliers``, ``/curation/map``, ``/curation/leaks`` (and
``/curation/leaks/thumb?id=``, the other folder's image), ``/ui/card``.

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
from service.server.pipeline import in_lookup_pool
from service.server.schemas import (
    CurationAvailable,
    DuplicatesPage,
    LeaksPage,
    MapPoints,
    OutliersPage,
    error_responses,
)
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


def _index(state) -> Any:
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
    _index(state)  # 404 without an index
    try:
        data = await in_lookup_pool(state, request, state.thumbnails.get, item_id)
    except ThumbnailError as err:
        raise ServiceError(err.status, err.code, err.message) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _curation_file(state, name: str) -> Path | None:
    path = Path(_index(state).folder) / "curation" / name
    return path if path.is_file() else None


@lru_cache(maxsize=8)
def _read_table(path: str, mtime: float) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def _table(state, name: str) -> dict[str, list]:
    path = _curation_file(state, name)
    if path is None:
        raise ServiceError(404, "no_curation", f"the index folder has no curation/{name}; run `byol-embed "
                           f"{COMMANDS[name.split('.')[0]]} {_index(state).location}`")
    return _read_table(str(path), path.stat().st_mtime)


COMMANDS = {"duplicates": "dedup", "outliers": "outliers", "leaks": "leaks", "map": "map"}
MAP_POINTS = 100_000  # sent to the page at most: beyond, an even sample (the canvas draws 100 k smoothly)


@router.get("/curation", summary="which curation results the index folder has, and which are stale",
            response_model=CurationAvailable, responses=error_responses(401, 404, 422))
async def curation(state: State, _: Auth) -> dict:
    index = _index(state)
    out: dict[str, Any] = {"generation": index.generation, "stale": {}}
    for name, command in COMMANDS.items():
        out[name] = _curation_file(state, f"{name}.parquet") is not None
        made = index.curation_summary(f"{name}.json").get("generation")
        if out[name] and made is not None and made < index.generation:
            again = "byol-embed leaks TRAIN_FOLDER " if name == "leaks" else f"byol-embed {command} "
            out["stale"][name] = (f"made from generation {made}; the folder is at generation {index.generation} "
                                  f"(run `{again}{index.location}` again)")
    return out


@router.get("/curation/duplicates", summary="duplicate groups (byol-embed dedup), a page at a time",
            response_model=DuplicatesPage, responses=error_responses(401, 404, 422))
async def duplicates(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=200)) -> dict:
    table = await in_lookup_pool(state, request, _table, state, "duplicates.parquet")
    groups: dict[int, dict[str, Any]] = {}
    for g, i, rep, sim, kind in zip(table["group"], table["id"], table["representative"], table["similarity"],
                                    table["kind"]):
        entry = groups.setdefault(g, {"group": g, "representative": rep, "members": []})
        entry["members"].append({"id": i, "similarity": round(float(sim), 5), "kind": kind})
    ordered = [groups[g] for g in sorted(groups)]
    return {"total": len(ordered), "offset": offset, "groups": ordered[offset:offset + limit]}


@router.get("/curation/leaks", summary="images of this folder that are copies of another's (byol-embed leaks), "
            "a page at a time", response_model=LeaksPage, responses=error_responses(401, 404, 422))
async def leak_rows(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0),
                    limit: int = Query(50, ge=1, le=500)) -> dict:
    table = await in_lookup_pool(state, request, _table, state, "leaks.parquet")
    n = len(table["id"])
    rows = [{"id": table["id"][j], "id_a": table["id_a"][j], "similarity": round(float(table["similarity"][j]), 5),
             "kind": table["kind"][j]} for j in range(offset, min(n, offset + limit))]
    summary = _index(state).curation_summary("leaks.json")
    return {"total": n, "offset": offset, "rows": rows, "other": summary.get("a"),
            "threshold": summary.get("threshold")}


@router.get("/curation/leaks/thumb", summary="a small JPEG of the other folder's image that an image of this one "
            "leaks from", response_class=Response, responses=THUMB_RESPONSES)
async def leak_thumb(request: Request, state: State, _: Auth,
                     id: str = Query(..., min_length=1, description="the image's id in this index")) -> Response:
    table = await in_lookup_pool(state, request, _table, state, "leaks.parquet")
    other = _index(state).curation_summary("leaks.json").get("a")
    if other is None:
        raise ServiceError(404, "no_curation", "curation/leaks.json does not say which folder the leaks are from")
    try:
        data = await in_lookup_pool(state, request, state.thumbnails.leak_partner, id, {**table, "a": other})
    except ThumbnailError as err:
        raise ServiceError(err.status, err.code, err.message) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/curation/outliers", summary="outlier scores (byol-embed outliers), most unusual first, a page at a time",
            response_model=OutliersPage, responses=error_responses(401, 404, 422))
async def outlier_rows(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict:
    table = await in_lookup_pool(state, request, _table, state, "outliers.parquet")
    n = len(table["id"])
    rows = []
    for j in range(offset, min(n, offset + limit)):
        score, pct = table["score"][j], table["percentile"][j]
        rows.append({"id": table["id"][j], "rank": table["rank"][j], "kind": table["kind"][j],
                     "score": None if score is None or score != score else round(float(score), 5),
                     "percentile": None if pct is None or pct != pct else round(float(pct), 2),
                     "error": table["error"][j]})
    return {"total": n, "offset": offset, "rows": rows}


@router.get("/curation/map", summary="the map's points (byol-embed map): coordinates, clusters, and the labels and "
            "quality flags where the folder has them", response_model=MapPoints,
            responses=error_responses(401, 404, 422))
async def map_points(request: Request, state: State, _: Auth,
                     limit: int = Query(MAP_POINTS, ge=1, le=MAP_POINTS)) -> dict:
    return await in_lookup_pool(state, request, _map_points, state, limit)


def _map_points(state, limit: int) -> dict:
    table = _table(state, "map.parquet")
    n = len(table["id"])
    step = max(1, -(-n // limit))
    rows = range(0, n, step)
    ids = [table["id"][j] for j in rows]
    out: dict[str, Any] = {"total": n, "shown": len(ids), "ids": ids,
                           "x": [round(float(table["x"][j]), 5) for j in rows],
                           "y": [round(float(table["y"][j]), 5) for j in rows],
                           "cluster": [int(table["cluster"][j]) for j in rows],
                           "nmi": (_index(state).curation_summary("map.json").get("nmi") or {}).get("value")}
    for name, column, value in (("labels.parquet", "label", lambda t, j: t["label"][j]),
                                ("quality.parquet", "flag", lambda t, j: ", ".join(t["reasons"][j] or []) or None)):
        path = _curation_file(state, name)
        if path is None:
            continue
        other = _read_table(str(path), path.stat().st_mtime)
        at = {i: j for j, i in enumerate(other["id"])}
        out[column] = [value(other, at[i]) if i in at else None for i in ids]
    return out
