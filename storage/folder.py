"""The embedding folder: the one place its format lives. ``byol-embed run`` writes it; the index, curation and
the server read it.

    emb/manifest.json              model (id, revision, weights sha256), layers, pooling, normalize, dtype,
                                   preprocessing, the input's fingerprint and the shard plan
    emb/part-00000.parquet         one shard: id, path, error, sha256 (of the image's bytes), one fixed-size-list
                                   column per layer
    emb/curation/                  duplicates.parquet, outliers.parquet (``byol-embed dedup`` / ``outliers``)
    emb/part-00000.done            written after the rename: the shard is complete
    emb/.lock                      held by the running job (two runs never share a folder)
    emb/index/                     the FAISS index and its id table (``byol-embed index``)

A shard is written as ``.part-00000.tmp-<pid>`` (not ending in ``.parquet``, so readers of ``*.parquet``
never see it), renamed, then marked done. A rerun keeps done shards untouched and (re)writes the rest, so
a kill at any moment loses at most the shards in flight.

Every write goes through :class:`storage.store.Store`, so the same code writes a folder on disk and on object
storage (``--output s3://bucket/emb/``): a shard is written whole (on disk a temporary name, then a rename; on
object storage one object), then its done marker; the marker is the commit, and a shard without one is rewritten
by the next run. The lock (:mod:`storage.lock`) is a ``flock`` on disk and a lease object on object storage that
fences every later write of its run; a rerun takes over a lock whose owner is gone (the same host, container and
process namespace with its process dead, or not renewed for its lease, ``--lock-ttl``), or any lock with
``--break-lock``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import FolderError
from storage.store import Store, as_store

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "byol-embeddings/1"
# what a rerun must agree on (the settings that change the vectors, and the input)
IDENTITY_FIELDS = ("model_id", "revision", "weights_sha256", "layers", "pooling", "normalize", "dtype",
                   "preprocessing", "input_fingerprint", "input_count", "shard_size", "decode")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def done_name(index: int) -> str:
    return f"part-{index:05d}.done"


@dataclass
class Manifest:
    model_id: str
    revision: str
    weights_sha256: str | None
    architecture: str
    layers: list[str]
    pooling: str
    normalize: bool
    dtype: str
    dims: dict[str, int]
    preprocessing: dict[str, Any]
    input: str
    input_kind: str
    input_fingerprint: str
    input_count: int
    shard_size: int
    decode: str = "exact"
    format: str = FORMAT
    shards: list[dict[str, int]] = field(default_factory=list)  # the plan: [{"index", "start", "stop"}]
    source_options: dict[str, str] = field(default_factory=dict)  # open_source's column options for the input

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: Path | Store) -> None:
        as_store(folder).write_text(MANIFEST, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path | Store) -> Manifest:
        store = as_store(folder)
        try:
            text = store.read_text(MANIFEST)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FolderError(f"{store} has no {MANIFEST}: not an output folder of `byol-embed run`") from None
        return cls(**json.loads(text))

    def differences(self, other: Manifest) -> list[str]:
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in IDENTITY_FIELDS
                if getattr(self, name) != getattr(other, name)]

    def made_with_other_weights(self, config: Any) -> bool:
        """True when both the manifest and ``config`` record weights and they are not the same ones."""
        return bool(self.weights_sha256 and config.weights_sha256 and self.weights_sha256 != config.weights_sha256)

    def schema_metadata(self) -> dict[bytes, bytes]:
        keep = ("model_id", "revision", "weights_sha256", "pooling", "normalize", "dtype", "layers", "dims")
        return {b"byol": json.dumps({k: getattr(self, k) for k in keep}).encode()}


def plan_shards(count: int, shard_size: int) -> list[dict[str, int]]:
    """Consecutive ranges of the input's order; deterministic for a given input and shard size."""
    if shard_size <= 0:
        raise FolderError(f"--shard-size must be positive, got {shard_size}")
    return [{"index": i, "start": start, "stop": min(start + shard_size, count)}
            for i, start in enumerate(range(0, count, shard_size))]


def prepare_folder(folder: Path | Store, manifest: Manifest, overwrite: bool) -> list[int]:
    """Create or check the output folder; returns the shard indices still to do.

    A folder with another manifest is refused unless ``overwrite`` (then its shards, markers and index go).
    """
    store = as_store(folder)
    store.mkdir()
    if store.exists(MANIFEST):
        old = Manifest.load(store)
        diffs = old.differences(manifest)
        if diffs and not overwrite:
            raise FolderError(f"{store} holds embeddings made with other settings or input ("
                              + "; ".join(diffs) + "); rerun with the same settings to resume, use another "
                              "--output, or pass --overwrite to start over")
        if diffs:
            logger.warning("--overwrite: removing the previous run's shards in %s", store)
            clear_outputs(store)
    for stale in store.names(".part-*"):  # a killed run's shard in flight (never on object storage): rewritten
        store.remove(stale)
    manifest.save(store)
    done = set(store.names("part-*.done"))  # one listing, not one request per shard
    return [s["index"] for s in manifest.shards if done_name(s["index"]) not in done]


def clear_outputs(folder: Path | Store) -> None:
    """Remove a run (``--overwrite``): the done markers first, so that a reader never takes a shard whose
    marker outlived it; then the shards, leftovers, the index and the curation results made from them; the
    manifest last."""
    store = as_store(folder)
    for pattern in ("part-*.done", "part-*.parquet", ".part-*"):
        for name in store.names(pattern):
            store.remove(name)
    store.remove_tree("index")
    store.remove_tree("curation")
    store.remove(MANIFEST)


@dataclass
class ShardRows:
    """One shard's rows in plan order: ids, paths, errors (None when embedded) and one array per layer
    (``(n, dim)``; rows with an error hold anything, they are written as null)."""

    index: int
    ids: list[str]
    paths: list[str]
    errors: list[str | None]
    vectors: dict[str, np.ndarray]
    sha256: list[str | None] = field(default_factory=list)  # of each image's bytes; empty: not recorded

    @property
    def error_count(self) -> int:
        return sum(e is not None for e in self.errors)


def arrow_schema(manifest: Manifest):
    import pyarrow as pa

    value = pa.float16() if manifest.dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("path", pa.string(), nullable=False),
              pa.field("error", pa.string()), pa.field("sha256", pa.string())]
    fields += [pa.field(layer, pa.list_(value, manifest.dims[layer])) for layer in manifest.layers]
    return pa.schema(fields, metadata=manifest.schema_metadata())


def write_shard(folder: Path | Store, manifest: Manifest, rows: ShardRows, *, mark: bool = True) -> dict[str, Any]:
    """Write one shard whole (streamed to a temporary file, then on disk renamed, on object storage uploaded as one
    object), then its done marker unless ``mark`` is False (the Ray driver marks it from the returned
    acknowledgement). Returns that acknowledgement: the shard's index, rows, errors and a few error examples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = as_store(folder)
    schema = arrow_schema(manifest)
    ok = np.array([e is None for e in rows.errors])
    digests = rows.sha256 or [None] * len(rows.ids)
    columns = [pa.array(rows.ids, pa.string()), pa.array(rows.paths, pa.string()), pa.array(rows.errors, pa.string()),
               pa.array(digests, pa.string())]
    for layer in manifest.layers:
        dim = manifest.dims[layer]
        vectors = rows.vectors[layer].astype(np.float16 if manifest.dtype == "float16" else np.float32, copy=False)
        flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), schema.field(layer).type.value_type)
        # a fixed-size list with nulls where the image failed: the child values there are never read
        mask = pa.array(~ok) if not ok.all() else None
        columns.append(pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask))
    table = pa.Table.from_arrays(columns, schema=schema)
    # durable before its done marker is written
    store.write_with(shard_name(rows.index), lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    ack = {"index": rows.index, "rows": len(rows.ids), "errors": rows.error_count,
           "error_examples": [f"{rows.ids[i]}: {e}" for i, e in enumerate(rows.errors) if e][:5]}
    if mark:
        mark_done(store, ack)
    return ack


def write_table(store: Store, name: str, table) -> None:
    """A Parquet file written whole: one object on object storage, an atomic rename on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    store.write_bytes(name, sink.getvalue().to_pybytes())


def mark_done(folder: Path | Store, ack: dict[str, Any]) -> None:
    """The commit of a shard: its done marker, written after the shard itself."""
    as_store(folder).write_text(done_name(ack["index"]), json.dumps({"rows": ack["rows"], "errors": ack["errors"]}) + "\n")


def finished_shards(folder: Path | Store, manifest: Manifest) -> list[str]:
    """The paths (inside the store's filesystem) of the shards with a done marker, in plan order."""
    store = as_store(folder)
    done = set(store.names("part-*.done"))
    return [store.path(shard_name(s["index"])) for s in manifest.shards if done_name(s["index"]) in done]


def complete_shards(folder: Path | Store, manifest: Manifest, layer: str) -> list[str]:
    """Every shard of a finished run that embedded ``layer``; a clear error for another layer or an unfinished run."""
    if layer not in manifest.layers:
        raise FolderError(f"layer {layer!r} was not embedded; this folder has {', '.join(manifest.layers)}")
    shards = finished_shards(folder, manifest)
    if len(shards) < manifest.shard_count:
        raise FolderError(f"{manifest.shard_count - len(shards)} of {manifest.shard_count} shards are not done; "
                          "finish the run first (rerun the same `byol-embed run` command)")
    return shards


def open_parquet(store: Store, path: str):
    """A ``pyarrow.parquet.ParquetFile`` of a shard path from :func:`finished_shards` (pyarrow reads local disk
    natively, other stores through fsspec)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, filesystem=store.fs)


@dataclass
class Rows:
    """The folder's rows in shard order: every id and path; the embedded ones' vectors (L2-normalized in
    place, float32) and their positions among all rows; the errors; the sha256 of each image's bytes."""

    ids: list[str]
    paths: list[str]
    errors: list[str | None]
    sha256: list[str | None]
    vectors: np.ndarray  # (embedded, dim)
    embedded: np.ndarray  # positions in ids of the vector rows
    shards: list[str] = field(default_factory=list)  # the shards read, in order (their names in the folder)
    shard_sizes: list[int] = field(default_factory=list)  # rows in each of them

    def locations(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the rows at ``positions`` live: (index into :attr:`shards`, row within that shard)."""
        starts = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        shard = np.searchsorted(starts, positions, side="right") - 1
        return shard.astype(np.int32), (positions - starts[shard]).astype(np.int64)


def load_rows(folder: Path | Store, manifest: Manifest, layer: str) -> Rows:
    """Read ``layer`` of a finished run into one preallocated float32 matrix, L2-normalized in place (peak: the
    matrix and one record batch), with every row's id, path, error and content hash."""

    store = as_store(folder)
    shard_paths = complete_shards(store, manifest, layer)
    shards = [open_parquet(store, s) for s in shard_paths]
    dim = manifest.dims[layer]
    vectors = np.empty((sum(s.metadata.num_rows for s in shards), dim), np.float32)
    ids: list[str] = []
    paths: list[str] = []
    errors: list[str | None] = []
    digests: list[str | None] = []
    embedded: list[np.ndarray] = []
    filled = 0
    for parquet in shards:  # in record batches: the transient memory is a batch, never a whole shard
        names = parquet.schema_arrow.names
        columns = ["id", "path", "error", layer] + (["sha256"] if "sha256" in names else [])
        for batch in parquet.iter_batches(batch_size=16384, columns=columns):
            batch_errors = batch.column("error").to_pylist()
            ok = np.array([e is None for e in batch_errors], bool)
            # flatten() keeps the embedded rows' values only (error rows are null lists)
            block = batch.column(layer).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            out = vectors[filled:filled + len(block)]
            out[:] = block
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
            embedded.append(len(ids) + np.flatnonzero(ok))
            filled += len(block)
            ids += batch.column("id").to_pylist()
            paths += batch.column("path").to_pylist()
            errors += batch_errors
            digests += batch.column("sha256").to_pylist() if "sha256" in names else [None] * len(batch)
    return Rows(ids, paths, errors, digests, vectors[:filled],
                np.concatenate(embedded) if embedded else np.zeros(0, np.int64),
                [path.rsplit("/", 1)[-1] for path in shard_paths], [s.metadata.num_rows for s in shards])
