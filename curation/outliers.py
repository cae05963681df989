"""The most unusual images of a folder, and the broken ones: ``byol-embed outliers EMB``.

Score = 1 - mean cosine to the ``k`` nearest neighbours that are not the image's own duplicates (cosine >= the
folder's calibrated threshold). A weak model can put an image with no picture in it (a flat field, noise, text)
among the most typical; so images whose pixels say so (the quality flags ``low information`` and ``noise``,
measured from the pixels, whatever the model) come first, as kind ``no content`` with their reasons. Error rows are
listed last as ``broken``. Written as the ``outliers`` result (curation/results.py), most outlying first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation.calibration import DEFAULT_THRESHOLD, calibration_for, check_threshold
from curation.errors import CurationError
from curation.neighbours import EXACT_LIMIT, knn
from curation.quality import content_flags
from curation.results import OUTLIERS, write_result
from storage.folder import Manifest, load_rows
from storage.store import Store, as_store

SLACK = 8  # neighbours fetched beyond k, to leave duplicates out and still have k


def outliers(folder: str | Path | Store, *, layer: str | None = None, k: int = 10, threshold: float | None = None,
             exact_limit: int = EXACT_LIMIT, nprobe: int | None = None, progress: bool = False,
             storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every embedded image; write the ``outliers`` result; returns the summary with the top 10."""
    check_threshold(threshold)
    if k < 1:
        raise CurationError(f"--k must be >= 1, got {k}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    layer = manifest.pick_layer(layer)
    rows = load_rows(store, manifest, layer)
    if threshold is None:
        entry = calibration_for(store, manifest, layer)
        threshold = float(entry["threshold"]) if entry else DEFAULT_THRESHOLD
    n = len(rows.vectors)
    sims, nn, info = knn(rows.vectors, k + SLACK, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    valid = (nn >= 0) & (sims < threshold)
    take = valid & (np.cumsum(valid, axis=1) <= k)  # the first k valid neighbours of each row
    counts = take.sum(axis=1)
    mean = np.where(counts > 0, (sims * take).sum(axis=1) / np.maximum(counts, 1), np.nan)
    score = (1.0 - mean).astype(np.float32)
    embedded_ids = [rows.ids[int(r)] for r in rows.embedded]
    flags = content_flags(store, manifest, embedded_ids)
    flagged = np.array([i in flags for i in embedded_ids], bool)
    ranked_score = -np.nan_to_num(score, nan=-np.inf)
    ranking = np.lexsort((np.arange(n), ranked_score, ~flagged))
    percentile = np.empty(n, np.float32)
    percentile[np.argsort(ranked_score, kind="stable")] = 100.0 * (1.0 - np.arange(n) / max(n, 1))
    broken = [i for i, e in enumerate(rows.errors) if e is not None]
    nothing = np.full(len(broken), np.nan, np.float32)
    summary = {"layer": layer, "k": k, "threshold": threshold, "generation": manifest.generation,
               "images": len(rows.ids), "embedded": n, "no_content": int(flagged.sum()), "broken": len(broken),
               "scoring": "no-content quality flags first, then 1 - mean cosine to the k nearest non-duplicates",
               "search": info}
    write_result(store, OUTLIERS, {
        "id": [embedded_ids[i] for i in ranking] + [rows.ids[i] for i in broken],
        "path": [rows.paths[int(rows.embedded[i])] for i in ranking] + [rows.paths[i] for i in broken],
        "score": np.concatenate([score[ranking], nothing]),
        "percentile": np.concatenate([percentile[ranking], nothing]),
        "rank": list(range(1, n + 1)) + [None] * len(broken),
        "kind": ["no content" if flagged[i] else "embedded" for i in ranking] + ["broken"] * len(broken),
        "reasons": [flags.get(embedded_ids[i], []) for i in ranking] + [[]] * len(broken),
        "error": [None] * n + [rows.errors[i] for i in broken]}, summary)
    top = [{"id": embedded_ids[i], "score": round(float(score[i]), 4), "reasons": flags.get(embedded_ids[i], [])}
           for i in ranking[:10]]
    return {**summary, "top": top, "broken_ids": [rows.ids[i] for i in broken][:10]}
