"""Labels against the embedding: images whose neighbours disagree with their label, classes the embedding confuses,
and the outliers of each class.

    emb/curation/labels.parquet      id, path, label, suggested (the neighbours' label), score (how strongly the
                                     neighbourhood disagrees, 0..1), rank, class_outlier (1 - cosine to the class's
                                     mean) and its percentile within the class
    emb/curation/labels.json         the summary: classes, counts, the confused class pairs, the top suspects

Label sources (``--labels``: ``folders``, ``column:NAME`` or a CSV) are read by :mod:`curation.label_sources`.

The score. Every image's ``k`` (16) nearest neighbours (the same kNN graph as ``dedup``) vote for their labels, weighted by ``exp(cosine / TEMPERATURE)``, with the class frequencies as a prior
worth ``PRIOR`` votes: ``p(c)``. Votes are then taken again with each neighbour's vote weighted by how much its
own neighbours agree with its label (``ROUNDS`` times), so a cluster of flipped labels does not vouch for itself.
The score is ``1 - p(label)``; the suggestion ``argmax p``. Where the labels are a column of ids without any
label, those rows neither vote nor are scored. Memory is the kNN graph (n x k), never n x classes. Beyond
``EXACT_LIMIT`` vectors the IVF index's own cosines are used (no exact re-ranking: nothing is compared with a
threshold), which makes the kNN a fifth faster than dedup's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from curation.errors import CurationError
from curation.label_sources import read_labels
from curation.neighbours import EXACT_LIMIT, knn
from curation.results import LABELS, write_result
from storage.folder import Manifest, load_rows
from storage.store import Store, as_store

TEMPERATURE = 0.05
PRIOR = 1.0
ROUNDS = 2


def vote(sims: np.ndarray, nn: np.ndarray, y: np.ndarray, classes: int, *, temperature: float = TEMPERATURE,
         prior: float = PRIOR, rounds: int = ROUNDS) -> dict[str, np.ndarray]:
    """The neighbours' vote on each row's label (``y`` -1: unlabelled, no vote). A neighbour weighs
    ``exp((cosine - the nearest's cosine) / temperature)`` (the nearest 1) times, after the first round, how much
    its own neighbours agree with its label; the class frequencies are a prior worth ``prior`` such votes.

    Returns ``own`` (the probability of the row's label), ``suggested`` (the most probable label) and its
    probability, and ``confusion`` (classes x classes: the vote mass each class's rows give each class). Memory:
    a few (n, k) arrays, never (n, classes)."""
    n, k = nn.shape
    labelled = y >= 0
    freq = np.bincount(y[labelled], minlength=classes).astype(np.float64)
    freq = freq / max(freq.sum(), 1)
    ok = (nn >= 0) & labelled[np.maximum(nn, 0)]
    top = np.max(np.where(ok, sims, -np.inf), axis=1, keepdims=True)
    base = np.where(ok, np.exp((sims - np.where(np.isfinite(top), top, 0.0)) / temperature), 0.0)
    ny = np.where(ok, y[np.maximum(nn, 0)], -1)
    trust = np.ones(n)
    for _ in range(rounds):
        w = base * trust[np.maximum(nn, 0)]
        total = w.sum(axis=1) + prior
        # each candidate label's weight: the row's own label and each neighbour's
        own = ((w * (ny == y[:, None])).sum(axis=1) + prior * freq[np.maximum(y, 0)]) / total
        best_p = np.where(labelled, own, -1.0)
        best = y.copy()
        for j in range(k):
            label = ny[:, j]
            pj = ((w * (ny == label[:, None])).sum(axis=1) + prior * freq[np.maximum(label, 0)]) / total
            better = (label >= 0) & (pj > best_p)
            best_p = np.where(better, pj, best_p)
            best = np.where(better, label, best)
        prior_best = int(np.argmax(freq))  # a row with no labelled neighbour: the prior's class
        best = np.where(best < 0, prior_best, best)
        best_p = np.where(best_p < 0, freq[prior_best], best_p)
        trust = np.where(labelled, own, 0.0)
    share = w / total[:, None]
    keep = labelled[:, None] & (ny >= 0)
    cells = (np.broadcast_to(y[:, None], ny.shape)[keep] * classes + ny[keep])
    confusion = np.bincount(cells, weights=share[keep], minlength=classes * classes).reshape(classes, classes)
    return {"own": np.where(labelled, own, np.nan), "suggested": best, "suggested_p": best_p, "confusion": confusion}


def labels(folder: str | Path | Store, *, spec: str | None = None, layer: str | None = None, k: int = 16,
           exact_limit: int | None = None, nprobe: int | None = None, progress: bool = False,
           storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every labelled image; write the ``labels`` result; returns the summary."""
    if k < 1:
        raise CurationError(f"--k must be >= 1, got {k}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    layer = manifest.pick_layer(layer)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    ids = [rows.ids[int(r)] for r in rows.embedded]
    given, spec = read_labels(store, manifest, spec, ids)
    names = sorted({g for g in given if g is not None})
    if len(names) < 2:
        raise CurationError(f"the labels ({spec}) name {len(names)} class(es); scoring needs at least 2")
    code = {name: c for c, name in enumerate(names)}
    y = np.array([code[g] if g is not None else -1 for g in given], np.int64)
    vectors = rows.vectors
    # the index's own cosines beyond exact_limit: the vote weighs neighbours, no threshold is crossed
    sims, nn, info = knn(vectors, k, exact_limit=exact_limit or EXACT_LIMIT, nprobe=nprobe, rerank=False,
                         progress=progress)
    voted = vote(sims, nn, y, len(names))
    labelled = y >= 0
    score = (1.0 - voted["own"]).astype(np.float32)
    suggested = voted["suggested"]
    # each class's outliers: 1 - cosine to its mean direction, ranked within the class
    class_outlier = np.full(len(y), np.nan, np.float32)
    class_pct = np.full(len(y), np.nan, np.float32)
    for c in range(len(names)):
        members = np.flatnonzero(y == c)
        mean = vectors[members].mean(axis=0)
        mean /= max(np.linalg.norm(mean), 1e-12)
        d = 1.0 - vectors[members] @ mean
        class_outlier[members] = d
        order = np.argsort(-d, kind="stable")
        class_pct[members[order]] = 100.0 * (1.0 - np.arange(len(members)) / len(members))
    # confusion: the probability mass each class's images give to each other class
    mass = voted["confusion"]
    sizes = np.bincount(y[labelled], minlength=len(names)).astype(np.float64)
    pairs = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            share = (mass[a, b] + mass[b, a]) / max(sizes[a] + sizes[b], 1)
            pairs.append({"a": names[a], "b": names[b], "share": round(float(share), 4),
                          "a_as_b": round(float(mass[a, b]), 1), "b_as_a": round(float(mass[b, a]), 1)})
    pairs.sort(key=lambda d: -d["share"])
    ranking = np.lexsort((np.arange(len(y)), -np.nan_to_num(score, nan=-1.0)))
    rank = np.empty(len(y), np.int64)
    rank[ranking] = np.arange(1, len(y) + 1)
    disagree = int(((suggested != y) & labelled).sum())
    summary = {"labels": spec, "layer": layer, "k": k, "generation": manifest.generation, "images": len(rows.ids),
               "labelled": int(labelled.sum()), "classes": len(names), "disagreeing": disagree,
               "confused_pairs": pairs[:20], "search": info, "seconds": round(time.perf_counter() - started, 2)}
    write_result(store, LABELS, {
        "id": [ids[i] for i in ranking], "path": [rows.paths[int(rows.embedded[i])] for i in ranking],
        "label": [given[i] for i in ranking], "suggested": [names[suggested[i]] for i in ranking],
        "score": score[ranking], "rank": rank[ranking], "class_outlier": class_outlier[ranking],
        "class_outlier_percentile": class_pct[ranking]}, summary)
    top = [{"id": ids[i], "label": given[i], "suggested": names[suggested[i]], "score": round(float(score[i]), 4)}
           for i in ranking[:10] if labelled[i]]
    return {**summary, "top": top}
