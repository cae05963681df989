"""Exact and near-duplicate groups of one folder, and which copy of each to keep: ``byol-embed dedup EMB``.

    emb/curation/duplicates.parquet        every member of every group (declared in curation/results.py)
    emb/curation/duplicate_groups.parquet  one row per group: its representative, the member kept, its size and
                                           where its members start in duplicates.parquet (the page reads a page of
                                           groups, then their members, never the whole table)
    emb/curation/duplicates.json           the summary, with the folder's generation it was made from
    emb/curation/nn_similarity.json        the histogram of nearest-neighbour cosines (to choose a threshold)
    emb/curation/remove.txt, keep.txt      with --write-lists: the copies that can go, and the rest

Near duplicates come from a kNN graph over one layer (:func:`curation.neighbours.knn`: exact up to
``EXACT_LIMIT`` vectors, IVF with exact re-ranking beyond), queried in blocks, so nothing n x n is ever built.
Edges with cosine >= T (T: the folder's calibrated threshold, :mod:`curation.calibration`, or --threshold) are
joined by union-find; then no chaining (fastdup#302: pairs at 0.82 inside a 0.97 component): each component is cut
into groups whose members are all >= T to each other (:func:`near_groups`). Byte copies (the same sha256) join
their copy's group, or form one of their own. The result is deterministic for the same folder and settings.

Which copy to keep (``--keep``): ``representative`` (the group's centre, the member with the most near-duplicate
edges), ``first`` (the first in the folder's order), ``largest`` (the most pixels), ``sharpest`` (the highest
sharpness statistic, fine over coarse detail: a blurred or upscaled copy has less) or ``oldest`` (the earliest
modification time in the input's listing). The statistics come from the shards' quality columns; where a group's
members lack what a rule needs (a folder embedded before the statistics existed, an object store whose listing
gives ETags rather than times), its first member is kept and the summary counts those groups.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.calibration import (
    DEFAULT_PRECISION,
    DEFAULT_SAMPLE,
    Embedder,
    check_calibration,
    check_threshold,
    resolve_threshold,
)
from curation.errors import CurationError
from curation.hashes import fill_missing_hashes, groups_by_hash
from curation.neighbours import EXACT_LIMIT, knn
from curation.quality import load_quality
from curation.results import DUPLICATE_GROUPS, DUPLICATES, NN_SIMILARITY, write_list, write_result
from storage.folder import QUALITY_STATS, Manifest, load_rows, read_columns
from storage.store import Store, as_store

KEEP_RULES = ("representative", "first", "largest", "sharpest", "oldest")


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


@dataclass
class Member:
    group: int
    row: int  # position among the folder's rows
    representative: int
    similarity: float
    kind: str


def _groups(rows, sims: np.ndarray, nn: np.ndarray, threshold: float) -> list[Member]:
    """Every member of every group, near groups from the kNN graph and byte copies joined by hash."""
    groups = near_groups(rows.vectors, sims, nn, threshold) if len(rows.vectors) > 1 else []
    members: list[Member] = []
    grouped: dict[int, Member] = {}
    number = 0
    for rep, vector_rows in groups:
        rep_row = int(rows.embedded[rep])
        member_rows = [int(rows.embedded[m]) for m in vector_rows]
        copies = Counter(rows.sha256[r] for r in member_rows)
        for m, row in zip(vector_rows, member_rows):
            digest = rows.sha256[row]
            # exact: the same bytes as another member of the group (a file copy); near: similar pixels only
            kind = "exact" if digest is not None and copies[digest] > 1 else "near"
            grouped[row] = Member(number, row, rep_row, float(rows.vectors[m] @ rows.vectors[rep]), kind)
            members.append(grouped[row])
        number += 1
    # exact duplicates joined by hash after, so that they are one group even where a kNN list was too short to hold
    # every copy (more than k identical images)
    for same in groups_by_hash(rows.sha256):
        left = [r for r in same if r not in grouped]
        if not left:
            continue
        anchor = next((grouped[r] for r in same if r in grouped), None)
        if anchor is not None:  # copies the kNN lists missed join their copy's group
            members += [Member(anchor.group, r, anchor.representative, 1.0, "exact") for r in left]
        elif len(left) > 1:  # identical bytes only (e.g. identical broken files)
            members += [Member(number, r, left[0], 1.0, "exact") for r in left]
            number += 1
        grouped.update({m.row: m for m in members[-len(left):]})
    members.sort(key=lambda m: (m.group, m.row != m.representative, m.row))
    return members


def _keep_scores(store: Store, manifest: Manifest, keep: str) -> np.ndarray | None:
    """Each row's score under ``keep`` (higher is kept; NaN: unknown), or None for the rules that need none."""
    if keep in ("representative", "first"):
        return None
    if keep == "oldest":
        versions = read_columns(store, manifest, ("version",)).column("version").to_pylist()
        return -np.array([_modified_ns(v) for v in versions], np.float64)
    stats = load_quality(store, manifest)[3]
    at = {name: i for i, name in enumerate(QUALITY_STATS)}
    if keep == "largest":
        return stats[:, at["width"]].astype(np.float64) * stats[:, at["height"]]
    return stats[:, at["sharpness"]].astype(np.float64)


def _modified_ns(version: str | None) -> float:
    """The modification time in a listing's version (``size:mtime_ns`` on local disk); NaN where it holds none
    (an ETag)."""
    if not version:
        return np.nan
    tag = version.split(":", 1)[-1].split("@", 1)[0].split("#", 1)[0]
    return float(tag) if tag.isdigit() and len(tag) >= 15 else np.nan


def _kept(members: list[Member], keep: str, scores: np.ndarray | None) -> tuple[dict[int, int], int]:
    """Each group's kept row, and how many groups fell back to their first member (the rule's statistic missing)."""
    by_group: dict[int, list[int]] = {}
    for m in members:
        by_group.setdefault(m.group, []).append(m.row)
    rep = {m.group: m.representative for m in members}
    kept, fallbacks = {}, 0
    for group, rows in by_group.items():
        if keep == "representative":
            kept[group] = rep[group]
            continue
        first = min(rows)
        if keep == "first":
            kept[group] = first
            continue
        values = scores[rows]
        if np.isnan(values).all():
            kept[group], fallbacks = first, fallbacks + 1
            continue
        best = np.nanmax(values)
        kept[group] = min(r for r, v in zip(rows, values) if v == best)  # ties: the first in the folder
    return kept, fallbacks


def dedup(folder: str | Path | Store, *, layer: str | None = None, threshold: float | None = None, k: int = 16,
          keep: str = "representative", write_lists: bool = False, exact_limit: int = EXACT_LIMIT,
          nprobe: int | None = None, model: Embedder | None = None, precision: float = DEFAULT_PRECISION,
          sample: int = DEFAULT_SAMPLE, progress: bool = False,
          storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find exact and near-duplicate groups in ``folder``, choose the copy of each to keep; write the results
    declared as ``duplicates`` and ``duplicate_groups``; returns the summary (with the histogram). ``threshold``
    None: the folder's calibrated one (measured now with ``model`` where there is none; without a model, the fixed
    default, said so in the summary)."""
    check_threshold(threshold)
    check_calibration(precision, sample)
    if k < 1:
        raise CurationError(f"--k must be >= 1, got {k}")
    if keep not in KEEP_RULES:
        raise CurationError(f"--keep {keep!r}: accepted {', '.join(KEEP_RULES)}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    layer = manifest.pick_layer(layer)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    recomputed = fill_missing_hashes(rows, store, manifest)
    threshold, chosen = resolve_threshold(store, manifest, rows, layer, threshold, model=model, precision=precision,
                                          sample=sample)
    n = len(rows.vectors)
    sims, nn, info = knn(rows.vectors, k, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    members = _groups(rows, sims, nn, threshold)
    kept, fallbacks = _kept(members, keep, _keep_scores(store, manifest, keep))
    ids, paths = rows.ids, rows.paths
    remove = [m.row for m in members if kept[m.group] != m.row]
    summary = {"layer": layer, "threshold": threshold, "threshold_from": chosen, "k": k, "keep": keep,
               "keep_fallbacks": fallbacks, "generation": manifest.generation, "images": len(ids), "embedded": n,
               "groups": len(kept), "in_groups": len(members), "removable": len(remove),
               "exact_copies": sum(1 for m in members if m.kind == "exact" and kept[m.group] != m.row),
               "hashes_recomputed": recomputed, "search": info, "seconds": round(time.perf_counter() - started, 2)}
    write_result(store, DUPLICATES, {
        "group": [m.group for m in members], "id": [ids[m.row] for m in members],
        "path": [paths[m.row] for m in members], "representative": [ids[m.representative] for m in members],
        "similarity": np.array([m.similarity for m in members], np.float32), "kind": [m.kind for m in members],
        "remove": [kept[m.group] != m.row for m in members]}, None)
    write_result(store, DUPLICATE_GROUPS, _group_rows(members, kept, ids), None)
    hist = histogram(sims[:, 0] if n > 1 else np.zeros(0, np.float32))
    write_result(store, NN_SIMILARITY, None, {"layer": layer, "generation": manifest.generation, **hist})
    write_result(store, DUPLICATES, None, summary)  # the summary last: it says the tables are whole
    if write_lists:
        removed = set(remove)
        write_list(store, "remove.txt", [ids[r] for r in sorted(removed)])
        write_list(store, "keep.txt", [i for r, i in enumerate(ids) if r not in removed])
    return {**summary, "histogram": hist}


def _group_rows(members: list[Member], kept: dict[int, int], ids: list[str]) -> dict[str, list]:
    out: dict[str, list] = {"group": [], "representative": [], "kept": [], "size": [], "exact": [], "first": []}
    for at, m in enumerate(members):
        if not out["group"] or out["group"][-1] != m.group:
            out["group"].append(m.group)
            out["representative"].append(ids[m.representative])
            out["kept"].append(ids[kept[m.group]])
            out["size"].append(0)
            out["exact"].append(0)
            out["first"].append(at)
        out["size"][-1] += 1
        out["exact"][-1] += m.kind == "exact"
    return out


