"""A subset worth labelling: ``byol-embed select EMB -n N --strategy diverse|typical|balanced``.

    emb/curation/selection.parquet   id, path, order (1 = picked first), distance (to the images picked before it,
                                     when it was picked), group (balanced: its label or cluster)
    emb/curation/selection.json      the summary: strategy, counts, the coverage radius (the farthest any image of
                                     the set is from the selection), the generation

diverse    k-center greedy: each pick is the image farthest from those picked so far (the first: the one nearest
           the set's mean), so the selection covers the set. In bounded memory: on the vectors projected on their
           first ``PCA_DIMS`` principal components (a float32 n x 64 matrix, an eighth of 512-d vectors), with one
           n-vector of distances to the selection; picks are made ``batch`` at a time (the farthest candidates,
           greedily among themselves, then one matrix product updates every distance), exact when ``batch`` is 1
           (the default below 2 000 picks).
typical    by kNN density: the images with the highest mean cosine to their ``k`` nearest neighbours first (the
           most representative), skipping any within ``--min-distance`` of one already picked.
balanced   diverse within each group, the groups being the labels (``--labels``, or the folder's) or else the map's
           k-means clusters (``byol-embed map``): N split evenly, a small group's unused share going to the others.

``--min-distance D`` (euclidean between the unit vectors, sqrt(2 - 2 cos); diverse measures it, and the coverage
radius, on their first 64 principal components) stops a diverse selection once every image is
within D of it, and keeps typical picks at least D apart. The same folder and arguments give the same selection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from curation.errors import CurationError
from curation.label_sources import read_labels, saved_spec
from curation.neighbours import knn, pca
from curation.progress import bar as progress_bar
from curation.results import MAP, SELECTION, ResultReader, write_result
from storage.folder import Manifest, load_rows
from storage.store import Store, as_store

STRATEGIES = ("diverse", "typical", "balanced")
PCA_DIMS = 64


def k_center(points: np.ndarray, count: int, *, min_distance: float = 0.0, batch: int | None = None,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Greedy k-center over ``points``: the picked rows in order, each one's distance to the earlier picks when
    it was picked, and the final coverage radius."""
    n = len(points)
    count = min(count, n)
    if count <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), float("nan")
    batch = batch or (1 if count <= 2000 else min(1024, max(1, count // 200)))
    sq = np.einsum("nd,nd->n", points, points)
    first = int(np.argmin(np.einsum("nd,nd->n", points - points.mean(axis=0), points - points.mean(axis=0))))
    picked = [first]
    gaps = [np.inf]
    dist = np.sqrt(np.maximum(sq + sq[first] - 2 * points @ points[first], 0))
    dist[first] = 0
    bar = progress_bar(count, "selecting", progress)
    if bar:
        bar.update(1)
    while len(picked) < count:
        want = min(batch, count - len(picked))
        pool_size = min(n, want * 4)
        pool = np.argpartition(-dist, pool_size - 1)[:pool_size] if pool_size < n else np.arange(n)
        pool = pool[np.lexsort((pool, -dist[pool]))]  # farthest first, ties by row: deterministic
        local = dist[pool].copy()
        chosen = []
        for _ in range(want):
            j = int(np.argmax(local))
            if local[j] <= 0 or local[j] < min_distance:
                break
            chosen.append(int(pool[j]))
            gaps.append(float(local[j]))
            d = np.sqrt(np.maximum(sq[pool] + sq[pool[j]] - 2 * points[pool] @ points[pool[j]], 0))
            local = np.minimum(local, d)
        if not chosen:
            break
        picked += chosen
        block = points[chosen]
        for start in range(0, n, 65536):
            part = points[start:start + 65536]
            d2 = sq[start:start + 65536, None] + sq[chosen][None, :] - 2 * part @ block.T
            dist[start:start + 65536] = np.minimum(dist[start:start + 65536], np.sqrt(np.maximum(d2.min(axis=1), 0)))
        if bar:
            bar.update(len(chosen))
    if bar:
        bar.close()
    return np.asarray(picked, np.int64), np.asarray(gaps, np.float32), float(dist.max())


def typical(vectors: np.ndarray, count: int, *, k: int = 10, min_distance: float = 0.0,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` densest rows (mean cosine to their ``k`` nearest neighbours), ``min_distance`` apart."""
    sims, nn, _ = knn(vectors, k, progress=progress)
    density = np.where(nn >= 0, sims, np.nan)
    density = np.nanmean(density, axis=1) if density.shape[1] else np.zeros(len(vectors))
    order = np.lexsort((np.arange(len(vectors)), -np.nan_to_num(density, nan=-2.0)))
    picked: list[int] = []
    for i in order:
        if len(picked) >= count:
            break
        if min_distance > 0 and picked:
            d = np.sqrt(np.maximum(2 - 2 * vectors[picked] @ vectors[i], 0))
            if d.min() < min_distance:
                continue
        picked.append(int(i))
    return np.asarray(picked, np.int64), density[picked].astype(np.float32)


def select(folder: str | Path | Store, *, count: int, strategy: str = "diverse", layer: str | None = None,
           min_distance: float = 0.0, labels_spec: str | None = None, k: int = 10, progress: bool = False,
           storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pick ``count`` images by ``strategy``; write the ``selection`` result; returns the summary."""
    if strategy not in STRATEGIES:
        raise CurationError(f"--strategy {strategy!r}: accepted {', '.join(STRATEGIES)}")
    if count < 1:
        raise CurationError(f"-n must be >= 1, got {count}")
    if min_distance < 0:
        raise CurationError(f"--min-distance is a distance >= 0, got {min_distance}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    layer = manifest.pick_layer(layer)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    n = len(rows.vectors)
    ids = [rows.ids[int(r)] for r in rows.embedded]
    groups: list[str | None] = [None] * n
    radius = float("nan")
    if strategy == "typical":
        picked, value = typical(rows.vectors, count, k=k, min_distance=min_distance, progress=progress)
        grouped_by = None
    else:
        points = pca(rows.vectors, PCA_DIMS)
        if strategy == "diverse":
            picked, value, radius = k_center(points, count, min_distance=min_distance, progress=progress)
            grouped_by = None
        else:
            groups, grouped_by = _groups(store, manifest, ids, labels_spec)
            picked, value, radius = _balanced(points, groups, count, min_distance)
    summary = {"strategy": strategy, "layer": layer, "requested": count, "selected": len(picked), "embedded": n,
               "min_distance": min_distance, "coverage_radius": None if np.isnan(radius) else round(radius, 4),
               "groups_from": grouped_by, "generation": manifest.generation,
               "seconds": round(time.perf_counter() - started, 2)}
    if len(picked) < min(count, n):
        summary["stopped"] = (f"every image is within --min-distance {min_distance} of the selection"
                              if strategy != "typical" else f"no more images {min_distance} apart")
    write_result(store, SELECTION, {
        "id": [ids[i] for i in picked], "path": [rows.paths[int(rows.embedded[i])] for i in picked],
        "order": np.arange(1, len(picked) + 1), ("density" if strategy == "typical" else "distance"): value,
        "group": [groups[i] for i in picked]}, summary)
    return {**summary, "first": [ids[i] for i in picked[:10]]}


def _groups(store: Store, manifest: Manifest, ids: list[str], spec: str | None) -> tuple[list[str | None], str]:
    if spec or saved_spec(store):
        labels, used = read_labels(store, manifest, spec, ids)
        return labels, f"labels ({used})"
    reader = ResultReader(store, MAP)
    if not reader.exists:
        raise CurationError("--strategy balanced needs groups: labels (--labels, or `run --labels`) or the map's "
                            "clusters (`byol-embed map` first)")
    table = reader.read(["id", "cluster"])
    cluster = dict(zip(table.column("id").to_pylist(), table.column("cluster").to_pylist()))
    return [None if cluster.get(i) is None else f"cluster {cluster[i]}" for i in ids], "map clusters"


def _balanced(points: np.ndarray, groups: list[str | None], count: int,
              min_distance: float) -> tuple[np.ndarray, np.ndarray, float]:
    names = sorted({g for g in groups if g is not None})
    members = {g: np.asarray([i for i, x in enumerate(groups) if x == g]) for g in names}
    quota = {g: 0 for g in names}
    left = count
    open_ = [g for g in names]
    while left > 0 and open_:  # even shares; what a small group cannot use goes to the others
        share = max(1, left // len(open_))
        for g in list(open_):
            take = min(share, len(members[g]) - quota[g], left)
            quota[g] += take
            left -= take
            if quota[g] >= len(members[g]):
                open_.remove(g)
            if left == 0:
                break
    picks: list[list[int]] = []
    gaps: list[list[float]] = []
    radius = 0.0
    for g in names:
        if quota[g] == 0:
            continue
        rows, d, r = k_center(points[members[g]], quota[g], min_distance=min_distance)
        picks.append(list(members[g][rows]))
        gaps.append(list(d))
        radius = max(radius, r)
    # interleaved: the first pick of every group, then the second of every group, ...
    order: list[int] = []
    values: list[float] = []
    for round_ in range(max((len(p) for p in picks), default=0)):
        for p, d in zip(picks, gaps):
            if round_ < len(p):
                order.append(int(p[round_]))
                values.append(d[round_])
    return np.asarray(order, np.int64), np.asarray(values, np.float32), radius
