"""The region index: every stored window of every image (``byol-embed run --regions``) in one FAISS index, and
queries by a part of an image ranked per image, each hit with the box that matched.

    emb/regions/index/faiss.index   inner product over the regions' reduced vectors (cosine); a region's label is
                                    its image's label x MAX_WINDOWS + its window
    emb/regions/index/images.arrow  image label -> id, path, sha256, where its row lives (shard, row) and the square
                                    the model saw (left, top, side: a window's box follows from it)
    emb/regions/index/index.json    what it was built from: the layer, factory, counts, the codec and the generation

The factory. Up to :data:`FLAT_LIMIT` regions the index is exact (``IDMap2,Flat``: 256 B a region). Past it,
``OPQ32,IVF<n>,PQ32`` (32 B of codes and an 8-byte label a region: a million images of 36 windows in ~1.4 GB),
trained on a sample. The rotation (OPQ) spreads the PCA's variance over the 32 sub-quantizers, which would
otherwise give the first ones most of it: on 3.6 M regions it lifted recall@10 against exact search from 0.47 to
0.70 at ``nprobe`` 64 (``benchmarks/regions_scale.py``). Both follow appends in place (:func:`update_region_index`, run after each new generation like the
image index): the regions of gone and changed images are removed by label and the new images' added; an IVF whose
set has grown past :data:`service.embed.index.GROWTH_LIMIT` times its training set is retrained.

A query is the probes of :func:`curation.regions.probe_images` reduced by the folder's codec. Each probe asks for
the ``k x windows`` nearest regions (every window of k images could be among them); an image scores its best
region against any probe.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curation.neighbours import TRAIN_PER_LIST, faiss_module
from curation.progress import bar
from curation.regions import MAX_WINDOWS, RegionCodec, decoded, folder_codec, window_boxes
from service.embed.errors import EmbedJobError
from service.embed.index import GROWTH_LIMIT, read_mapped, versioned_copy
from storage.errors import FolderError
from storage.folder import REGIONS, Manifest, RegionRows, iter_region_rows
from storage.store import Store, as_store

logger = logging.getLogger(__name__)
REGION_INDEX = f"{REGIONS}/index"
INDEX_FILE = "faiss.index"
IMAGES_FILE = "images.arrow"
META_FILE = "index.json"
FLAT_LIMIT = 1_000_000  # regions kept exact (256 MB of float32 vectors); past it IVF-PQ
PQ_BYTES = 32  # bytes of product codes a region past FLAT_LIMIT (64 dims: 2 a sub-quantizer)
DEFAULT_NPROBE = 64
MAX_CANDIDATES = 4096  # regions a probe asks the index for, at most


def nlist_of(factory: str) -> int:
    """The IVF lists of a factory string (1 for a flat one)."""
    import re

    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 1


def factory_for(regions: int) -> str:
    """``IDMap2,Flat`` up to :data:`FLAT_LIMIT` regions, else ``OPQ32,IVF<n>,PQ32`` with ~2 sqrt(n) lists."""
    if regions <= FLAT_LIMIT:
        return "IDMap2,Flat"
    nlist = int(min(65536, max(1024, 2 ** round(np.log2(2 * np.sqrt(regions))))))
    return f"OPQ{PQ_BYTES},IVF{nlist},PQ{PQ_BYTES}"


def has_region_index(folder: Store) -> bool:
    return folder.exists(f"{REGION_INDEX}/{META_FILE}")


def _read_regions(folder: Store, manifest: Manifest, codec: RegionCodec, parts: list[str],
                  wanted: dict[str, set[int]] | None = None):
    """``(rows, vectors)`` a record batch at a time: the embedded rows of ``parts`` (of ``wanted`` where given) and
    their regions as unit float32, ``(n x windows, dims)``."""
    for rows in iter_region_rows(folder, manifest, parts, wanted):
        yield rows, decoded(codec, rows.codes)


def _labels(image_labels: np.ndarray, windows: int) -> np.ndarray:
    return (image_labels[:, None] * MAX_WINDOWS + np.arange(windows)[None, :]).reshape(-1).astype(np.int64)


def build_region_index(folder: str | Path | Store, *, factory: str | None = None, train_size: int = 0, seed: int = 0,
                       progress: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``folder/regions/index/`` from every shard's region codes; returns its description."""
    faiss = faiss_module()
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    codec = folder_codec(folder, manifest)
    started = time.perf_counter()
    windows = len(codec.windows)
    embedded = sum(int(p["rows"]) - int(p.get("errors") or 0) for p in manifest.parts)
    factory = factory or factory_for(embedded * windows)
    try:
        index = faiss.index_factory(codec.dims, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise EmbedJobError(f"FAISS cannot build {factory!r}: {str(err).strip().splitlines()[-1]}") from None
    parts = [p["name"] for p in manifest.parts]
    trained_on = 0
    if not index.is_trained:
        trained_on = _train(index, folder, manifest, codec, parts, factory, train_size, seed, embedded * windows)
    chunks: list[RegionRows] = []
    count = 0
    shown = bar(embedded, "region index", progress)
    for batch, vectors in _read_regions(folder, manifest, codec, parts):
        labels = np.arange(count, count + len(batch.ids), dtype=np.int64)
        index.add_with_ids(vectors, _labels(labels, windows))
        batch.codes = None  # added: only the image's id, place and seen square stay
        chunks.append(batch)
        count += len(batch.ids)
        if shown is not None:
            shown.update(len(batch.ids))
    if shown is not None:
        shown.close()
    if count == 0:
        raise EmbedJobError("no embedded rows with regions to index (every row has an error)")
    images = _concat(chunks)
    meta = {"layer": manifest.regions["layer"], "factory": factory, "dim": codec.dims, "windows": windows,
            "grid": codec.grid, "images": count, "regions": count * windows, "trained_on": trained_on,
            "trained_count": count * windows if trained_on else None, "codec": manifest.region_codec["file"],
            "model_id": manifest.model_id, "weights_sha256": manifest.weights_sha256,
            "generation": manifest.generation, "next_label": count, "shards": parts,
            "built_s": round(time.perf_counter() - started, 2)}
    _publish(folder, index, meta, images, np.arange(count, dtype=np.int64))
    return meta


def _train(index: Any, folder: Store, manifest: Manifest, codec: RegionCodec, parts: list[str], factory: str,
           train_size: int, seed: int, total: int) -> int:
    """Train an IVF-PQ index on a sample of the regions: each region of shards taken in a random order kept at
    the rate that gives the sample's size from all ``total`` regions (and a quarter more)."""
    nlist = nlist_of(factory)
    want = train_size or max(TRAIN_PER_LIST * nlist, 65_536)
    rng = np.random.default_rng(seed)
    sample: list[np.ndarray] = []
    have = 0
    for name in [parts[i] for i in rng.permutation(len(parts))]:
        for _, vectors in _read_regions(folder, manifest, codec, [name]):
            take = vectors[rng.random(len(vectors)) < min(1.0, 1.25 * want / max(total, 1))]
            sample.append(take)
            have += len(take)
            if have >= want:
                break
        if have >= want:
            break
    x = np.concatenate(sample)[:want]
    if len(x) < TRAIN_PER_LIST * nlist:
        raise EmbedJobError(f"{factory!r} needs about {TRAIN_PER_LIST * nlist} training regions but the folder has "
                            f"{len(x)}; use fewer lists or 'IDMap2,Flat'")
    index.train(x)
    return len(x)


def _concat(chunks: list[RegionRows]) -> RegionRows:
    return RegionRows([i for c in chunks for i in c.ids], [p for c in chunks for p in c.paths],
                   [s for c in chunks for s in c.sha256], np.concatenate([c.shard for c in chunks]),
                   np.concatenate([c.row for c in chunks]), np.concatenate([c.seen for c in chunks]))


def _publish(folder: Store, index: Any, meta: dict[str, Any], images: RegionRows, labels: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    faiss = faiss_module()

    def write(built: Path) -> None:
        faiss.write_index(index, str(built / INDEX_FILE))
        seen = pa.FixedSizeListArray.from_arrays(pa.array(images.seen.reshape(-1), pa.float32()), 3)
        feather.write_feather(pa.table({"id": pa.array(images.ids, pa.string()),
                                        "path": pa.array(images.paths, pa.string()),
                                        "sha256": pa.array(images.sha256, pa.string()), "shard": pa.array(images.shard),
                                        "row": pa.array(images.row), "label": pa.array(labels), "seen": seen}),
                              built / IMAGES_FILE, compression="uncompressed")
        (built / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    folder.publish_folder(REGION_INDEX, write, last=META_FILE)


def update_region_index(folder: str | Path | Store, *, storage_options: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Bring the region index to the folder's committed generation in place (the regions of gone and changed
    images removed, the new images' added), or rebuild it where an IVF's set grew past its training; the returned
    description's ``action`` says which."""
    import pyarrow.feather as feather

    from storage.folder import read_columns

    faiss = faiss_module()
    folder = as_store(folder, storage_options)
    manifest = Manifest.load(folder)
    meta = json.loads(folder.read_text(f"{REGION_INDEX}/{META_FILE}"))
    if meta.get("generation") == manifest.generation:
        return {**meta, "action": f"already at generation {manifest.generation}"}
    if meta.get("codec") != manifest.region_codec.get("file"):
        return {**build_region_index(folder), "action": "rebuilt (the folder's codec changed)"}
    started = time.perf_counter()
    codec = folder_codec(folder, manifest)
    windows = int(meta["windows"])
    columns = read_columns(folder, manifest, ("id", "sha256", "error"))
    ok = columns.column("error").is_null().to_numpy(zero_copy_only=False)
    new_ids, new_sha = columns.column("id").to_pylist(), columns.column("sha256").to_pylist()
    now = {new_ids[k]: k for k in np.flatnonzero(ok)}
    if meta.get("trained_count") and len(now) * windows > GROWTH_LIMIT * meta["trained_count"]:
        return {**build_region_index(folder), "action": f"rebuilt (the set grew past {GROWTH_LIMIT:g}x the regions "
                                                        "its quantizer was trained on)"}
    local = local_region_folder(folder)
    index = faiss.read_index(str(local / INDEX_FILE))
    table = feather.read_table(local / IMAGES_FILE)
    ids, sha = table.column("id").to_pylist(), table.column("sha256").to_pylist()
    labels = table.column("label").to_numpy()
    keep = np.array([(k := now.get(i)) is not None and s is not None and new_sha[k] == s for i, s in zip(ids, sha)],
                    bool)
    kept = {i for i, k in zip(ids, keep) if k}
    add = sorted(k for i, k in now.items() if i not in kept)
    if (~keep).any():
        index.remove_ids(faiss.IDSelectorBatch(_labels(labels[~keep], windows)))
    parts = [p["name"] for p in manifest.parts]
    part_of, row_of = columns.column("part").to_numpy(), columns.column("row").to_numpy()
    wanted: dict[str, set[int]] = {}
    for k in add:
        wanted.setdefault(parts[part_of[k]], set()).add(int(row_of[k]))
    chunks: list[RegionRows] = []
    next_label = int(meta["next_label"])
    for batch, vectors in _read_regions(folder, manifest, codec, [p for p in parts if p in wanted], wanted):
        new = np.arange(next_label, next_label + len(batch.ids), dtype=np.int64)
        index.add_with_ids(vectors, _labels(new, windows))
        batch.codes = None
        chunks.append(batch)
        next_label += len(batch.ids)
    kept_rows = np.flatnonzero(keep)
    where = now
    seen = table.column("seen").combine_chunks().flatten().to_numpy().reshape(-1, 3)
    kept_images = RegionRows([ids[j] for j in kept_rows], [table.column("path")[int(j)].as_py() for j in kept_rows],
                          [sha[j] for j in kept_rows],
                          np.array([part_of[where[ids[j]]] for j in kept_rows], np.int32),
                          np.array([row_of[where[ids[j]]] for j in kept_rows], np.int64), seen[kept_rows])
    images = _concat([kept_images, *chunks])
    new_labels = np.concatenate([labels[kept_rows], np.arange(int(meta["next_label"]), next_label, dtype=np.int64)])
    removed = int((~keep).sum())
    added = next_label - int(meta["next_label"])
    meta = {**meta, "images": len(images.ids), "regions": len(images.ids) * windows, "generation": manifest.generation,
            "next_label": next_label, "shards": parts, "updated_s": round(time.perf_counter() - started, 2)}
    _publish(folder, index, meta, images, new_labels)
    return {**meta, "action": f"updated in place to generation {manifest.generation} ({added} images added, "
                              f"{removed} removed)", "added": added, "removed": removed}


def local_region_folder(store: Store) -> Path:
    """A local folder holding the region index's files and the folder's codec (the folder itself on disk; a copy
    made once per content for a folder on object storage)."""
    try:
        described = store.read_bytes(f"{REGION_INDEX}/{META_FILE}")
    except FileNotFoundError:
        raise FolderError(f"{store} has no region index; build it with `byol-embed index {store}`") from None
    names = [f"{REGION_INDEX}/{n}" for n in (INDEX_FILE, IMAGES_FILE, META_FILE)]
    return versioned_copy(store, names, described) / REGION_INDEX


@dataclass
class LoadedRegionIndex:
    """A region index ready for queries by a part of an image."""

    store: Store
    manifest: Manifest
    meta: dict[str, Any]
    index: Any
    codec: RegionCodec
    ids: list[str]
    paths: list[str]
    seen: np.ndarray  # (images, 3)
    labels: np.ndarray  # each image's label (sorted: labels only grow, kept images keep their order)

    @property
    def layer(self) -> str:
        return self.meta["layer"]

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @classmethod
    def open(cls, folder: str | Path | Store, nprobe: int | None = None,
             storage_options: dict[str, Any] | None = None) -> LoadedRegionIndex:
        import pyarrow.feather as feather

        faiss = faiss_module()
        store = as_store(folder, storage_options)
        manifest = Manifest.load(store)
        codec = folder_codec(store, manifest)
        local = local_region_folder(store)
        meta = json.loads((local / META_FILE).read_text())
        if meta.get("codec") != manifest.region_codec.get("file"):
            raise FolderError(f"the region index of {store} was built with another codec than the folder's; rebuild "
                              f"it with `byol-embed index {store}`")
        index = read_mapped(local / INDEX_FILE)
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe or DEFAULT_NPROBE
        except RuntimeError:
            pass
        table = feather.read_table(local / IMAGES_FILE)
        if table.num_rows != meta["images"]:
            raise FolderError(f"the region index at {store} is being rewritten (its files disagree); retry in a moment")
        seen = table.column("seen").combine_chunks().flatten().to_numpy().reshape(-1, 3)
        return cls(store, manifest, meta, index, codec, table.column("id").to_pylist(),
                   table.column("path").to_pylist(), seen, table.column("label").to_numpy())

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.ids)}

    def size_of(self, item_id: str) -> list[int] | None:
        """An indexed image's width and height (the centre crop's margins are equal), None for another id."""
        row = self._positions.get(item_id)
        if row is None:
            return None
        left, top, side = (float(v) for v in self.seen[row])
        return [round(2 * left + side), round(2 * top + side)]

    def search(self, parts: np.ndarray, k: int, exclude: str | None = None,
               candidates: int = MAX_CANDIDATES) -> list[dict[str, Any]]:
        """Images holding the parts best: ``parts`` is ``(probes, C)`` pooled vectors of the layer (one part's
        probes); each result carries the best window's box in that image's pixels and its score."""
        windows = int(self.meta["windows"])
        queries = self.codec.reduce(np.asarray(parts, np.float32).reshape(len(parts), -1))
        want = min(candidates, (k + (1 if exclude else 0)) * windows, int(self.index.ntotal))
        scores, found = self.index.search(queries, want)
        best: dict[int, tuple[float, int]] = {}
        for score, label in zip(scores.reshape(-1), found.reshape(-1)):
            if label < 0:
                continue
            image, window = divmod(int(label), MAX_WINDOWS)
            if image not in best or score > best[image][0]:
                best[image] = (float(score), window)
        results = []
        for image, (score, window) in sorted(best.items(), key=lambda item: -item[1][0]):
            at = min(int(np.searchsorted(self.labels, image)), len(self.labels) - 1)
            if self.labels[at] != image or self.ids[at] == exclude:
                continue
            left, top, side = (float(v) for v in self.seen[at])
            box = window_boxes(self.codec.windows[window:window + 1], self.codec.grid, (left, top, side))[0]
            results.append({"id": self.ids[at], "path": self.paths[at], "score": score,
                            "box": [round(float(v), 1) for v in box],
                            # the centre crop's margins are equal: the image's own size follows
                            "size": [round(2 * left + side), round(2 * top + side)]})
            if len(results) == k:
                break
        return results
