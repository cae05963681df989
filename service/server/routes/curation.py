"""The curation API the page reads: ``GET /curation`` (which results the served folder has, which are stale),
``/curation/duplicates``, ``/curation/outliers``, ``/curation/leaks`` (and ``/curation/leaks/thumb?id=``, the
other folder's image), ``/curation/map``.

Every file is read through the results contract (:mod:`curation.results`), a page at a time: a page reads the row
groups that hold its rows (the commands write them in the order shown), the duplicate groups come from the table
``dedup`` wrote, the map from the sample ``map`` wrote with its labels and flags joined. No table is held in the
server: a page's memory is its rows, whatever the folder's size. The work runs on the lookup pool, within the
request's deadline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from curation.results import (
    DUPLICATE_GROUPS,
    LEAKS,
    MAP,
    MAP_POINTS,
    MAP_SAMPLE,
    OUTLIERS,
    RESULTS,
    ResultReader,
)
from service.server.errors import ServiceError
from service.server.pipeline import NumpyJSONResponse, in_lookup_pool
from service.server.routes.pages import THUMB_RESPONSES, served_index, thumbnail
from service.server.schemas import (
    PAGED,
    CurationAvailable,
    DuplicatesPage,
    LeaksPage,
    MapPoints,
    OutliersPage,
    SharedPartsPage,
    error_responses,
)
from service.server.state import Auth, State

router = APIRouter()
MEMBERS_SHOWN = 100  # members listed per duplicate group (its size says how many there are)


def _reader(index, name: str) -> ResultReader:
    """The served folder's result ``name``; 404 naming the command to run where it has none."""
    reader = ResultReader(index.folder, RESULTS[name])
    if not reader.exists:
        declared = RESULTS[name]
        raise ServiceError(404, "no_curation", f"the index folder has no curation/{declared.table}; run "
                           f"`{declared.again(index.location)}`")
    return reader


def _float(value: float | None, digits: int) -> float | None:
    return None if value is None or value != value else round(float(value), digits)


@router.get("/curation", summary="which curation results the index folder has, and which are stale",
            response_model=CurationAvailable, responses=error_responses(401, 404, 422))
async def curation(state: State, _: Auth) -> dict:
    index = served_index(state)
    folder = {"generation": index.generation, "weights_sha256": index.manifest.weights_sha256}
    out: dict[str, Any] = {"generation": index.generation, "stale": {}}
    for name in PAGED:
        reader = ResultReader(index.folder, RESULTS[name])
        out[name] = reader.exists
        why = RESULTS[name].stale(reader.summary(), folder, index.location) if out[name] else None
        if why:
            out["stale"][name] = why
    return out


@router.get("/curation/duplicates", summary="duplicate groups (byol-embed dedup), a page of groups at a time",
            response_model=DuplicatesPage, responses=error_responses(401, 404, 422))
async def duplicates(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0),
                     limit: int = Query(20, ge=1, le=200)) -> dict:
    index = served_index(state)
    return await in_lookup_pool(state, request, _duplicates_page, index, offset, limit)


def _duplicates_page(index, offset: int, limit: int) -> dict:
    members = _reader(index, "duplicates")
    groups_table = ResultReader(index.folder, DUPLICATE_GROUPS)
    if groups_table.exists:
        page, total = groups_table.page(offset, limit)
        groups = page.to_pylist()
    else:  # a dedup made before the group table: the groups' bounds from the group column alone (8 bytes a row)
        groups, total = _groups_of_older(members, offset, limit)
    out = []
    for g in groups:
        rows, _ = members.page(g["first"], min(g["size"], MEMBERS_SHOWN), ["id", "similarity", "kind", "remove"])
        listed = [{"id": i, "similarity": round(float(s), 5), "kind": k, "remove": r}
                  for i, s, k, r in zip(*(rows.column(c).to_pylist() for c in ("id", "similarity", "kind", "remove")))]
        out.append({"group": g["group"], "representative": g["representative"], "kept": g.get("kept"),
                    "size": g["size"], "members": listed})
    return {"total": total, "offset": offset, "keep": members.summary().get("keep"), "groups": out}


def _groups_of_older(members: ResultReader, offset: int, limit: int) -> tuple[list[dict], int]:
    numbers = members.read(["group"]).column("group").to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(numbers)) + 1]) if len(numbers) else np.zeros(0, np.int64)
    ends = np.concatenate([starts[1:], [len(numbers)]])
    groups = []
    for start, end in zip(starts[offset:offset + limit], ends[offset:offset + limit]):
        first, _ = members.page(int(start), 1, ["group", "representative"])
        groups.append({"group": first.column("group")[0].as_py(), "representative":
                       first.column("representative")[0].as_py(), "first": int(start), "size": int(end - start)})
    return groups, len(starts)


@router.get("/curation/duplicates/remove", summary="the removal list: every copy but the kept one of each group, one "
            "id a line (what dedup --write-lists writes into curation/remove.txt)", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 404, 422)})
async def removal_list(state: State, _: Auth) -> StreamingResponse:
    reader = _reader(served_index(state), "duplicates")

    def lines():  # a row group at a time (Starlette runs it in its worker threads)
        for table in reader.row_groups(["id", "representative", "remove"]):
            ids = table.column("id").to_pylist()
            gone = table.column("remove").to_pylist()
            reps = table.column("representative").to_pylist()
            # a dedup made before the rule was recorded removed all but each group's representative
            yield "".join(i + "\n" for i, g, r in zip(ids, gone, reps) if (g if g is not None else i != r))

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="remove.txt"'})


@router.get("/curation/leaks", summary="images of this folder that are copies of another's (byol-embed leaks), "
            "a page at a time", response_model=LeaksPage, responses=error_responses(401, 404, 422))
async def leak_rows(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0),
                    limit: int = Query(50, ge=1, le=500)) -> dict:
    index = served_index(state)
    return await in_lookup_pool(state, request, _leaks_page, index, offset, limit)


def _leaks_page(index, offset: int, limit: int) -> dict:
    reader = _reader(index, "leaks")
    table, total = reader.page(offset, limit, ["id", "id_a", "similarity", "kind"])
    rows = [{"id": i, "id_a": a, "similarity": round(float(s), 5), "kind": k}
            for i, a, s, k in zip(*(table.column(c).to_pylist() for c in ("id", "id_a", "similarity", "kind")))]
    summary = reader.summary()
    return {"total": total, "offset": offset, "rows": rows, "other": summary.get("a"),
            "threshold": summary.get("threshold")}


@router.get("/curation/leaks/thumb", summary="a small JPEG of the other folder's image that an image of this one "
            "leaks from", response_class=Response, responses=THUMB_RESPONSES)
async def leak_thumb(request: Request, state: State, _: Auth,
                     id: str = Query(..., min_length=1, description="the image's id in this index")) -> Response:
    index = served_index(state)
    thumbnails = state.thumbnails
    reader = _reader(index, "leaks")
    row = await in_lookup_pool(state, request, reader.lookup, "id", id, ["id_a", "locator_a"])
    if row is None:
        raise ServiceError(404, "unknown_id", f"{id!r} has no leak in curation/{LEAKS.table}")
    other = reader.summary().get("a")
    if other is None and row.get("locator_a") is None:
        raise ServiceError(404, "no_curation", f"curation/{LEAKS.summary} does not say which folder the leaks are "
                           "from")
    return await thumbnail(request, state, thumbnails.leak_partner, id, row["id_a"], row.get("locator_a"), other)


@router.get("/curation/shared_parts", summary="pairs of images that share a part (byol-embed shared), most similar "
            "first, a page at a time", response_model=SharedPartsPage, responses=error_responses(401, 404, 422))
async def shared_part_rows(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0),
                           limit: int = Query(50, ge=1, le=500)) -> dict:
    index = served_index(state)
    return await in_lookup_pool(state, request, _shared_page, index, offset, limit)


def _shared_page(index, offset: int, limit: int) -> dict:
    reader = _reader(index, "shared_parts")
    names = ["id", "id_b", "similarity", "box", "box_b", "whole"]
    table, total = reader.page(offset, limit, names)
    regions = getattr(index, "regions", None)
    size = regions.size_of if regions is not None else (lambda item_id: None)
    rows = [{"id": i, "id_b": b, "similarity": round(float(s), 5), "box": box, "box_b": box_b,
             "whole": round(float(w), 5), "size": size(i), "size_b": size(b)}
            for i, b, s, box, box_b, w in zip(*(table.column(c).to_pylist() for c in names))]
    return {"total": total, "offset": offset, "rows": rows, "threshold": reader.summary().get("threshold")}


@router.get("/curation/outliers", summary="outlier scores (byol-embed outliers), most unusual first, a page at a time",
            response_model=OutliersPage, responses=error_responses(401, 404, 422))
async def outlier_rows(request: Request, state: State, _: Auth, offset: int = Query(0, ge=0),
                       limit: int = Query(50, ge=1, le=500)) -> dict:
    index = served_index(state)
    return await in_lookup_pool(state, request, _outliers_page, index, offset, limit)


def _outliers_page(index, offset: int, limit: int) -> dict:
    columns = ["id", "rank", "kind", "score", "percentile", "reasons", "error"]
    table, total = _reader(index, OUTLIERS.name).page(offset, limit, columns)
    rows = [{"id": i, "rank": r, "kind": k, "score": _float(s, 5), "percentile": _float(p, 2),
             "reasons": reasons or [], "error": e}
            for i, r, k, s, p, reasons, e in zip(*(table.column(c).to_pylist() for c in columns))]
    return {"total": total, "offset": offset, "rows": rows}


@router.get("/curation/map", summary="the map's points (byol-embed map): coordinates, clusters, and the labels and "
            "quality flags where the folder has them", response_model=MapPoints,
            responses=error_responses(401, 404, 422))
async def map_points(request: Request, state: State, _: Auth,
                     limit: int = Query(MAP_SAMPLE, ge=1, le=MAP_SAMPLE)) -> Response:
    index = served_index(state)
    return NumpyJSONResponse(await in_lookup_pool(state, request, _map_points, index, limit))


def _map_points(index, limit: int) -> dict:
    sample = ResultReader(index.folder, MAP_POINTS)
    if sample.exists:
        table, note = sample.read(), None
        total = int(sample.summary().get("embedded", table.num_rows))
    else:  # a map made before the sample existed: its points read, without labels or flags
        table = _reader(index, MAP.name).read(["id", "x", "y", "cluster"])
        total = table.num_rows
        note = f"made by an older version: run `{MAP.again(index.location)}` again for its labels and flags"
    step = max(1, -(-table.num_rows // limit))
    if step > 1:
        table = table.take(np.arange(0, table.num_rows, step))
    out: dict[str, Any] = {
        "total": total, "shown": table.num_rows, "ids": table.column("id").to_pylist(),
        "x": np.round(table.column("x").to_numpy(zero_copy_only=False), 5).astype(np.float32),
        "y": np.round(table.column("y").to_numpy(zero_copy_only=False), 5).astype(np.float32),
        "cluster": table.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64),
        "nmi": (sample.summary().get("nmi") or {}).get("value"), "note": note}
    for column in ("label", "flag"):
        if column in table.column_names and table.column(column).null_count < table.num_rows:
            out[column] = table.column(column).to_pylist()
    return out
