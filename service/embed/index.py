"""Nearest-neighbour search over an embedding folder: a FAISS index with its id table, built and read.

    emb/index/faiss.index     inner product over L2-normalized vectors (cosine); ``Flat`` or any index_factory
    emb/index/ids.arrow       row -> id, path, sha256, where the row lives (shard, row) and its FAISS label (Arrow
                              IPC: never a second ``*.parquet`` under the output folder)
    emb/index/index.json      what it was built from: the manifest's model, layer, pooling, factory, count and
                              the folder's generation

An index follows its folder (:func:`update_index`, run by ``byol-embed run`` after each new generation and by
``byol-embed index``): it removes the rows of gone and changed images and adds the new ones by label, where the
index type allows it (``Flat``: removal compacts and labels are positions; IVF: labels are kept, its trained
quantizer reused), and is rebuilt where it does not (HNSW cannot remove) or should not (an IVF whose set grew past
``GROWTH_LIMIT`` times what its quantizer was trained on), saying why.

Published whole through :meth:`storage.store.Store.publish_folder`, so a reader sees the old index or the new
one: on disk built beside ``index/`` and exchanged with it in one rename; on object storage uploaded file by file,
``index.json`` last (the commit). A reader (``byol-serve --index``, ``byol-embed search``) memory-maps the index
from a folder on this machine's disk: the output folder itself, or a copy of ``index/`` and ``curation/`` made
once per content (``$BYOL_CACHE/copies/<key>/``) for a folder on object storage.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curation.neighbours import TRAIN_PER_LIST, faiss_module
from curation.results import RESULTS, ResultReader
from service.embed.errors import EmbedJobError
from storage.errors import FolderError
from storage.folder import CURATION, INDEX, Manifest, finished_shards, load_rows, open_parquet, read_columns
from storage.store import Store, as_store
from storage.vectors import l2_normalize

logger = logging.getLogger(__name__)
INDEX_DIR = INDEX
INDEX_FILE = "faiss.index"
IDS_FILE = "ids.arrow"
META_FILE = "index.json"
# an IVF index is rebuilt once its set has grown past this many times the vectors its quantizer was trained on:
# the lists were placed for the old distribution and grow unbalanced (longer scans, lower recall at one nprobe)
GROWTH_LIMIT = 2.0
def nlist_of(factory: str) -> int | None:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def build_index(folder: str | Path | Store, *, layer: str | None = None, factory: str = "Flat", train_size: int = 0,
                seed: int = 0, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the index of ``layer`` into ``folder/index/`` atomically; returns its description."""
    faiss = faiss_module()
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    layer = manifest.pick_layer(layer)
    started = time.perf_counter()
    rows = load_rows(folder, manifest, layer)  # the embedded rows, L2-normalized
    if len(rows.vectors) == 0:
        raise EmbedJobError("no embedded rows to index (every row has an error)")
    x = rows.vectors
    ids, paths = [rows.ids[i] for i in rows.embedded], [rows.paths[i] for i in rows.embedded]
    digests = [rows.sha256[i] for i in rows.embedded]
    shard_of, row_in_shard = rows.locations(rows.embedded)  # a query by id reads one row group, never all shards
    locators = read_columns(folder, manifest, ("locator",)).column("locator").take(rows.embedded)
    dim = x.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise EmbedJobError(f"FAISS cannot build {factory!r}: {str(err).strip().splitlines()[-1]}; use 'Flat' or an "
                            "index_factory string such as 'IVF4096,PQ64' or 'HNSW32'") from None
    trained_on = 0
    if not index.is_trained:
        nlist = nlist_of(factory)
        need = TRAIN_PER_LIST * nlist if nlist else 1000
        if len(x) < need:
            raise EmbedJobError(f"{factory!r} needs about {need} training vectors ({TRAIN_PER_LIST} x {nlist} lists) "
                                f"but the set has {len(x)}; use fewer lists (e.g. IVF{max(1, len(x) // 39)},...) or "
                                "'Flat'")
        sample = x
        limit = train_size or max(need, 256 * (nlist or 1))
        if len(x) > limit:
            rng = np.random.default_rng(seed)
            sample = x[np.sort(rng.choice(len(x), limit, replace=False))]
        index.train(sample)
        trained_on = len(sample)
    index.add(x)
    meta = {"layer": layer, "factory": factory, "metric": "inner_product", "normalized": True, "count": len(ids),
            "dim": dim, "trained_on": trained_on, "model_id": manifest.model_id, "revision": manifest.revision,
            "weights_sha256": manifest.weights_sha256, "pooling": manifest.pooling,
            "manifest_normalize": manifest.normalize, "input_fingerprint": manifest.input_fingerprint,
            "generation": manifest.generation, "trained_count": len(x) if trained_on else None,
            "next_label": len(ids), "built_s": round(time.perf_counter() - started, 2), "shards": rows.shards}
    _publish(folder, index, meta, ids, paths, digests, shard_of, row_in_shard, np.arange(len(ids), dtype=np.int64),
             locators)
    return meta


def _publish(folder: Store, index: Any, meta: dict[str, Any], ids: list[str], paths: list[str],
             digests: list[str | None], shard_of: np.ndarray, row_in_shard: np.ndarray, labels: np.ndarray,
             locators: Any) -> None:
    import pyarrow as pa  # the search extra: a server without it serves no index, and imports this module
    import pyarrow.feather as feather

    faiss = faiss_module()

    def write(built: Path) -> None:
        faiss.write_index(index, str(built / INDEX_FILE))
        feather.write_feather(pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string()),
                                        "sha256": pa.array(digests, pa.string()), "shard": pa.array(shard_of),
                                        "row": pa.array(row_in_shard), "label": pa.array(labels),
                                        "locator": pa.array(locators, pa.string())}),
                              built / IDS_FILE, compression="uncompressed")
        (built / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    folder.publish_folder(INDEX_DIR, write, last=META_FILE)


def has_index(folder: Store) -> bool:
    return folder.exists(f"{INDEX_DIR}/{META_FILE}")


def _is_ivf(index: Any) -> bool:
    try:
        faiss_module().extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def _rebuild_reason(meta: dict[str, Any], index: Any, count: int) -> str | None:
    """Why the index cannot follow the folder in place (None: it can)."""
    faiss = faiss_module()
    ivf = _is_ivf(index)
    if not ivf and not isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes):
        return f"{meta['factory']} cannot remove vectors"
    trained = meta.get("trained_count")
    if ivf and not trained:
        return "it records no training size (built by an older version)"
    if ivf and count > GROWTH_LIMIT * trained:
        return (f"the set grew from {trained} to {count} vectors ({count / trained:.1f}x) since its quantizer was "
                f"trained; past {GROWTH_LIMIT:g}x its lists grow unbalanced and recall drops at the same nprobe")
    return None


def update_index(folder: str | Path | Store, *, storage_options: dict[str, Any] | None = None,
                 train_size: int = 0, seed: int = 0) -> dict[str, Any]:
    """Bring ``folder/index/`` to the folder's committed generation: the rows of gone and changed images removed,
    new ones added (their vectors read from the new shards only), where the index type allows; else rebuilt. The
    returned description's ``action`` says which, and why."""
    import pyarrow.feather as feather

    faiss = faiss_module()
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    try:
        meta = json.loads(folder.read_text(f"{INDEX_DIR}/{META_FILE}"))
    except FileNotFoundError:
        raise FolderError(f"{folder} has no index; build one with `byol-embed index {folder}`") from None
    if meta.get("generation") == manifest.generation:
        return {**meta, "action": f"already at generation {manifest.generation}"}
    started = time.perf_counter()
    columns = read_columns(folder, manifest, ("id", "path", "sha256", "error", "locator"))
    ok = columns.column("error").is_null().to_numpy(zero_copy_only=False)
    new_ids = columns.column("id").to_pylist()
    new_sha = columns.column("sha256").to_pylist()
    count = int(ok.sum())
    local = local_folder(folder) / INDEX_DIR
    index = faiss.read_index(str(local / INDEX_FILE))
    table = feather.read_table(local / IDS_FILE)
    reason = None if "label" in table.column_names else "it has no labels (an older version built it)"
    reason = reason or _rebuild_reason(meta, index, count)
    if reason is not None:
        built = build_index(folder, layer=meta["layer"], factory=meta["factory"], train_size=train_size, seed=seed)
        return {**built, "action": f"rebuilt ({reason})"}
    ids, paths = table.column("id").to_pylist(), table.column("path").to_pylist()
    sha = table.column("sha256").to_pylist()
    labels = table.column("label").to_numpy()
    now = {new_ids[k]: k for k in np.flatnonzero(ok)}  # id -> row in the new generation, embedded rows only
    keep = np.zeros(len(ids), bool)  # an indexed row stays where its image is still embedded with the same bytes
    for j, (item_id, digest) in enumerate(zip(ids, sha)):
        k = now.get(item_id)
        keep[j] = k is not None and digest is not None and new_sha[k] == digest
    kept_ids = {i for i, k in zip(ids, keep) if k}
    add = sorted(k for i, k in now.items() if i not in kept_ids)  # rows of the new generation, in its order
    known = set(meta["shards"])
    parts = [p["name"] for p in manifest.parts]
    part_of, row_of = columns.column("part").to_numpy(), columns.column("row").to_numpy()
    if any(parts[part_of[k]] in known for k in add):
        built = build_index(folder, layer=meta["layer"], factory=meta["factory"], train_size=train_size, seed=seed)
        return {**built, "action": "rebuilt (its rows do not match the folder's shards)"}
    removed = int((~keep).sum())
    if removed:
        index.remove_ids(faiss.IDSelectorBatch(labels[~keep]))
    vectors = _vectors_of(folder, manifest, meta["layer"], [(parts[part_of[k]], int(row_of[k])) for k in add])
    ivf = _is_ivf(index)
    new_labels = np.arange(meta["next_label"], meta["next_label"] + len(add), dtype=np.int64)
    if len(add):
        if ivf:
            index.add_with_ids(vectors, new_labels)
        else:
            index.add(vectors)
    ids = [i for i, k in zip(ids, keep) if k] + [new_ids[k] for k in add]
    paths = [p for p, k in zip(paths, keep) if k] + columns.column("path").take(add).to_pylist()
    digests = [s for s, k in zip(sha, keep) if k] + [new_sha[k] for k in add]
    located = columns.column("locator").take(np.array([now[i] for i in ids], np.int64)) if ids else []
    labels = np.concatenate([labels[keep], new_labels]) if ivf else np.arange(len(ids), dtype=np.int64)
    where = np.array([now[i] for i in ids], np.int64) if ids else np.zeros(0, np.int64)
    meta = {**meta, "count": len(ids), "generation": manifest.generation, "input_fingerprint": manifest.input_fingerprint,
            "next_label": int(meta["next_label"] + len(add)), "shards": parts,
            "updated_s": round(time.perf_counter() - started, 2)}
    _publish(folder, index, meta, ids, paths, digests, part_of[where].astype(np.int32), row_of[where], labels,
             located)
    return {**meta, "action": f"updated in place to generation {manifest.generation} ({len(add)} added, {removed} "
                              f"removed)", "added": len(add), "removed": removed}


def _vectors_of(folder: Store, manifest: Manifest, layer: str, rows: list[tuple[str, int]]) -> np.ndarray:
    """The L2-normalized vectors of ``rows`` ((shard name, row)), read shard by shard."""
    dim = manifest.dims[layer]
    out = np.empty((len(rows), dim), np.float32)
    by_part: dict[str, list[tuple[int, int]]] = {}
    for at, (name, row) in enumerate(rows):
        by_part.setdefault(name, []).append((at, row))
    for name, wanted in by_part.items():
        column = open_parquet(folder, folder.path(name)).read(columns=[layer]).column(layer)
        taken = column.take([r for _, r in wanted]).combine_chunks()
        out[[at for at, _ in wanted]] = taken.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return l2_normalize(out, out=out)


def local_folder(store: Store) -> Path:
    """A folder on this machine's disk holding the store's ``index/`` and ``curation/``: the folder itself on local
    disk, else a copy made once per content (the key: the index description's bytes and each file's size and
    version), so the index is memory-mapped from a local file."""
    try:
        described = store.read_bytes(f"{INDEX_DIR}/{META_FILE}")
    except FileNotFoundError:
        raise FolderError(f"{store} has no index; build one with `byol-embed index {store}`") from None
    curation = [f"{CURATION}/{n}" for n in store.child(CURATION).names("*")]  # none: an empty listing
    names = [f"{INDEX_DIR}/{INDEX_FILE}", f"{INDEX_DIR}/{IDS_FILE}", f"{INDEX_DIR}/{META_FILE}"] + curation
    return versioned_copy(store, names, described)


def versioned_copy(store: Store, names: list[str], described: bytes) -> Path:
    """A local copy of ``names`` (the store itself on local disk), keyed by ``described`` (an index description's
    bytes) and each file's size and version, and checked against those versions once downloaded."""
    key = [described]
    versions: dict[str, str | None] = {}
    for name in names:
        info = store.info(name)
        versions[name] = info["version"]
        key.append(f"{name}\0{info['size']}\0{info['version']}\n".encode())
    return store.local_copy(names, b"".join(key), versions)


def read_mapped(path: Path) -> Any:
    """A FAISS index memory-mapped read-only where FAISS can map its type, else read into memory (e.g. HNSW)."""
    faiss = faiss_module()
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path))


def _exact_codes(factory: str) -> bool:
    """Whether an index of this factory string keeps each vector as it was added (Flat, HNSW) or within ~1e-3
    (scalar quantizers): product and residual quantizers keep approximations."""
    return not any(code in factory for code in ("PQ", "RQ", "LSH", "LSQ"))


class StaleIndexError(EmbedJobError):
    """The served index refers to shards that are gone: it is older than the folder's kept generations."""


@dataclass
class LoadedIndex:
    """An index ready to answer queries: the FAISS index (memory-mapped where FAISS allows), ids and paths."""

    folder: Path  # the local folder holding index/ (and curation/): the output folder, or its cached copy
    manifest: Manifest
    meta: dict[str, Any]
    index: Any
    ids: list[str]
    paths: list[str]
    store: Store | None = None  # where the output folder lives (its shards are read from there)
    shard_of: np.ndarray | None = None  # each index row's shard (into meta["shards"]) and row in it
    row_in_shard: np.ndarray | None = None
    sha256: list[str | None] | None = None  # each row's image bytes' hash (exact duplicates of a query)
    labels: np.ndarray | None = None  # each row's FAISS label, where they are not the positions (an updated IVF)
    locators: Any = None  # pyarrow string array: where each row's image bytes are (None: an older index)
    regions: Any = None  # service.embed.region_index.LoadedRegionIndex, where the server found one beside it

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @property
    def location(self) -> str:
        return str(self.store) if self.store is not None else str(self.folder)

    @classmethod
    def open(cls, folder: str | Path | Store, nprobe: int | None = None,
             storage_options: dict[str, Any] | None = None) -> LoadedIndex:
        import pyarrow.feather as feather

        faiss = faiss_module()
        store = as_store(folder, storage_options)
        manifest = Manifest.load(store)
        folder = local_folder(store)
        root = folder / INDEX_DIR
        meta = json.loads((root / META_FILE).read_text())
        index = read_mapped(root / INDEX_FILE)
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        if nprobe is not None:
            if ivf is not None:
                ivf.nprobe = nprobe
            else:
                logger.info("--nprobe ignored: %s is not an IVF index", meta["factory"])
        if ivf is not None and _exact_codes(meta["factory"]):
            # a label's vector read from its list: an array of 8 bytes a row where labels are the positions, a hash
            # table where an update removed some (labels with gaps)
            try:
                ivf.set_direct_map_type(faiss.DirectMap.Array)
            except RuntimeError:  # "direct map supported only for sequential ids"
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        table = feather.read_table(root / IDS_FILE)
        if table.num_rows != meta["count"]:  # a copy taken while another process rewrote the index
            raise FolderError(f"the index at {store} is being rewritten (its files disagree); retry in a moment")
        located = "shard" in table.column_names and "shards" in meta  # indexes built before rows were located lack them
        names = table.column_names
        labels = table.column("label").to_numpy() if "label" in names else None
        if labels is not None and np.array_equal(labels, np.arange(len(labels))):
            labels = None  # the positions
        return cls(folder, manifest, meta, index, table.column("id").to_pylist(), table.column("path").to_pylist(),
                   store, table.column("shard").to_numpy() if located else None,
                   table.column("row").to_numpy() if located else None,
                   table.column("sha256").to_pylist() if "sha256" in names else None, labels,
                   table.column("locator").combine_chunks() if "locator" in names else None)

    def result_summary(self, name: str) -> dict[str, Any]:
        """A curation result's summary (:data:`curation.results.RESULTS`) beside the served index; {} if none."""
        return ResultReader(self.folder, RESULTS[name]).summary()

    def locator_of(self, row: int) -> str | None:
        """Where the image of index row ``row`` is (None: an index built before locators, or not locatable)."""
        return None if self.locators is None else self.locators[row].as_py()

    @cached_property
    def _label_order(self) -> np.ndarray:
        return np.argsort(self.labels, kind="stable")

    def rows_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Positions in :attr:`ids` of FAISS labels (-1 stays -1)."""
        if self.labels is None:
            return labels
        order = self._label_order
        at = np.searchsorted(self.labels, labels, sorter=order)
        at = np.clip(at, 0, len(order) - 1)
        rows = order[at]
        return np.where((labels >= 0) & (self.labels[rows] == labels), rows, -1)

    @cached_property
    def _by_hash(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for row, digest in enumerate(self.sha256 or []):
            if digest is not None:
                out.setdefault(digest, []).append(row)
        return out

    def same_bytes(self, digest: str) -> list[int]:
        """Rows whose image has exactly these bytes (sha256)."""
        return self._by_hash.get(digest, [])

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.ids)}

    def row_of(self, item_id: str) -> int:
        try:
            return self._positions[item_id]
        except KeyError:
            raise EmbedJobError(f"no embedded image with id {item_id!r} in this index") from None

    def vector_of(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id``, reading about one vector: from the index where it keeps the vectors
        (Flat, HNSW, and IVF with Flat or SQ lists through its direct map); else (PQ codes are approximate) the
        exact vector from the one row group (:data:`storage.folder.SHARD_ROW_GROUP` rows; a whole shard in
        folders written before) of the shard that holds it, on disk or on object storage. Indexes made before the
        rows' locations were recorded fall back to a filtered scan. A shard that the folder's garbage collection
        removed (the served index is generations behind) raises :class:`StaleIndexError`."""
        row = self.row_of(item_id)
        if _exact_codes(self.meta.get("factory", "")):
            try:
                label = int(self.labels[row]) if self.labels is not None else row
                return np.asarray(self.index.reconstruct(label)).reshape(1, -1)
            except RuntimeError:
                pass
        try:
            return self._stored_vector(row, item_id)
        except FileNotFoundError:
            raise StaleIndexError(
                f"the served index (generation {self.generation}) points at shards that the folder has removed "
                "since; the server loads the folder's current index within its poll interval") from None

    def _stored_vector(self, row: int, item_id: str) -> np.ndarray:
        import pyarrow.parquet as pq

        layer = self.meta["layer"]
        store = self.store or as_store(self.folder)
        if self.shard_of is None:
            table = pq.read_table(finished_shards(store, self.manifest), columns=[layer], filters=[("id", "=", item_id)],
                                  filesystem=store.fs)
            return table.column(layer).combine_chunks().values.to_numpy(zero_copy_only=False).reshape(1, -1)
        parquet = open_parquet(store, store.path(self.meta["shards"][self.shard_of[row]]))
        offset = int(self.row_in_shard[row])
        for group in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if offset < rows:
                table = parquet.read_row_group(group, columns=["id", layer])
                if table.column("id")[offset].as_py() != item_id:
                    raise EmbedJobError(f"{item_id!r}: the index does not match the folder's shards; rebuild it "
                                        "with `byol-embed index`")
                return np.asarray(table.column(layer)[offset].as_py(), np.float32).reshape(1, -1)
            offset -= rows
        raise EmbedJobError(f"{item_id!r}: its shard has fewer rows than the index recorded; rebuild the index")

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None,
               min_score: float | None = None) -> list[dict[str, Any]]:
        """Top ``k`` by cosine; ``exclude`` drops that id (a query by id does not find itself); ``min_score``
        keeps only results at or above it."""
        x = l2_normalize(vector.reshape(1, -1))
        scores, labels = self.index.search(x, k + (1 if exclude is not None else 0))
        results = []
        for score, row in zip(scores[0], self.rows_of_labels(labels[0])):
            if row < 0 or (exclude is not None and self.ids[row] == exclude):
                continue
            if min_score is not None and score < min_score:
                break  # descending
            results.append({"id": self.ids[row], "path": self.paths[row], "score": float(score)})
        return results[:k]
