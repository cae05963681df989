"""A map of the set: ``byol-embed map EMB`` -> ``curation/map.parquet`` (id, path, x, y, cluster).

How. The vectors are projected on their first 50 principal components; k-means (FAISS, ``--clusters``, default
about sqrt(n / 4), 2..64) runs there. The 2-D layout is t-SNE (scikit-learn's Barnes-Hut) of up to
``LANDMARKS`` landmark points, a deterministic sample; every other point is placed at the similarity-weighted mean
of its 5 nearest landmarks (in the 50-d space), nudged by a small deterministic jitter so that copies do not
stack into one pixel.

Why not UMAP or t-SNE of every point: on 2 cores either takes tens of minutes at a million points (and UMAP
brings numba), past the curation budget; placing points by their nearest landmarks is linear in n (one kNN
query per point against a few thousand landmarks), and keeps what a map is looked at for: which images sit
together, and which clusters lie apart. Below ``LANDMARKS`` points every point is a landmark: plain t-SNE.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from service.embed.errors import EmbedJobError
from storage.folder import Manifest, load_rows, write_table
from storage.store import Store, as_store

MAP_FILE = "map.parquet"
LANDMARKS = 5000
PCA_DIMS = 50


def default_clusters(n: int) -> int:
    return int(min(64, max(2, round(math.sqrt(n / 4)))))


def kmeans(points: np.ndarray, clusters: int, *, seed: int = 0) -> np.ndarray:
    """FAISS k-means: each row's cluster (0-based; numbered by size, largest first)."""
    from service.embed.index import faiss_module

    faiss = faiss_module()
    clusters = max(1, min(clusters, len(points)))
    km = faiss.Kmeans(points.shape[1], clusters, niter=25, seed=seed, verbose=False,
                      max_points_per_centroid=256)
    km.train(np.ascontiguousarray(points, np.float32))
    _, assign = km.index.search(np.ascontiguousarray(points, np.float32), 1)
    assign = assign.ravel()
    sizes = np.bincount(assign, minlength=clusters)
    renumber = np.empty(clusters, np.int64)
    renumber[np.lexsort((np.arange(clusters), -sizes))] = np.arange(clusters)
    return renumber[assign]


def layout(points: np.ndarray, *, landmarks: int = LANDMARKS, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` float32 coordinates, scaled into [-1, 1]."""
    from sklearn.manifold import TSNE

    n = len(points)
    if n < 4:
        return np.zeros((n, 2), np.float32)
    rng = np.random.default_rng(seed)
    marks = np.sort(rng.choice(n, size=min(n, landmarks), replace=False))
    perplexity = float(min(30, max(2, (len(marks) - 1) / 3)))
    marked = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                  max_iter=750).fit_transform(points[marks]).astype(np.float32)
    if len(marks) == n:
        xy = marked
    else:
        from service.embed.curate import knn_of

        norms = np.linalg.norm(points, axis=1, keepdims=True)
        unit = points / np.where(norms > 0, norms, 1)
        xy = np.empty((n, 2), np.float32)
        for start in range(0, n, 65536):
            sims, nn = knn_of(unit[marks], unit[start:start + 65536], 5)
            w = np.exp((sims - sims[:, :1]) / 0.05)
            xy[start:start + 65536] = (w[..., None] * marked[nn]).sum(axis=1) / w.sum(axis=1, keepdims=True)
        spread = float(np.median(np.linalg.norm(marked - marked.mean(axis=0), axis=1))) or 1.0
        others = np.setdiff1d(np.arange(n), marks)
        xy[others] += rng.normal(0, spread * 0.01, (len(others), 2)).astype(np.float32)
        xy[marks] = marked
    xy -= (xy.max(axis=0) + xy.min(axis=0)) / 2
    xy /= max(float(np.abs(xy).max()), 1e-9)
    return xy


def build_map(folder: str | Path | Store, *, layer: str = "avgpool", clusters: int | None = None,
              landmarks: int = LANDMARKS, labels_spec: str | None = None, progress: bool = False,
              storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``curation/map.parquet``; returns the summary (with the clusters' NMI against the labels, where the
    folder has labels)."""
    from service.embed.curate import CURATION_DIR
    from service.embed.select import pca

    if clusters is not None and clusters < 2:
        raise EmbedJobError(f"--clusters must be >= 2, got {clusters}")
    if landmarks < 10:
        raise EmbedJobError(f"--landmarks must be >= 10, got {landmarks}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    n = len(rows.vectors)
    if n < 2:
        raise EmbedJobError(f"a map needs at least 2 embedded images; {store} has {n}")
    ids = [rows.ids[int(r)] for r in rows.embedded]
    points = pca(rows.vectors, PCA_DIMS)
    clusters = clusters or default_clusters(n)
    assign = kmeans(points, clusters)
    xy = layout(points, landmarks=landmarks)
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "path": pa.array([rows.paths[int(r)] for r in rows.embedded], pa.string()),
        "x": pa.array(xy[:, 0], pa.float32()), "y": pa.array(xy[:, 1], pa.float32()),
        "cluster": pa.array(assign, pa.int32()),
    })
    out = store.child(CURATION_DIR)
    write_table(out, MAP_FILE, table)
    summary: dict[str, Any] = {
        "layer": layer, "embedded": n, "clusters": int(assign.max()) + 1, "landmarks": min(n, landmarks),
        "method": "PCA-50, k-means (FAISS); t-SNE of landmarks, the rest placed by their 5 nearest landmarks",
        "generation": manifest.generation}
    nmi = _nmi_against_labels(store, manifest, ids, assign, labels_spec)
    if nmi is not None:
        summary["nmi"] = nmi
    summary["seconds"] = round(time.perf_counter() - started, 2)
    out.write_text("map.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _nmi_against_labels(store, manifest, ids, assign, spec) -> dict[str, Any] | None:
    from service.embed.labels import read_labels, saved_spec

    if not (spec or saved_spec(store)):
        return None
    labels, used = read_labels(store, manifest, spec, ids)
    known = [i for i, label in enumerate(labels) if label is not None]
    if not known:
        return None
    return {"labels": used, "value": round(nmi_score([labels[i] for i in known], assign[known].tolist()), 4)}


def nmi_score(a: list, b: list) -> float:
    """Normalized mutual information (arithmetic mean normalization, as scikit-learn's default)."""
    _, ai = np.unique(np.asarray(a, dtype=object).astype(str), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    n = len(ai)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    pij = joint / n
    pa_, pb = pij.sum(axis=1), pij.sum(axis=0)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pa_[:, None] * pb[None, :])[nz])).sum())
    ha = float(-(pa_[pa_ > 0] * np.log(pa_[pa_ > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return mi / ((ha + hb) / 2) if ha + hb > 0 else 1.0
