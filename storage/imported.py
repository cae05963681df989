"""An embedding folder made from vectors a user already has (``byol-embed import``), so that every curation
command, the index, search and the page work on them.

    byol-embed import vectors.parquet --output emb/                     # id and embedding columns
    byol-embed import 's3://b/vecs/*.parquet' --output s3://b/emb/ --id-column key --vector-column clip
    byol-embed import vectors.npy --ids ids.npy --output emb/ --input /data/images   # + where the images are

Parquet (a file, a folder of ``.parquet`` or a glob; the vector column a list or fixed-size list of floats, one
length throughout) is read a record batch at a time, NumPy ``.npy`` vectors memory-mapped: a million 512-d vectors
are written shard by shard, in bounded memory. The folder is an ordinary one (generation 1, the same shards and
manifest), with ``architecture`` ``imported``: no model made the vectors, so nothing can be embedded like them
(search by image, calibration), and the commands say so. ``--input`` names the images the ids come from: each
id is found there (the id relative to the input, as ``byol-embed run`` makes them), for thumbnails, image quality
and exact copies; without it those say why they cannot run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from storage.errors import DataError, FolderError
from storage.folder import (
    MANIFEST,
    STREAMED,
    Manifest,
    ShardRows,
    clear_outputs,
    commit_generation,
    plan_shards,
    prepare_folder,
    write_shard,
)
from storage.location import filesystem, object_version, public_url, shown
from storage.lock import folder_lock
from storage.sources import open_source
from storage.store import Store

logger = logging.getLogger(__name__)
IMPORTED = "imported"  # the architecture of a folder made from vectors: no model made them
SHARD_ROWS = 50_000  # vectors per shard (a 512-d float32 shard: 100 MB in memory while it is written)
BATCH_ROWS = 8192


def is_imported(manifest: Manifest) -> bool:
    return manifest.architecture == IMPORTED


def _parquet_files(spec: str, storage_options: dict[str, Any] | None) -> tuple[Any, list[str]]:
    fs, path = filesystem(spec, storage_options)
    if any(c in path for c in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    else:
        files = [path] if fs.exists(path) else []
    if not files:
        raise DataError(f"{public_url(spec)}: no Parquet files there")
    return fs, files


def _parquet_batches(spec: str, id_column: str, vector_column: str,
                     storage_options: dict[str, Any] | None) -> tuple[int, int, str, Iterator[tuple[list, np.ndarray]]]:
    """The vectors' count, dimension, fingerprint and a stream of (ids, vectors) batches."""
    import pyarrow.parquet as pq  # the search extra

    fs, files = _parquet_files(spec, storage_options)
    count, dim = 0, None
    digest = hashlib.sha256()
    for path in files:
        parquet = pq.ParquetFile(path, filesystem=fs)
        names = parquet.schema_arrow.names
        for column in (id_column, vector_column):
            if column not in names:
                raise DataError(f"{path}: no column {column!r}; its columns: {names} (--id-column, --vector-column)")
        value = parquet.schema_arrow.field(vector_column).type
        if not hasattr(value, "value_type"):
            raise DataError(f"{path}: column {vector_column!r} is {value}, not a list of floats")
        count += parquet.metadata.num_rows
        digest.update(f"{path}\0{parquet.metadata.num_rows}\0{object_version(fs.info(path))}\n".encode())

    def batches() -> Iterator[tuple[list, np.ndarray]]:
        nonlocal dim
        for path in files:
            parquet = pq.ParquetFile(path, filesystem=fs, **STREAMED)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[id_column, vector_column]):
                column = batch.column(vector_column)
                if column.null_count:
                    raise DataError(f"{path}: {column.null_count} rows have no vector")
                flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                width = len(flat) // max(1, len(batch))
                if len(flat) != width * len(batch) or (dim is not None and width != dim):
                    raise DataError(f"{path}: the vectors' lengths differ (expected {dim or width}); every vector "
                                    "must have the same dimension")
                dim = width
                yield [str(v) for v in batch.column(id_column).to_pylist()], flat.reshape(len(batch), width)

    first = next(pq.ParquetFile(files[0], filesystem=fs).iter_batches(batch_size=1, columns=[vector_column]))
    dim = len(first.column(vector_column)[0])
    return count, dim, digest.hexdigest(), batches()


def _numpy_batches(spec: str, ids_spec: str | None,
                   storage_options: dict[str, Any] | None) -> tuple[int, int, str, Iterator[tuple[list, np.ndarray]]]:
    """Like :func:`_parquet_batches` for a ``.npy`` of vectors and its ids: the vectors are read from the file a
    batch at a time (not memory-mapped: mapped pages would count in the process's memory, and a remote file
    cannot be mapped)."""
    if ids_spec is None:
        raise DataError("NumPy vectors need --ids: a .npy (or .txt, one id a line) of the same length")
    fs, path = filesystem(spec, storage_options)
    with fs.open(path, "rb") as fh:
        shape, dtype, offset = _npy_header(fh, public_url(spec))
    ids_fs, ids_path = filesystem(ids_spec, storage_options)
    if ids_path.endswith(".npy"):
        with ids_fs.open(ids_path, "rb") as fh:
            ids = [str(v) for v in np.load(fh, allow_pickle=False).tolist()]
    else:
        ids = ids_fs.cat_file(ids_path).decode("utf-8").splitlines()
    count, dim = shape
    if len(ids) != count:
        raise DataError(f"--ids has {len(ids)} ids for {count} vectors")
    digest = hashlib.sha256(f"{path}\0{object_version(fs.info(path))}\0{ids_path}".encode()).hexdigest()

    def batches() -> Iterator[tuple[list, np.ndarray]]:
        with fs.open(path, "rb", block_size=8 << 20) as fh:
            fh.seek(offset)
            for start in range(0, count, BATCH_ROWS):
                rows = min(BATCH_ROWS, count - start)
                data = fh.read(rows * dim * dtype.itemsize)
                if len(data) != rows * dim * dtype.itemsize:
                    raise DataError(f"{public_url(spec)} ends after {start} of its {count} vectors (truncated)")
                yield ids[start:start + rows], np.frombuffer(data, dtype).reshape(rows, dim).astype(np.float32)

    return count, dim, digest, batches()


def _npy_header(fh, shown_path: str) -> tuple[tuple[int, int], np.dtype, int]:
    """A ``.npy`` file's shape, dtype and where its data starts, from its header (no data read)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        shape, fortran, dtype = (fmt.read_array_header_1_0(fh) if version == (1, 0)
                                 else fmt.read_array_header_2_0(fh))
    except ValueError as err:
        raise DataError(f"{shown_path}: not a .npy file ({err})") from None
    if len(shape) != 2:
        raise DataError(f"{shown_path}: vectors of shape {shape}; expected (count, dimension)")
    if dtype.kind not in "fiu" or dtype.hasobject:
        raise DataError(f"{shown_path}: vectors of dtype {dtype}; expected floats (float32, float16 or float64)")
    if fortran and shape[0] > 1 and shape[1] > 1:
        raise DataError(f"{shown_path}: saved in Fortran order; save np.ascontiguousarray(vectors) instead")
    return shape, dtype, fh.tell()


def import_vectors(vectors: str, output: str, *, id_column: str = "id", vector_column: str = "embedding",
                   ids: str | None = None, input: str | None = None, layer: str = "embedding",
                   shard_rows: int = SHARD_ROWS, overwrite: bool = False, break_lock: bool = False,
                   lock_ttl_s: float | None = None, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Write ``vectors`` as the embedding folder ``output`` (generation 1); returns its manifest."""
    if str(vectors).endswith(".npy"):
        count, dim, fingerprint, batches = _numpy_batches(vectors, ids, storage_options)
    else:
        count, dim, fingerprint, batches = _parquet_batches(vectors, id_column, vector_column, storage_options)
    if count == 0:
        raise DataError(f"{public_url(vectors)} holds no vectors")
    source = open_source(input, storage_options=storage_options) if input else None
    positions = source.positions() if source is not None else {}
    out = Store(output, storage_options)
    out.check()
    out.mkdir()
    manifest = Manifest(model_id="", revision="", weights_sha256=None, architecture=IMPORTED, layers=[layer],
                        pooling="gap", normalize=False, dtype="float32", dims={layer: dim}, preprocessing={},
                        input=shown(input) if input else "", input_kind=source.kind if source else "none",
                        input_fingerprint=fingerprint, input_count=count, shard_size=shard_rows,
                        source_options={})
    lock = {"ttl_s": lock_ttl_s} if lock_ttl_s else {}
    with folder_lock(out, break_lock=break_lock, **lock):
        if out.exists(MANIFEST):
            if not overwrite:
                raise FolderError(f"{out} already holds embeddings; pass --overwrite to replace them with these "
                                  "vectors, or choose another --output")
            clear_outputs(out)
        pending = replace(manifest, generation=1, shards=plan_shards(count, shard_rows),
                          work={"digest": fingerprint, "rewrites": [], "removed_parts": []},
                          changes={"added": count, "embed": count})
        prepare_folder(out, pending)
        seen: set[str] = set()
        missing = 0
        for shard, (shard_ids, block) in enumerate(_shards(batches, shard_rows)):
            repeated = [i for i in shard_ids if i in seen] or ([] if len(set(shard_ids)) == len(shard_ids) else
                                                                 [next(i for i in shard_ids if shard_ids.count(i) > 1)])
            if repeated:
                raise DataError(f"id {repeated[0]!r} appears more than once; ids must be unique")
            seen.update(shard_ids)
            where = [positions.get(i) for i in shard_ids]
            missing += sum(w is None for w in where) if source is not None else 0
            write_shard(out, pending, ShardRows(
                shard, shard_ids, [source.item_path(w) if w is not None else i for i, w in zip(shard_ids, where)]
                if source is not None else list(shard_ids), [None] * len(shard_ids), {layer: block},
                locators=[source.item_locator(w) if w is not None else None for w in where] if source else [],
                name=pending.shards[shard]["name"]))
        if source is not None and missing:
            logger.warning("%d of %d ids are not in --input %s: their images cannot be shown or measured", missing,
                           count, shown(input))
        return commit_generation(out, pending)


def _shards(batches: Iterator[tuple[list, np.ndarray]], rows: int) -> Iterator[tuple[list, np.ndarray]]:
    """The batches regrouped into shards of ``rows`` vectors."""
    ids: list = []
    blocks: list[np.ndarray] = []
    held = 0
    for batch_ids, block in batches:
        ids += batch_ids
        blocks.append(block)
        held += len(batch_ids)
        while held >= rows:
            merged = np.concatenate(blocks)
            yield ids[:rows], merged[:rows]
            ids, blocks, held = ids[rows:], [merged[rows:]], held - rows
    if held:
        yield ids, np.concatenate(blocks)
