"""A map of the set: ``byol-embed map EMB`` -> the ``map`` result (id, path, x, y, cluster for every image) and
the ``map_sample`` result: the points the page draws (all up to ``MAP_SAMPLE``, else an even sample), with the
folder's labels and quality flags already joined, so that the server reads one small table and joins nothing.
``byol-embed quality`` and ``labels`` join their new flags and labels into an existing sample (:func:`rejoin`).

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

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from curation.errors import CurationError
from curation.label_sources import read_labels, saved_spec
from curation.neighbours import kmeans, knn_of, pca
from curation.results import LABELS, MAP, MAP_POINTS, MAP_SAMPLE, QUALITY, ResultReader, write_result
from storage.folder import Manifest, load_rows
from storage.store import Store, as_store
from storage.vectors import l2_normalize

LANDMARKS = 5000
PCA_DIMS = 50


def default_clusters(n: int) -> int:
    return int(min(64, max(2, round(math.sqrt(n / 4)))))


def layout(points: np.ndarray, *, landmarks: int = LANDMARKS, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` float32 coordinates, scaled into [-1, 1]."""
    from sklearn.manifold import TSNE  # the embed extra; a second's import that no other command pays

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
        unit = l2_normalize(points)
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


def build_map(folder: str | Path | Store, *, layer: str | None = None, clusters: int | None = None,
              landmarks: int = LANDMARKS, labels_spec: str | None = None, progress: bool = False,
              storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the ``map`` and ``map_sample`` results; returns the summary (with the clusters' NMI against the
    labels, where the folder has labels)."""
    if clusters is not None and clusters < 2:
        raise CurationError(f"--clusters must be >= 2, got {clusters}")
    if landmarks < 10:
        raise CurationError(f"--landmarks must be >= 10, got {landmarks}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    layer = manifest.pick_layer(layer)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    n = len(rows.vectors)
    if n < 2:
        raise CurationError(f"a map needs at least 2 embedded images; {store} has {n}")
    ids = [rows.ids[int(r)] for r in rows.embedded]
    points = pca(rows.vectors, PCA_DIMS)
    clusters = clusters or default_clusters(n)
    assign = kmeans(points, clusters)
    xy = layout(points, landmarks=landmarks)
    summary: dict[str, Any] = {
        "layer": layer, "embedded": n, "clusters": int(assign.max()) + 1, "landmarks": min(n, landmarks),
        "method": "PCA-50, k-means (FAISS); t-SNE of landmarks, the rest placed by their 5 nearest landmarks",
        "generation": manifest.generation, "sample": min(n, MAP_SAMPLE)}
    nmi = _nmi_against_labels(store, manifest, ids, assign, labels_spec)
    if nmi is not None:
        summary["nmi"] = nmi
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_result(store, MAP, {"id": ids, "path": [rows.paths[int(r)] for r in rows.embedded], "x": xy[:, 0],
                              "y": xy[:, 1], "cluster": assign.astype(np.int32)}, None)
    shown = sample_rows(n)
    sample_ids = [ids[i] for i in shown]
    labels, flags = _joined(store, manifest, sample_ids, labels_spec)
    write_result(store, MAP_POINTS, {"id": sample_ids, "x": xy[shown, 0], "y": xy[shown, 1],
                                     "cluster": assign[shown].astype(np.int32), "label": labels, "flag": flags},
                 summary)
    return summary


def sample_rows(n: int, limit: int = MAP_SAMPLE) -> np.ndarray:
    """The rows the page draws: all up to ``limit``, else every ``ceil(n / limit)``-th."""
    return np.arange(0, n, max(1, -(-n // limit)))


def _joined(store: Store, manifest: Manifest, ids: list[str],
            spec: str | None = None) -> tuple[list[str | None] | None, list[str | None] | None]:
    """The labels (the ``labels`` result's, else the folder's label source) and the quality flags (the
    ``quality`` result's) of ``ids``; None where the folder has neither."""
    labels = None
    scored = ResultReader(store, LABELS)
    if scored.exists:
        table = scored.read(["id", "label"])
        by_id = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
        labels = [by_id.get(i) for i in ids]
    elif spec or saved_spec(store):
        labels = read_labels(store, manifest, spec, ids)[0]
    flags = None
    quality = ResultReader(store, QUALITY)
    if quality.exists:
        table = quality.read(["id", "reasons"])
        by_id = dict(zip(table.column("id").to_pylist(), table.column("reasons").to_pylist()))
        flags = [", ".join(by_id.get(i) or []) or None for i in ids]
    return labels, flags


def rejoin(folder: str | Path | Store, storage_options: dict[str, Any] | None = None) -> bool:
    """Join the folder's current labels and quality flags into its map sample (after ``labels`` or ``quality``);
    False where the folder has no map."""
    store = as_store(folder, storage_options)
    reader = ResultReader(store, MAP_POINTS)
    if not reader.exists:
        return False
    table = reader.read(["id", "x", "y", "cluster"])
    labels, flags = _joined(store, Manifest.load(store), table.column("id").to_pylist())
    write_result(store, MAP_POINTS, {**{name: table.column(name) for name in table.column_names}, "label": labels,
                                     "flag": flags}, None)
    return True


def _nmi_against_labels(store, manifest, ids, assign, spec) -> dict[str, Any] | None:
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
