"""Curation of an embedding folder: exact and near duplicates, outliers and broken images, in bounded memory.

    emb/curation/duplicates.parquet     group, id, path, representative, similarity (to it), kind: exact (the same
                                        bytes as another member of the group) or near
    emb/curation/outliers.parquet       id, path, score (1 - mean cosine to the k nearest non-duplicates),
                                        percentile, rank, kind embedded|no content|broken,
                                        reasons (the quality flags that say "no picture"), error
    emb/curation/calibration.json       the near-duplicate threshold measured on the folder's own images
                                        (service/embed/calibrate.py): dedup's and leaks' default
    emb/curation/nn_similarity.json     the histogram of nearest-neighbour cosines (to choose a threshold)
    emb/curation/duplicates.json, outliers.json   each result's summary, with the folder's generation it was made
                                        from (a later generation makes it stale: the page and the API say so)
    emb/curation/keep.txt, remove.txt   with --write-lists: representatives + singletons, and the rest

Near duplicates come from a kNN graph over one layer (cosine on L2-normalized vectors; FAISS: exact
``IndexFlatIP`` up to ``EXACT_LIMIT`` vectors, an ``IVF,SQ8`` index beyond whose candidates are re-ranked by their
exact cosines),
queried in blocks, so nothing n x n is ever built. Edges with cosine >= T (T: the folder's calibrated threshold,
or --threshold) are joined by union-find; then no chaining (fastdup#302: pairs at 0.82 inside a 0.97 component):
each component is cut into groups whose members are all >= T to each other (:func:`near_groups`). The result is
deterministic for the same folder and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from service.embed.calibrate import DEFAULT_PRECISION, DEFAULT_SAMPLE, calibration_for, resolve_threshold
from service.embed.errors import EmbedJobError
from service.embed.index import DEFAULT_THRESHOLD, TRAIN_PER_LIST, faiss_module
from storage.folder import Manifest, Rows, load_rows, write_table
from storage.sources import open_source
from storage.store import as_store

logger = logging.getLogger(__name__)

CURATION_DIR = "curation"
DUPLICATES_FILE = "duplicates.parquet"
OUTLIERS_FILE = "outliers.parquet"
HISTOGRAM_FILE = "nn_similarity.json"
EXACT_LIMIT = 50_000  # exact kNN up to this many vectors; IVF beyond
BLOCK = 4096  # queries per FAISS call


def fill_missing_hashes(rows: Rows, manifest: Manifest, storage_options: dict[str, Any] | None = None) -> int:
    """Folders written before ``run`` recorded hashes: read those images again from the manifest's input."""
    missing = [i for i, d in enumerate(rows.sha256) if d is None and rows.errors[i] is None]
    if not missing:
        return 0
    source = open_source(manifest.input, **manifest.source_options, storage_options=storage_options)
    position = source.positions()
    for i in missing:
        j = position.get(rows.ids[i])
        if j is None:
            continue
        try:
            rows.sha256[i] = hashlib.sha256(source.read(j)).hexdigest()
        except OSError:
            pass
    return len(missing)


def choose_nprobe(nlist: int) -> int:
    """IVF lists probed per query: 16 (near duplicates sit in the same list or a neighbouring one; measured recall
    of planted duplicate pairs against exact search in benchmarks/curate.py)."""
    return min(nlist, 16)


def search_index(vectors: np.ndarray, *, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None,
                 seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over ``vectors`` (L2-normalized, cosine): exact ``IndexFlatIP`` up to ``exact_limit`` rows,
    else ``IVF<4·sqrt(n)>,SQ8`` trained on a sample (its candidates are to be re-ranked exactly by the caller)."""
    faiss = faiss_module()
    n, dim = vectors.shape
    if n <= exact_limit:
        index = faiss.IndexFlatIP(dim)
        info: dict[str, Any] = {"index": "Flat (exact)"}
    else:
        nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, size=min(n, nlist * TRAIN_PER_LIST), replace=False))]
        index.cp.seed = seed
        index.train(sample)
        del sample
        index.nprobe = nprobe or choose_nprobe(nlist)
        info = {"index": f"IVF{nlist},SQ8 + exact re-ranking", "nprobe": index.nprobe}
    for start in range(0, n, 65536):
        index.add(vectors[start:start + 65536])
    return index, info


def knn(vectors: np.ndarray, k: int, *, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None, seed: int = 0,
        rerank: bool = True, progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``k`` nearest neighbours of every row, itself left out: cosines ``(n, k)`` float32 (descending) and
    rows ``(n, k)`` int64 (-1 where there are fewer). Queries go in blocks.

    Up to ``exact_limit`` rows: exact (``IndexFlatIP``, which holds a copy of the matrix). Beyond: candidates from
    an ``IVF<4·sqrt(n)>,SQ8`` index (one byte a dimension, a quarter of the matrix), then every candidate's cosine
    computed again exactly from the float32 vectors and the lists re-sorted, so the similarities written are
    exact and the peak memory stays near the matrix itself. ``rerank=False`` keeps the index's own cosines (one
    byte a dimension: about 0.01 off), for uses that weigh neighbours rather than compare them with a threshold
    (the label vote): it skips gathering every candidate's vector again, most of the time beyond ``exact_limit``."""
    n = len(vectors)
    k = max(1, min(k, n - 1)) if n > 1 else 1
    index, info = search_index(vectors, exact_limit=exact_limit, nprobe=nprobe, seed=seed)
    approximate = "nprobe" in info
    rerank = rerank and approximate
    fetch = k + 1 + (4 if rerank else 0)  # a few spare candidates for the re-ranking
    sims = np.empty((n, k), np.float32)
    rows = np.empty((n, k), np.int64)
    bar = _bar(n, "kNN graph", progress)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        d, i = index.search(vectors[start:stop], fetch)
        i = np.where(i == np.arange(start, stop)[:, None], -1, i)  # each query's own row is no neighbour
        if rerank:  # exact cosines of the candidates, from the float32 vectors
            d = np.einsum("qd,qkd->qk", vectors[start:stop], vectors[np.maximum(i, 0)])
        d = np.where(i < 0, -np.inf, d)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        sims[start:stop] = np.take_along_axis(d, order, axis=1)
        rows[start:stop] = np.take_along_axis(i, order, axis=1)
        if bar:
            bar.update(stop - start)
    if bar:
        bar.close()
    sims[rows < 0] = -1.0
    return sims, rows, info


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smaller row is the root: deterministic


def _split_by_component(edges: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The connected components of an edge list ``(m, 2)``: ``(members sorted, their edges)`` for each, in
    O(m log m) (edges are sorted by component, never scanned once per component)."""
    nodes = np.unique(edges)
    local = np.searchsorted(nodes, edges)
    uf = _UnionFind(len(nodes))
    for a, b in local.tolist():
        uf.union(a, b)
    labels = np.fromiter((uf.find(i) for i in range(len(nodes))), np.int64, len(nodes))
    node_order = np.argsort(labels, kind="stable")
    _, node_starts = np.unique(labels[node_order], return_index=True)
    edge_labels = labels[local[:, 0]]
    edge_order = np.argsort(edge_labels, kind="stable")
    _, edge_starts = np.unique(edge_labels[edge_order], return_index=True)
    node_groups = np.split(nodes[node_order], node_starts[1:])
    edge_groups = np.split(edges[edge_order], edge_starts[1:])
    return [(np.sort(m), e) for m, e in zip(node_groups, edge_groups)]


def near_groups(vectors: np.ndarray, sims: np.ndarray, rows: np.ndarray, threshold: float) -> list[tuple[int, np.ndarray]]:
    """Groups of rows, each ``(representative, members)``, from the kNN graph's edges at ``threshold``: every two
    members of a group are >= ``threshold`` to each other (no chaining, whatever the model).

    Each connected component is cut into cliques, greedily: its representative is the member with the most edges
    (then the first in the folder's order); the members >= ``threshold`` to it join in order of their cosine to it,
    each only if it is >= ``threshold`` to every member already in; the rest are split into components by their own
    edges and grouped again the same way."""
    q, j = np.nonzero((sims >= threshold) & (rows >= 0))
    if len(q) == 0:
        return []
    a, b = q, rows[q, j]
    edges = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    result: list[tuple[int, np.ndarray]] = []
    pending = _split_by_component(edges) if len(edges) else []
    while pending:
        members, inside = pending.pop()
        degree = np.bincount(np.searchsorted(members, inside.ravel()), minlength=len(members))
        rep = int(members[np.lexsort((members, -degree))[0]])  # most edges, then the first in the folder
        group = _clique_around(vectors, members, rep, threshold)
        if len(group) > 1:
            result.append((rep, group))
        rest = np.setdiff1d(members, group, assume_unique=True)
        if len(rest) > 1:
            sub = inside[np.isin(inside[:, 0], rest) & np.isin(inside[:, 1], rest)]
            if len(sub):
                pending += _split_by_component(sub)
    return sorted(result, key=lambda g: int(g[1][0]))


def _clique_around(vectors: np.ndarray, members: np.ndarray, rep: int, threshold: float) -> np.ndarray:
    """``rep`` and the members that are, greedily in order of their cosine to it, >= ``threshold`` to every member
    taken before them (sorted rows)."""
    to_rep = vectors[members] @ vectors[rep]
    candidates = members[(to_rep >= threshold) & (members != rep)]
    if len(candidates) == 0:
        return np.asarray([rep])
    cand_sims = vectors[candidates] @ vectors[rep]
    order = np.lexsort((candidates, -cand_sims))
    candidates = candidates[order]
    cand_vectors = vectors[candidates]
    still = np.ones(len(candidates), bool)  # >= threshold to every member taken so far
    taken = [rep]
    for pos in range(len(candidates)):
        if not still[pos]:
            continue
        taken.append(int(candidates[pos]))
        still[pos] = False
        still[pos + 1:] &= cand_vectors[pos + 1:] @ cand_vectors[pos] >= threshold
    return np.sort(np.asarray(taken))


def knn_of(base: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosines of ``queries`` against every row of ``base`` (both L2-normalized), through ``base``
    in blocks (each block's best ``k`` by a partial sort, then merged): ``(q, k)`` similarities (descending) and
    rows."""
    k = min(k, len(base))
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(base), block):
        s = queries @ base[start:start + block].T
        if s.shape[1] > k:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, i = np.take_along_axis(s, part, axis=1), part + start
        else:
            i = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i], axis=1)
        top = np.lexsort((i, -s), axis=1)[:, :k]  # by cosine, then by row: deterministic
        best_s, best_i = np.take_along_axis(s, top, axis=1), np.take_along_axis(i, top, axis=1)
    return best_s, best_i


def histogram(nearest: np.ndarray, bins: int = 50) -> dict[str, Any]:
    """The nearest-neighbour cosine histogram over [0, 1] (negative cosines in the first bin)."""
    counts, edges = np.histogram(np.clip(nearest, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    quantiles = np.quantile(nearest, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]) if len(nearest) else []
    return {"bins": [round(float(e), 4) for e in edges], "counts": counts.tolist(),
            "quantiles": {q: round(float(v), 4) for q, v in zip(("1%", "5%", "25%", "50%", "75%", "95%", "99%"),
                                                                 quantiles)}}


def format_histogram(hist: dict[str, Any], lo: float = 0.5, width: int = 40) -> str:
    """The upper part of the histogram as text bars, two bins a line."""
    edges, counts = hist["bins"], hist["counts"]
    lines, pairs = [], []
    for i in range(len(counts)):
        if edges[i] >= lo - 1e-9:
            pairs.append((edges[i], edges[i + 1], counts[i]))
    merged = [(pairs[i][0], pairs[min(i + 1, len(pairs) - 1)][1], sum(p[2] for p in pairs[i:i + 2]))
              for i in range(0, len(pairs), 2)]
    top = max((m[2] for m in merged), default=0) or 1
    below = sum(c for e, c in zip(edges, counts) if e < lo - 1e-9)
    lines.append(f"  < {lo:.2f}       {below:>9}")
    for a, b, c in merged:
        lines.append(f"  {a:.2f}-{b:.2f}  {c:>9}  {'#' * max(1 if c else 0, round(width * c / top))}")
    return "\n".join(lines)


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise EmbedJobError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")


def dedup(folder: str | Path, *, layer: str = "avgpool", threshold: float | None = None, k: int = 16,
          write_lists: bool = False, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None,
          precision: float = DEFAULT_PRECISION, sample: int = DEFAULT_SAMPLE, progress: bool = False,
          storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find exact and near-duplicate groups in ``folder``; write ``curation/duplicates.parquet``; returns the
    summary (also written into ``curation/duplicates.json``). ``threshold`` None: the folder's calibrated one
    (:mod:`service.embed.calibrate`, measured now where there is none)."""
    check_threshold(threshold)
    if k < 1:
        raise EmbedJobError(f"--k must be >= 1, got {k}")
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    started = time.perf_counter()
    rows = load_rows(folder, manifest, layer)
    recomputed = fill_missing_hashes(rows, manifest, folder.options)
    threshold, chosen = resolve_threshold(folder, manifest, rows, layer, threshold, precision=precision, sample=sample,
                                          fallback=DEFAULT_THRESHOLD)
    n = len(rows.vectors)
    sims, nn, info = knn(rows.vectors, k, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    groups = near_groups(rows.vectors, sims, nn, threshold) if n > 1 else []
    # exact duplicates (same bytes): joined by hash after, so that they are one group even where a kNN list was
    # too short to hold every copy (more than k identical images)
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(rows.sha256):
        if digest is not None:
            by_hash.setdefault(digest, []).append(i)
    records: list[dict[str, Any]] = []
    grouped: dict[int, dict[str, Any]] = {}  # row -> its record
    group_no = 0
    for rep, members in groups:
        rep_row = int(rows.embedded[rep])
        member_rows = [int(rows.embedded[m]) for m in members]
        hashes = [rows.sha256[r] for r in member_rows]
        copies = Counter(hashes)
        for m, row, digest in zip(members, member_rows, hashes):
            # exact: the same bytes as another member of the group (a file copy), near: similar pixels only
            same = digest is not None and copies[digest] > 1
            records.append({"group": group_no, "row": row, "representative": rep_row,
                            "similarity": float(rows.vectors[m] @ rows.vectors[rep]), "kind": "exact" if same else "near"})
            grouped[row] = records[-1]
        group_no += 1
    for same in sorted(by_hash.values(), key=lambda rows_: rows_[0]):
        left = [r for r in same if r not in grouped]
        if len(same) < 2 or not left:
            continue
        anchor = next((grouped[r] for r in same if r in grouped), None)
        if anchor is not None:  # copies the kNN lists missed join their copy's group
            for r in left:
                records.append({"group": anchor["group"], "row": r, "representative": anchor["representative"],
                                "similarity": 1.0, "kind": "exact"})
                grouped[r] = records[-1]
        elif len(left) > 1:  # identical bytes only (e.g. identical broken files)
            for r in left:
                records.append({"group": group_no, "row": r, "representative": left[0], "similarity": 1.0,
                                "kind": "exact"})
                grouped[r] = records[-1]
            group_no += 1
    records.sort(key=lambda r: (r["group"], r["row"] != r["representative"], r["row"]))
    table = pa.table({
        "group": pa.array([r["group"] for r in records], pa.int64()),
        "id": pa.array([rows.ids[r["row"]] for r in records], pa.string()),
        "path": pa.array([rows.paths[r["row"]] for r in records], pa.string()),
        "representative": pa.array([rows.ids[r["representative"]] for r in records], pa.string()),
        "similarity": pa.array([r["similarity"] for r in records], pa.float32()),
        "kind": pa.array([r["kind"] for r in records], pa.string()),
    })
    out = folder.child(CURATION_DIR)
    write_table(out, DUPLICATES_FILE, table)
    nearest = sims[:, 0] if n > 1 else np.zeros(0, np.float32)
    hist = histogram(nearest)
    remove = {r["row"] for r in records if r["row"] != r["representative"]}  # all but each group's representative
    summary = {"layer": layer, "threshold": threshold, "threshold_from": chosen, "k": k,
               "generation": manifest.generation, "images": len(rows.ids), "embedded": n,
               "groups": group_no, "in_groups": len(records), "removable": len(remove),
               "exact_copies": sum(1 for r in records if r["kind"] == "exact" and r["row"] in remove),
               "hashes_recomputed": recomputed, "search": info, "seconds": round(time.perf_counter() - started, 2)}
    out.write_text(HISTOGRAM_FILE, json.dumps({"layer": layer, **hist}, indent=1) + "\n")
    out.write_text("duplicates.json", json.dumps(summary, indent=1) + "\n")
    if write_lists:
        out.write_text("remove.txt", "".join(rows.ids[i] + "\n" for i in sorted(remove)))
        out.write_text("keep.txt", "".join(rows.ids[i] + "\n" for i in range(len(rows.ids)) if i not in remove))
    summary["histogram"] = hist
    return summary


def outliers(folder: str | Path, *, layer: str = "avgpool", k: int = 10, threshold: float | None = None,
             exact_limit: int = EXACT_LIMIT, nprobe: int | None = None, progress: bool = False,
             storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every embedded image: 1 - mean cosine to its ``k`` nearest neighbours that are not its own
    duplicates (cosine >= ``threshold``, default the folder's calibrated one). A weak model can put an image with
    no picture in it (a flat field, noise, text) among the most typical; so images whose pixels say so (the quality
    flags ``low information`` and ``noise``, measured from the pixels, whatever the model) come first, with their
    reason. Error rows are listed as broken. Writes ``curation/outliers.parquet``, most outlying first."""
    from service.embed.quality import content_flags

    check_threshold(threshold)
    if k < 1:
        raise EmbedJobError(f"--k must be >= 1, got {k}")
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    rows = load_rows(folder, manifest, layer)
    if threshold is None:
        entry = calibration_for(folder, manifest, layer)
        threshold = float(entry["threshold"]) if entry else DEFAULT_THRESHOLD
    n = len(rows.vectors)
    slack = 8  # neighbours fetched beyond k, to leave duplicates out and still have k
    sims, nn, info = knn(rows.vectors, k + slack, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    valid = (nn >= 0) & (sims < threshold)
    # the first k valid neighbours of each row
    order = np.cumsum(valid, axis=1)
    take = valid & (order <= k)
    counts = take.sum(axis=1)
    mean = np.where(counts > 0, (sims * take).sum(axis=1) / np.maximum(counts, 1), np.nan)
    score = (1.0 - mean).astype(np.float32)
    embedded_ids = [rows.ids[int(r)] for r in rows.embedded]
    flags = content_flags(folder, manifest, embedded_ids)
    flagged = np.array([i in flags for i in embedded_ids], bool)
    ranking = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf), ~flagged))
    percentile = np.empty(n, np.float32)
    by_score = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    percentile[by_score] = 100.0 * (1.0 - np.arange(n) / max(n, 1))
    broken = [i for i, e in enumerate(rows.errors) if e is not None]
    table = pa.table({
        "id": pa.array([embedded_ids[i] for i in ranking] + [rows.ids[i] for i in broken], pa.string()),
        "path": pa.array([rows.paths[int(rows.embedded[i])] for i in ranking] + [rows.paths[i] for i in broken],
                         pa.string()),
        "score": pa.array(np.concatenate([score[ranking], np.full(len(broken), np.nan, np.float32)]), pa.float32()),
        "percentile": pa.array(np.concatenate([percentile[ranking], np.full(len(broken), np.nan, np.float32)]),
                               pa.float32()),
        "rank": pa.array(list(range(1, n + 1)) + [None] * len(broken), pa.int64()),
        "kind": pa.array(["no content" if flagged[i] else "embedded" for i in ranking] + ["broken"] * len(broken),
                         pa.string()),
        "reasons": pa.array([flags.get(embedded_ids[i], []) for i in ranking] + [[]] * len(broken),
                            pa.list_(pa.string())),
        "error": pa.array([None] * n + [rows.errors[i] for i in broken], pa.string()),
    })
    out = folder.child(CURATION_DIR)
    write_table(out, OUTLIERS_FILE, table)
    top = [{"id": embedded_ids[i], "score": round(float(score[i]), 4), "reasons": flags.get(embedded_ids[i], [])}
           for i in ranking[:10]]
    summary = {"layer": layer, "k": k, "threshold": threshold, "generation": manifest.generation,
               "images": len(rows.ids), "embedded": n, "no_content": int(flagged.sum()), "broken": len(broken),
               "scoring": "no-content quality flags first, then 1 - mean cosine to the k nearest non-duplicates", "search": info}
    out.write_text("outliers.json", json.dumps(summary, indent=1) + "\n")
    return {**summary, "top": top, "broken_ids": [rows.ids[i] for i in broken][:10]}


def _bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
