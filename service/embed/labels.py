"""Labels against the embedding: images whose neighbours disagree with their label, classes the embedding confuses,
and the outliers of each class.

    emb/labels.json                  the folder's label source, as given to ``run --labels`` (or ``labels --labels``)
    emb/labels.csv                   a CSV given as the source, kept with the folder
    emb/curation/labels.parquet      id, path, label, suggested (the neighbours' label), score (how strongly the
                                     neighbourhood disagrees, 0..1), rank, class_outlier (1 - cosine to the class's
                                     mean) and its percentile within the class
    emb/curation/labels.json         the summary: classes, counts, the confused class pairs, the top suspects

Label sources (``--labels``): ``folders`` (each id's parent folder: ``cats/001.jpg`` is ``cats``), ``column:NAME``
(a column of the Parquet input, beside the images), or a CSV file of ``id,label`` (a header row with ``id`` and
``label`` columns, or the first two columns).

The score. Every image's ``k`` (16) nearest neighbours (the same kNN graph as ``dedup``) vote for their labels, weighted by ``exp(cosine / TEMPERATURE)``, with the class frequencies as a prior
worth ``PRIOR`` votes: ``p(c)``. Votes are then taken again with each neighbour's vote weighted by how much its
own neighbours agree with its label (``ROUNDS`` times), so a cluster of flipped labels does not vouch for itself.
The score is ``1 - p(label)``; the suggestion ``argmax p``. Where the labels are a column of ids without any
label, those rows neither vote nor are scored. Memory is the kNN graph (n x k), never n x classes. Beyond
``EXACT_LIMIT`` vectors the IVF index's own cosines are used (no exact re-ranking: nothing is compared with a
threshold), which makes the kNN a fifth faster than dedup's.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from service.embed.errors import EmbedJobError
from storage.folder import Manifest, load_rows, write_table
from storage.store import Store, as_store

LABELS_FILE = "labels.parquet"
SPEC_FILE = "labels.json"
CSV_FILE = "labels.csv"
TEMPERATURE = 0.05
PRIOR = 1.0
ROUNDS = 2


def parse_spec(spec: str) -> str:
    """Check a ``--labels`` value's form (the file or column is checked when read)."""
    if spec == "folders" or spec.startswith("column:") and len(spec) > 7 or spec.lower().endswith(".csv"):
        return spec
    raise EmbedJobError(f"--labels {spec!r} is not a label source; accepted: folders (each id's parent folder), "
                        "column:NAME (a column of the Parquet input), or a .csv file of id,label")


def save_spec(store: Store, spec: str) -> None:
    """Record the folder's label source (a CSV's content is kept in the folder, so it travels with it)."""
    spec = parse_spec(spec)
    if spec.lower().endswith(".csv"):
        text = _read_csv_text(spec)
        _parse_csv(text, spec)  # refused now, not at the first `labels`
        store.write_text(CSV_FILE, text)
    store.write_text(SPEC_FILE, json.dumps({"labels": spec}) + "\n")


def saved_spec(store: Store) -> str | None:
    try:
        return json.loads(store.read_text(SPEC_FILE))["labels"]
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def _read_csv_text(spec: str) -> str:
    parent, _, name = spec.replace("\\", "/").rpartition("/")
    try:
        return as_store(parent or ".").read_text(name)
    except FileNotFoundError:
        raise EmbedJobError(f"--labels {spec}: no such file") from None


def _parse_csv(text: str, shown: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise EmbedJobError(f"{shown} is empty; it needs id,label rows")
    header = [h.strip().lower() for h in rows[0]]
    if "id" in header and "label" in header:
        i, j = header.index("id"), header.index("label")
        body = rows[1:]
    else:
        i, j = 0, 1
        body = rows
    out: dict[str, str] = {}
    for line, row in enumerate(body, 2 if body is not rows else 1):
        if not row:
            continue
        if len(row) <= max(i, j):
            raise EmbedJobError(f"{shown} line {line}: {row!r} has no label column (expected id,label)")
        out[row[i].strip()] = row[j].strip()
    return out


def read_labels(store: Store, manifest: Manifest, spec: str | None, ids: list[str]) -> tuple[list[str | None], str]:
    """Each id's label (None where the source has none) and the source used."""
    spec = spec or saved_spec(store)
    if spec is None:
        raise EmbedJobError(f"{store} has no labels: pass --labels folders|column:NAME|FILE.csv (here or to `run`)")
    spec = parse_spec(spec)
    if spec == "folders":
        labels = [i.rsplit("/", 2)[-2] if "/" in i else None for i in ids]
        if all(label is None for label in labels):
            raise EmbedJobError("--labels folders: the ids have no folders (the images sit at the input's top "
                                "level); use column:NAME or a CSV")
        return labels, spec
    if spec.startswith("column:"):
        return _column_labels(store, manifest, spec[7:], ids), spec
    text = store.read_text(CSV_FILE) if saved_spec(store) == spec and store.exists(CSV_FILE) else _read_csv_text(spec)
    table = _parse_csv(text, spec)
    labels = [table.get(i) for i in ids]
    if all(label is None for label in labels):
        raise EmbedJobError(f"{spec}: none of its ids is in the folder (e.g. {next(iter(table), '-')!r} vs "
                            f"{ids[0] if ids else '-'!r})")
    return labels, spec


def _column_labels(store: Store, manifest: Manifest, column: str, ids: list[str]) -> list[str | None]:
    from storage.sources import ParquetImageSource, open_source

    source = open_source(manifest.input, **manifest.source_options, storage_options=store.options)
    if not isinstance(source, ParquetImageSource):
        raise EmbedJobError(f"--labels column:{column} needs a Parquet input with the images inside; this folder's "
                            f"input {manifest.input} is {source.kind}: use folders or a CSV")
    values: list[str | None] = []
    for f in range(len(source.files)):
        parquet = source._parquet(f)
        if column not in parquet.schema_arrow.names:
            raise EmbedJobError(f"{source.files[f]} has no column {column!r}; its columns: "
                                f"{parquet.schema_arrow.names}")
        values += [None if v is None else str(v) for v in parquet.read(columns=[column]).column(column).to_pylist()]
    by_id = dict(zip(source.ids, values))
    return [by_id.get(i) for i in ids]


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


def labels(folder: str | Path | Store, *, spec: str | None = None, layer: str = "avgpool", k: int = 16,
           exact_limit: int | None = None, nprobe: int | None = None, progress: bool = False,
           storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every labelled image; write ``curation/labels.parquet`` and ``labels.json``; returns the summary."""
    from service.embed.curate import CURATION_DIR, EXACT_LIMIT, knn

    if k < 1:
        raise EmbedJobError(f"--k must be >= 1, got {k}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    started = time.perf_counter()
    rows = load_rows(store, manifest, layer)
    ids = [rows.ids[int(r)] for r in rows.embedded]
    given, spec = read_labels(store, manifest, spec, ids)
    names = sorted({g for g in given if g is not None})
    if len(names) < 2:
        raise EmbedJobError(f"the labels ({spec}) name {len(names)} class(es); scoring needs at least 2")
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
    table = pa.table({
        "id": pa.array([ids[i] for i in ranking], pa.string()),
        "path": pa.array([rows.paths[int(rows.embedded[i])] for i in ranking], pa.string()),
        "label": pa.array([given[i] for i in ranking], pa.string()),
        "suggested": pa.array([names[suggested[i]] for i in ranking], pa.string()),
        "score": pa.array(score[ranking], pa.float32(), mask=np.isnan(score[ranking])),
        "rank": pa.array(rank[ranking], pa.int64()),
        "class_outlier": pa.array(class_outlier[ranking], pa.float32(), mask=np.isnan(class_outlier[ranking])),
        "class_outlier_percentile": pa.array(class_pct[ranking], pa.float32(), mask=np.isnan(class_pct[ranking])),
    })
    out = store.child(CURATION_DIR)
    write_table(out, LABELS_FILE, table)
    disagree = int(((suggested != y) & labelled).sum())
    summary = {"labels": spec, "layer": layer, "k": k, "generation": manifest.generation, "images": len(rows.ids),
               "labelled": int(labelled.sum()), "classes": len(names), "disagreeing": disagree,
               "confused_pairs": pairs[:20], "search": info, "seconds": round(time.perf_counter() - started, 2)}
    out.write_text("labels.json", json.dumps(summary, indent=1) + "\n")
    top = [{"id": ids[i], "label": given[i], "suggested": names[suggested[i]], "score": round(float(score[i]), 4)}
           for i in ranking[:10] if labelled[i]]
    return {**summary, "top": top}
