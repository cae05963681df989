"""What every curation command stands on: nearest neighbours over unit vectors (FAISS), PCA and k-means.

Cosine similarity is the inner product of L2-normalized vectors (:func:`storage.vectors.l2_normalize`, applied by
:func:`storage.folder.load_rows`). Nothing here builds an n x n matrix: queries go in blocks against an exact
``IndexFlatIP`` up to ``EXACT_LIMIT`` vectors, an ``IVF,SQ8`` index beyond (whose candidates the callers re-rank
exactly where a threshold is crossed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curation.errors import CurationError
from curation.progress import bar as progress_bar

EXACT_LIMIT = 50_000  # exact kNN up to this many vectors; IVF beyond
BLOCK = 4096  # queries per FAISS call
TRAIN_PER_LIST = 39  # FAISS warns below ~39 training points per IVF list


def faiss_module():
    """FAISS, imported where it is needed (search and curation), with the extra to install where it is missing."""
    try:
        import faiss
    except ImportError:
        raise CurationError("search and curation need faiss-cpu (pip install 'byol[search]')") from None
    return faiss


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
    bar = progress_bar(n, "kNN graph", progress)
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


def pca(vectors: np.ndarray, dims: int, *, sample: int = 100_000, seed: int = 0) -> np.ndarray:
    """``vectors`` projected on their first ``dims`` principal components (fitted on a sample), float32, in
    blocks."""
    n, d = vectors.shape
    if d <= dims:
        return np.ascontiguousarray(vectors - vectors.mean(axis=0), np.float32)
    rng = np.random.default_rng(seed)
    fit = vectors[np.sort(rng.choice(n, size=min(n, sample), replace=False))]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:dims].T.astype(np.float32)  # fewer than dims where the sample has fewer rows
    out = np.empty((n, basis.shape[1]), np.float32)
    for start in range(0, n, 65536):
        out[start:start + 65536] = (vectors[start:start + 65536] - mean) @ basis
    return out


def kmeans(points: np.ndarray, clusters: int, *, seed: int = 0) -> np.ndarray:
    """FAISS k-means: each row's cluster (0-based; numbered by size, largest first)."""
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
