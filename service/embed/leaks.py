"""Leaks across sets: the images of one embedding folder (B, say a test split) that are exact or near duplicates
of images in another (A, the training split).

    emb_b/curation/leaks.parquet     id (in B), path, id_a, path_a, similarity, kind: exact (the same bytes, by
                                     content hash) or near (cosine >= the threshold); B's ids with a leak, best first
    emb_b/curation/leaks_clean.txt   B's ids with no duplicate in A, one a line (the split to evaluate on)
    emb_b/curation/leaks.json        the summary: both folders, their generations, threshold, counts

The two folders must share the model, layer and preprocessing (their vectors would not compare otherwise). It
scales like ``dedup``: A goes into one FAISS index (exact up to ``--exact-limit``, IVF with exact re-ranking
beyond) and B is queried against it in blocks: never an n x m matrix. Exact copies are found by hash too, so a
copy the kNN lists missed (or an unreadable file copied as is) is still a leak.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from service.embed.calibrate import resolve_threshold
from service.embed.curate import (
    BLOCK,
    CURATION_DIR,
    EXACT_LIMIT,
    _bar,
    check_threshold,
    fill_missing_hashes,
    search_index,
)
from service.embed.errors import EmbedJobError
from service.embed.index import DEFAULT_THRESHOLD
from storage.folder import Manifest, load_rows, write_table
from storage.store import Store, as_store

LEAKS_FILE = "leaks.parquet"
CLEAN_FILE = "leaks_clean.txt"


def check_comparable(a: Manifest, b: Manifest, layer: str, shown_a: str, shown_b: str) -> None:
    """Refuse two folders whose vectors do not compare: another model, pooling or preprocessing, a layer one of
    them lacks."""
    for manifest, shown in ((a, shown_a), (b, shown_b)):
        if layer not in manifest.layers:
            raise EmbedJobError(f"{shown} has no layer {layer!r} (it has {', '.join(manifest.layers)}); pass --layer")
    diffs = a.same_vectors(b)
    if diffs:
        raise EmbedJobError(f"{shown_a} and {shown_b} were embedded differently (" + "; ".join(diffs) + "): their "
                            "vectors do not compare; embed both with the same model, layers and preprocessing")


def leaks(folder_a: str | Path | Store, folder_b: str | Path | Store, *, layer: str = "avgpool",
          threshold: float | None = None, k: int = 4, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None,
          progress: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find B's exact and near duplicates in A; write them into B's ``curation/``; returns the summary.
    ``threshold`` None: B's calibrated threshold (measured now on B's images where there is none; the two
    folders share the model, so it holds for the pair)."""
    check_threshold(threshold)
    if k < 1:
        raise EmbedJobError(f"--k must be >= 1, got {k}")
    a, b = as_store(folder_a, storage_options), as_store(folder_b, storage_options)
    if str(a) == str(b):
        raise EmbedJobError("the two folders are the same; `byol-embed dedup` finds duplicates inside one folder")
    manifest_a, manifest_b = Manifest.load(a), Manifest.load(b)
    check_comparable(manifest_a, manifest_b, layer, str(a), str(b))
    started = time.perf_counter()
    rows_a, rows_b = load_rows(a, manifest_a, layer), load_rows(b, manifest_b, layer)
    fill_missing_hashes(rows_a, manifest_a, a.options)
    fill_missing_hashes(rows_b, manifest_b, b.options)
    threshold, chosen = resolve_threshold(b, manifest_b, rows_b, layer, threshold, fallback=DEFAULT_THRESHOLD)
    found: dict[int, tuple[int, float, str]] = {}  # row in B -> (row in A, similarity, kind)
    if len(rows_a.vectors) and len(rows_b.vectors):
        index, info = search_index(rows_a.vectors, exact_limit=exact_limit, nprobe=nprobe)
        approximate = "nprobe" in info
        fetch = min(len(rows_a.vectors), k + (4 if approximate else 0))
        bar = _bar(len(rows_b.vectors), "leaks", progress)
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
    table = pa.table({
        "id": pa.array([rows_b.ids[r] for r in order], pa.string()),
        "path": pa.array([rows_b.paths[r] for r in order], pa.string()),
        "id_a": pa.array([rows_a.ids[found[r][0]] for r in order], pa.string()),
        "path_a": pa.array([rows_a.paths[found[r][0]] for r in order], pa.string()),
        "similarity": pa.array([found[r][1] for r in order], pa.float32()),
        "kind": pa.array([found[r][2] for r in order], pa.string()),
    })
    out = b.child(CURATION_DIR)
    write_table(out, LEAKS_FILE, table)
    out.write_text(CLEAN_FILE, "".join(i + "\n" for r, i in enumerate(rows_b.ids) if r not in found))
    exact = sum(1 for v in found.values() if v[2] == "exact")
    summary = {"a": str(a), "b": str(b), "layer": layer, "threshold": threshold, "threshold_from": chosen,
               "k": k, "generation": manifest_b.generation, "generation_a": manifest_a.generation,
               "images_a": len(rows_a.ids), "images_b": len(rows_b.ids), "leaks": len(found), "exact": exact,
               "near": len(found) - exact, "clean": len(rows_b.ids) - len(found),
               "leaked_fraction": round(len(found) / max(1, len(rows_b.ids)), 4), "search": info,
               "seconds": round(time.perf_counter() - started, 2)}
    out.write_text("leaks.json", json.dumps(summary, indent=1) + "\n")
    return summary
