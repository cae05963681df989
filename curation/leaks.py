"""Leaks across sets: the images of one embedding folder (B, say a test split) that are exact or near duplicates
of images in another (A, the training split).

    emb_b/curation/leaks.parquet     id (in B), path, id_a, path_a, similarity, kind: exact (the same bytes, by
                                     content hash) or near (cosine >= the threshold), locator_a (where A's image's
                                     bytes are); B's ids with a leak, best first
    emb_b/curation/leaks_clean.txt   B's ids with no duplicate in A, one a line (the split to evaluate on)
    emb_b/curation/leaks.json        the summary: both folders, their generations, threshold, counts

The two folders must share the model, layer and preprocessing (their vectors would not compare otherwise). It
scales like ``dedup``: A goes into one FAISS index (exact up to ``--exact-limit``, IVF with exact re-ranking
beyond) and B is queried against it in blocks: never an n x m matrix. Exact copies are found by hash too, so a
copy the kNN lists missed (or an unreadable file copied as is) is still a leak.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from curation.calibration import Embedder, check_threshold, resolve_threshold
from curation.errors import CurationError
from curation.hashes import fill_missing_hashes
from curation.neighbours import BLOCK, EXACT_LIMIT, search_index
from curation.progress import bar as progress_bar
from curation.results import LEAKS, write_list, write_result
from storage.folder import Manifest, load_rows, read_columns
from storage.store import Store, as_store


def check_comparable(a: Manifest, b: Manifest, layer: str, shown_a: str, shown_b: str) -> None:
    """Refuse two folders whose vectors do not compare: another model, pooling or preprocessing, a layer one of
    them lacks."""
    for manifest, shown in ((a, shown_a), (b, shown_b)):
        if layer not in manifest.layers:
            raise CurationError(f"{shown} has no layer {layer!r} (it has {', '.join(manifest.layers)}); pass --layer")
    diffs = a.same_vectors(b)
    if diffs:
        raise CurationError(f"{shown_a} and {shown_b} were embedded differently (" + "; ".join(diffs) + "): their "
                            "vectors do not compare; embed both with the same model, layers and preprocessing")


def leaks(folder_a: str | Path | Store, folder_b: str | Path | Store, *, layer: str | None = None,
          threshold: float | None = None, k: int = 4, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None,
          model: Embedder | None = None, progress: bool = False,
          storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find B's exact and near duplicates in A; write them into B's ``curation/``; returns the summary.
    ``threshold`` None: B's calibrated threshold (measured now on B's images with ``model``, the folders' shared
    model, where there is none; without a model the fixed default, said so)."""
    check_threshold(threshold)
    if k < 1:
        raise CurationError(f"--k must be >= 1, got {k}")
    a, b = as_store(folder_a, storage_options), as_store(folder_b, storage_options)
    if str(a) == str(b):
        raise CurationError("the two folders are the same; `byol-embed dedup` finds duplicates inside one folder")
    manifest_a, manifest_b = Manifest.load(a), Manifest.load(b)
    layer = layer or manifest_b.pick_layer(None)  # an asked layer is checked in both folders below
    check_comparable(manifest_a, manifest_b, layer, str(a), str(b))
    started = time.perf_counter()
    rows_a, rows_b = load_rows(a, manifest_a, layer), load_rows(b, manifest_b, layer)
    fill_missing_hashes(rows_a, a, manifest_a)
    fill_missing_hashes(rows_b, b, manifest_b)
    threshold, chosen = resolve_threshold(b, manifest_b, rows_b, layer, threshold, model=model)
    found: dict[int, tuple[int, float, str]] = {}  # row in B -> (row in A, similarity, kind)
    if len(rows_a.vectors) and len(rows_b.vectors):
        index, info = search_index(rows_a.vectors, exact_limit=exact_limit, nprobe=nprobe)
        approximate = "nprobe" in info
        fetch = min(len(rows_a.vectors), k + (4 if approximate else 0))
        bar = progress_bar(len(rows_b.vectors), "leaks", progress)
        for start in range(0, len(rows_b.vectors), BLOCK):
            queries = rows_b.vectors[start:start + BLOCK]
            sims, nn = index.search(queries, fetch)
            if approximate:  # exact cosines of the candidates
                sims = np.einsum("qd,qkd->qk", queries, rows_a.vectors[np.maximum(nn, 0)])
            sims = np.where(nn < 0, -np.inf, sims)
            best = np.argmax(sims, axis=1)
            top = sims[np.arange(len(queries)), best]
            for q in np.flatnonzero(top >= threshold):
                found[int(rows_b.embedded[start + q])] = (int(rows_a.embedded[nn[q, best[q]]]), float(top[q]), "near")
            if bar:
                bar.update(len(queries))
        if bar:
            bar.close()
    else:
        info = {"index": "none (a folder has no embedded rows)"}
    by_hash: dict[str, int] = {}
    for row, digest in enumerate(rows_a.sha256):
        if digest is not None:
            by_hash.setdefault(digest, row)
    for row, digest in enumerate(rows_b.sha256):
        if digest is not None and digest in by_hash:
            found[row] = (by_hash[digest], 1.0, "exact")
    order = sorted(found, key=lambda r: (found[r][2] != "exact", -found[r][1], r))
    locators = read_columns(a, manifest_a, ("locator",)).column("locator")  # where A's images are (thumbnails)
    exact = sum(1 for v in found.values() if v[2] == "exact")
    summary = {"a": str(a), "b": str(b), "layer": layer, "threshold": threshold, "threshold_from": chosen,
               "k": k, "generation": manifest_b.generation, "generation_a": manifest_a.generation,
               "images_a": len(rows_a.ids), "images_b": len(rows_b.ids), "leaks": len(found), "exact": exact,
               "near": len(found) - exact, "clean": len(rows_b.ids) - len(found),
               "leaked_fraction": round(len(found) / max(1, len(rows_b.ids)), 4), "search": info,
               "seconds": round(time.perf_counter() - started, 2)}
    write_result(b, LEAKS, {
        "id": [rows_b.ids[r] for r in order], "path": [rows_b.paths[r] for r in order],
        "id_a": [rows_a.ids[found[r][0]] for r in order], "path_a": [rows_a.paths[found[r][0]] for r in order],
        "similarity": np.array([found[r][1] for r in order], np.float32), "kind": [found[r][2] for r in order],
        "locator_a": locators.take([found[r][0] for r in order])}, None)
    write_list(b, LEAKS.lists[0], [i for r, i in enumerate(rows_b.ids) if r not in found])
    write_result(b, LEAKS, None, summary)
    return summary
