"""The embedding folder: the one place its format lives. ``byol-embed run`` writes it; the index, curation and
the server read it.

    emb/manifest.json              the committed generation: model (id, revision, weights sha256), layers, pooling,
                                   normalize, dtype, preprocessing, the input and its fingerprint, the generation's
                                   number, its shard files (``parts``) and what it changed
    emb/part-00000.parquet         one shard: id, path, error, sha256 (of the image's bytes), version (what the
                                   input's listing said of the file), locator (where its bytes are, to read them
                                   again with one read: ``storage.sources.read_located``; null in shards written
                                   before it existed), one fixed-size-list column per layer, and
                                   quality_<stat> (float32: size, brightness, contrast, blur, ... measured from the
                                   decoded pixels; null in error rows and in shards written before they existed)
    emb/part-g0002-00000.parquet   a later generation's shards: the new and changed images, and the shards that
                                   lost rows (``-r``), written again without them
    emb/part-00000.done            written after the shard: the shard is complete (a rerun keeps it)
    emb/pending.json               the run in progress: the generation it builds, on which, and its shard plan
    emb/generations/000002.json    each committed generation's manifest, kept (what changed when)
    emb/curation/                  duplicates, outliers, leaks (``byol-embed dedup`` / ``outliers`` / ``leaks``)
    emb/.lock                      held by the writer (two runs never share a folder)
    emb/index/                     the FAISS index and its id table (``byol-embed index``)
    emb/regions/codec-<sha>.npz    a run with ``--regions``: the reduction its region codes were made with (the
                                   PCA fitted on a sample of the first run's regions, the windows of the grid)
    emb/regions/index/             the region index (``byol-embed index`` builds it where the shards have regions)

Regions. A run with ``--regions LAYER`` adds two columns to every shard: ``region_codes`` (each window of the
layer's grid as int8 codes, windows x dims a row) and ``region_seen`` (left, top, side: the square of the image, in
its pixels, that the model saw; a window's box follows from it and the codec's windows).

Generations. A run plans in ``pending.json``, writes its shards (each whole, then its done marker), and commits
by replacing ``manifest.json`` in one step (on disk a rename, on object storage one PUT, fenced by the lock): a
reader takes ``manifest.json`` once and reads the shards it lists, so it sees the old generation or the new one,
never a mix. Shards are never rewritten in place; the files of the last ``keep`` generations stay (a reader one
generation behind still finds its shards), older ones are removed after the commit. A kill at any moment loses at
most the shards in flight: the rerun keeps the pending generation's done shards.

Every write goes through :class:`storage.store.Store`, so the same code writes a folder on disk and on object
storage (``--output s3://bucket/emb/``). The lock (:mod:`storage.lock`) is a ``flock`` on disk and a lease object
on object storage that fences every later write of its run; a rerun takes over a lock whose owner is gone (the
same host, container and process namespace with its process dead, or not renewed for its lease, ``--lock-ttl``),
or any lock with ``--break-lock``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import FolderError
from storage.sources import ImageSource, open_source
from storage.store import Store, as_store
from storage.vectors import l2_normalize

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PENDING = "pending.json"
GENERATIONS = "generations"
CURATION = "curation"  # the curation results' folder (declared one by one in curation/results.py)
INDEX = "index"  # the FAISS index and its id table
REGIONS = "regions"  # a run's region codec and the region index
REGION_CODES = "region_codes"
REGION_SEEN = "region_seen"
FORMAT = "byol-embeddings/2"
# image statistics per row (service/embed/image_stats.py computes them), stored as quality_<name> float32 columns
QUALITY_STATS = ("width", "height", "brightness", "contrast", "blur", "entropy", "noise", "sharpness", "shadows",
                 "highlights", "p1", "p99")
QUALITY_COLUMNS = tuple("quality_" + name for name in QUALITY_STATS)
FORMAT_1 = "byol-embeddings/1"  # one run, no generations: read as generation 1 once every shard is done
KEEP_GENERATIONS = 2  # the shards of the current and the previous generation stay (readers one behind)
# what every generation of a folder shares (the settings that change the vectors, and where the input is): another
# value is refused; the input's content may change (an append)
SETTINGS_FIELDS = ("model_id", "revision", "weights_sha256", "layers", "pooling", "normalize", "dtype",
                   "preprocessing", "decode", "input", "input_kind", "source_options", "regions")
# what a pending run must agree on to be resumed
IDENTITY_FIELDS = SETTINGS_FIELDS + ("input_fingerprint", "input_count", "shard_size", "generation",
                                     "base_generation")


def shard_name(index: int, generation: int = 1) -> str:
    """The name of a generation's shard ``index``: ``part-00000.parquet`` in the first, ``part-g0002-00000.parquet``
    after (never a name an earlier generation used: shards are never rewritten in place)."""
    return f"part-{index:05d}.parquet" if generation <= 1 else f"part-g{generation:04d}-{index:05d}.parquet"


def rewrite_name(index: int, generation: int) -> str:
    """A shard that lost rows in ``generation``, written again without them."""
    return f"part-g{generation:04d}-r{index:05d}.parquet"


def done_name(shard: int | str) -> str:
    """The done marker of a shard (its name, or its index in the first generation)."""
    name = shard_name(shard) if isinstance(shard, int) else shard
    return name[:-len(".parquet")] + ".done"


def codec_name(sha256: str) -> str:
    return f"{REGIONS}/codec-{sha256[:16]}.npz"


def generation_name(generation: int) -> str:
    return f"{GENERATIONS}/{generation:06d}.json"


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
    # a pending run's plan of new shards: [{"index", "start", "stop", "name"}] over its work list (the images it
    # embeds, in the input's order); empty in a committed manifest
    shards: list[dict[str, Any]] = field(default_factory=list)
    source_options: dict[str, str] = field(default_factory=dict)  # open_source's column options for the input
    generation: int = 0  # the committed generation (a pending run: the one it builds)
    parts: list[dict[str, Any]] = field(default_factory=list)  # its shard files: [{"name", "rows", "errors"}]
    base_generation: int = 0  # a pending run: the generation it builds on (0: none)
    work: dict[str, Any] = field(default_factory=dict)  # a pending run: its plan's digest and the shards it rewrites
    changes: dict[str, Any] = field(default_factory=dict)  # what this generation changed: added, changed, dropped...
    regions: dict[str, Any] = field(default_factory=dict)  # --regions: {"layer", "dims"}; empty: no regions
    # the codec the region codes were made with: {"file", "sha256", "windows", "grid"} (kept by every later
    # generation: appended images are reduced as the first run's were); empty before the first run fits it
    region_codec: dict[str, Any] = field(default_factory=dict)

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    @property
    def rows(self) -> int:
        """Rows in the committed generation (embedded and error rows)."""
        return sum(int(p["rows"]) for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()

    def save(self, folder: Path | Store, name: str = MANIFEST) -> None:
        as_store(folder).write_bytes(name, self.to_bytes())

    @classmethod
    def load(cls, folder: str | Path | Store) -> Manifest:
        """The committed generation. A folder whose first run has not finished has none, and says so."""
        store = as_store(folder)
        try:
            text = store.read_text(MANIFEST)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if store.exists(PENDING):
                raise FolderError(f"{store} has no finished generation yet: its first `byol-embed run` is running "
                                  "or was interrupted; rerun the same command to finish it") from None
            raise FolderError(f"{store} has no {MANIFEST}: not an output folder of `byol-embed run`") from None
        manifest = cls(**json.loads(text))
        if manifest.format == FORMAT_1:
            manifest = _from_format_1(store, manifest)
        return manifest

    @classmethod
    def load_pending(cls, folder: Path | Store) -> Manifest | None:
        store = as_store(folder)
        try:
            return cls(**json.loads(store.read_text(PENDING)))
        except FileNotFoundError:
            return None

    def pick_layer(self, asked: str | None) -> str:
        """The layer a command works on: ``asked`` (checked), else ``avgpool``, else the folder's only layer."""
        if asked is None:
            if "avgpool" in self.layers or len(self.layers) != 1:
                asked = "avgpool"
            else:
                asked = self.layers[0]
        if asked not in self.layers:
            raise FolderError(f"layer {asked!r} was not embedded; this folder has {', '.join(self.layers)} (--layer)")
        return asked

    def differences(self, other: Manifest, fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in fields
                if getattr(self, name) != getattr(other, name)]

    def made_with_other_weights(self, config: Any) -> bool:
        """True when both the manifest and ``config`` record weights and they are not the same ones."""
        return bool(self.weights_sha256 and config.weights_sha256 and self.weights_sha256 != config.weights_sha256)

    def same_vectors(self, other: Manifest) -> list[str]:
        """What differs between two folders' model, layer set, pooling and preprocessing (empty: their vectors
        compare)."""
        fields = ("weights_sha256" if self.weights_sha256 and other.weights_sha256 else "model_id", "architecture",
                  "pooling", "normalize", "preprocessing", "decode")
        return self.differences(other, fields)

    def schema_metadata(self) -> dict[bytes, bytes]:
        keep = ("model_id", "revision", "weights_sha256", "pooling", "normalize", "dtype", "layers", "dims")
        return {b"byol": json.dumps({k: getattr(self, k) for k in keep}).encode()}


def _from_format_1(store: Store, old: Manifest) -> Manifest:
    """A folder of the first format (one run, no generations) as generation 1, once every shard is done."""
    done = set(store.names("part-*.done"))
    missing = [s for s in old.shards if done_name(s["index"]) not in done]
    if missing:
        raise FolderError(f"{store} was written by an older version and {len(missing)} of {len(old.shards)} shards "
                          "are not done; run `byol-embed run` again with --overwrite")
    parts = [{"name": shard_name(s["index"]), "rows": s["stop"] - s["start"], "errors": None} for s in old.shards]
    return replace(old, format=FORMAT, generation=1, parts=parts, shards=[])


def plan_shards(count: int, shard_size: int, generation: int = 1) -> list[dict[str, Any]]:
    """Consecutive ranges of the work list; deterministic for a given list, shard size and generation."""
    if shard_size <= 0:
        raise FolderError(f"--shard-size must be positive, got {shard_size}")
    return [{"index": i, "start": start, "stop": min(start + shard_size, count), "name": shard_name(i, generation)}
            for i, start in enumerate(range(0, count, shard_size))]


def prepare_folder(folder: Path | Store, pending: Manifest) -> list[int]:
    """Record the run's plan (``pending.json``); returns the indices of its shards still to do. A pending run
    with another plan (the input changed again, other settings) is dropped with its shards."""
    store = as_store(folder)
    store.mkdir()
    if store.conditional:  # the version the commit must find (None: no generation yet), see commit_generation
        pending.work["manifest_version"] = store.version(MANIFEST)
    old = Manifest.load_pending(store)
    if old is not None and old.differences(pending, IDENTITY_FIELDS + ("shards", "work")):
        logger.info("the interrupted run's plan no longer holds (%s); its shards are written again",
                    "; ".join(old.differences(pending, IDENTITY_FIELDS + ("work",)))[:300] or "its shard plan")
        _remove_pending_files(store, old)
    for stale in store.names(".part-*"):  # a killed run's shard in flight (never on object storage): rewritten
        store.remove(stale)
    pending.save(store, PENDING)
    done = set(store.names("part-*.done"))  # one listing, not one request per shard
    return [s["index"] for s in pending.shards if done_name(s["name"]) not in done]


def _remove_pending_files(store: Store, pending: Manifest) -> None:
    names = [s["name"] for s in pending.shards] + [r["name"] for r in pending.work.get("rewrites", [])]
    for name in names:
        store.remove(done_name(name))
        store.remove(name)


def clear_outputs(folder: Path | Store) -> None:
    """Remove a run (``--overwrite``): the done markers first, so that a reader never takes a shard whose
    marker outlived it; then the shards, leftovers, the index and the curation results made from them; the
    manifest last."""
    store = as_store(folder)
    for pattern in ("part-*.done", "part-*.parquet", ".part-*"):
        for name in store.names(pattern):
            store.remove(name)
    store.remove_tree(INDEX)
    store.remove_tree(REGIONS)
    store.remove_tree(CURATION)
    store.remove_tree(GENERATIONS)
    store.remove(PENDING)
    store.remove(MANIFEST)


def commit_generation(folder: Path | Store, pending: Manifest, keep: int = KEEP_GENERATIONS) -> Manifest:
    """Make the pending run the folder's generation: its parts are the base's parts it keeps, the shards it
    rewrote and its new shards (rows and errors from their done markers). ``manifest.json`` is replaced in one
    step; then the files no generation of the last ``keep`` lists are removed."""
    store = as_store(folder)
    rewrites = pending.work.get("rewrites", [])
    gone = set(pending.work.get("removed_parts", [])) | {r["from"] for r in rewrites}
    base = Manifest.load(store).parts if pending.base_generation else []
    parts = [p for p in base if p["name"] not in gone]
    for name in [r["name"] for r in rewrites] + [s["name"] for s in pending.shards]:
        marker = json.loads(store.read_text(done_name(name)))
        parts.append({"name": name, "rows": marker["rows"], "errors": marker["errors"]})
    committed = replace(pending, shards=[], work={}, base_generation=0, parts=parts)
    data = committed.to_bytes()
    if store.conditional and "manifest_version" in pending.work:
        # a writer that paused past its lease (between its last check and here) must not roll back the generation
        # the next writer committed: the manifest is replaced only at the version this run started from, and
        # first (the winner owns the generation's number), then its record
        expected = pending.work["manifest_version"]
        won = store.create(MANIFEST, data) if expected is None else store.replace_if(MANIFEST, data, expected)
        if won is None:
            raise FolderError(_overtaken(store, committed.generation))
        store.write_bytes(generation_name(committed.generation), data)
    else:  # stores without conditional writes: the lease was checked, then the record and the manifest (the commit)
        store.write_bytes(generation_name(committed.generation), data)
        store.write_bytes(MANIFEST, data)
    store.remove(PENDING)
    collect_garbage(store, keep, committed)
    return committed


def _overtaken(store: Store, generation: int) -> str:
    return (f"{store}: another writer committed generation {generation} (or later) while this run was paused past "
            "its lease; this run's generation is not committed, and the other writer's stands. Run the command "
            "again to add what this run would have")


def collect_garbage(folder: Path | Store, keep: int = KEEP_GENERATIONS, current: Manifest | None = None) -> list[str]:
    """Remove the shards and markers that none of the last ``keep`` generations lists (nor a pending run plans);
    returns their names. ``current``: the committed manifest, when the caller has it."""
    store = as_store(folder)
    current = current or Manifest.load(store)
    listed = {p["name"] for p in current.parts}
    for number in range(max(1, current.generation - keep + 1), current.generation):
        try:
            listed |= {p["name"] for p in json.loads(store.read_text(generation_name(number)))["parts"]}
        except FileNotFoundError:
            pass
    pending = Manifest.load_pending(store)
    if pending is not None:
        listed |= {s["name"] for s in pending.shards} | {r["name"] for r in pending.work.get("rewrites", [])}
    removed = []
    for name in store.names("part-*.done") + store.names("part-*.parquet"):
        shard = name if name.endswith(".parquet") else name[:-len(".done")] + ".parquet"
        if shard not in listed:
            store.remove(name)
            removed.append(name)
    return removed


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
    versions: list[str | None] = field(default_factory=list)  # the listing's word on each file; empty: none
    name: str = ""  # the shard's file name (default: the first generation's name of ``index``)
    quality: np.ndarray | None = None  # (rows, len(QUALITY_STATS)) float32, NaN where not measured; None: none
    locators: list[str | None] = field(default_factory=list)  # where each image's bytes are; empty: not recorded
    region_codes: np.ndarray | None = None  # (rows, windows, dims) int8 where the run has regions
    region_seen: np.ndarray | None = None  # (rows, 3) float32: left, top, side of the square the model saw

    def __post_init__(self) -> None:
        self.name = self.name or shard_name(self.index)

    @property
    def error_count(self) -> int:
        return sum(e is not None for e in self.errors)


def arrow_schema(manifest: Manifest):
    import pyarrow as pa

    value = pa.float16() if manifest.dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("path", pa.string(), nullable=False),
              pa.field("error", pa.string()), pa.field("sha256", pa.string()), pa.field("version", pa.string()),
              pa.field("locator", pa.string())]
    fields += [pa.field(layer, pa.list_(value, manifest.dims[layer])) for layer in manifest.layers]
    fields += [pa.field(name, pa.float32()) for name in QUALITY_COLUMNS]
    if manifest.regions:
        width = int(manifest.region_codec["windows"]) * int(manifest.regions["dims"])
        fields += [pa.field(REGION_CODES, pa.list_(pa.int8(), width)), pa.field(REGION_SEEN, pa.list_(pa.float32(), 3))]
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
    versions = rows.versions or [None] * len(rows.ids)
    locators = rows.locators or [None] * len(rows.ids)
    columns = [pa.array(rows.ids, pa.string()), pa.array(rows.paths, pa.string()), pa.array(rows.errors, pa.string()),
               pa.array(digests, pa.string()), pa.array(versions, pa.string()), pa.array(locators, pa.string())]
    for layer in manifest.layers:
        dim = manifest.dims[layer]
        vectors = rows.vectors[layer].astype(np.float16 if manifest.dtype == "float16" else np.float32, copy=False)
        flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), schema.field(layer).type.value_type)
        # a fixed-size list with nulls where the image failed: the child values there are never read
        mask = pa.array(~ok) if not ok.all() else None
        columns.append(pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask))
    quality = rows.quality if rows.quality is not None else np.full((len(rows.ids), len(QUALITY_COLUMNS)), np.nan)
    for c in range(len(QUALITY_COLUMNS)):
        values = np.asarray(quality[:, c], np.float32)
        columns.append(pa.array(values, pa.float32(), mask=np.isnan(values)))
    if manifest.regions:
        mask = pa.array(~ok) if not ok.all() else None
        codes = np.ascontiguousarray(rows.region_codes, np.int8).reshape(-1)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(codes, pa.int8()), schema.field(REGION_CODES).type.list_size,
                                                         mask=mask))
        seen = np.ascontiguousarray(rows.region_seen, np.float32).reshape(-1)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(seen, pa.float32()), 3, mask=mask))
    table = pa.Table.from_arrays(columns, schema=schema)
    # durable before its done marker is written
    store.write_with(rows.name, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                           row_group_size=SHARD_ROW_GROUP))
    ack = {"index": rows.index, "name": rows.name, "rows": len(rows.ids), "errors": rows.error_count,
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
    name = ack.get("name") or shard_name(ack["index"])
    as_store(folder).write_text(done_name(name), json.dumps({"rows": ack["rows"], "errors": ack["errors"]}) + "\n")


def rewrite_shard(folder: Path | Store, source: str, name: str, keep: list[int]) -> dict[str, Any]:
    """Write the rows ``keep`` (positions) of the shard ``source`` as the new shard ``name`` (a shard that lost
    rows to an append: no image is decoded again), then its done marker."""
    import pyarrow.parquet as pq

    store = as_store(folder)
    table = open_parquet(store, store.path(source)).read().take(keep)
    store.write_with(name, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=SHARD_ROW_GROUP))
    embedded = table.column("error").null_count  # rows without an error
    ack = {"index": -1, "name": name, "rows": table.num_rows, "errors": table.num_rows - embedded, "error_examples": []}
    mark_done(store, ack)
    return ack


def finished_shards(folder: Path | Store, manifest: Manifest) -> list[str]:
    """The paths (inside the store's filesystem) of the committed generation's shards, in order."""
    store = as_store(folder)
    return [store.path(p["name"]) for p in manifest.parts]


def complete_shards(folder: Path | Store, manifest: Manifest, layer: str) -> list[str]:
    """Every shard of the committed generation, which embedded ``layer``; a clear error for another layer."""
    if layer not in manifest.layers:
        raise FolderError(f"layer {layer!r} was not embedded; this folder has {', '.join(manifest.layers)}")
    return finished_shards(folder, manifest)


def read_columns(folder: Path | Store, manifest: Manifest, columns: tuple[str, ...] = ("id", "sha256", "version",
                                                                                        "error")):
    """The committed generation's ``columns`` (those a shard lacks as nulls) with each row's ``part`` (index into
    ``manifest.parts``) and ``row`` in it: a few small columns, never the vectors."""
    import pyarrow as pa

    store = as_store(folder)
    tables = []
    for number, path in enumerate(finished_shards(store, manifest)):
        parquet = open_parquet(store, path)
        names = parquet.schema_arrow.names
        table = parquet.read(columns=[c for c in columns if c in names])
        n = table.num_rows
        for column in columns:
            if column not in names:
                table = table.append_column(column, pa.nulls(n, pa.string()))
        table = table.select(list(columns))
        table = table.append_column("part", pa.array(np.full(n, number, np.int32)))
        tables.append(table.append_column("row", pa.array(np.arange(n, dtype=np.int64))))
    if not tables:
        return pa.table({**{c: pa.array([], pa.string()) for c in columns}, "part": pa.array([], pa.int32()),
                         "row": pa.array([], pa.int64())})
    return pa.concat_tables(tables)


# Rows per row group of a shard: a lookup of one row's vector (``/search`` by id on an index that keeps no exact
# vectors) reads one row group: 256 x 512 float32 is 0.5 MB, where a whole 10 000-row shard is 20 MB
SHARD_ROW_GROUP = 256

# Parquet read as a stream: pyarrow's default (pre_buffer) reads every column chunk of the file ahead of the
# batches asked for, so iterating 200 000 x 512 vectors peaked at 637 MB; streamed in 8 MB reads, 270 MB
STREAMED = {"pre_buffer": False, "buffer_size": 8 << 20}


def open_parquet(store: Store, path: str):
    """A ``pyarrow.parquet.ParquetFile`` of a shard path from :func:`finished_shards` (pyarrow reads local disk
    natively, other stores through fsspec), read as a stream (:data:`STREAMED`)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, filesystem=store.fs, **STREAMED)


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
            l2_normalize(out, out=out)
            embedded.append(len(ids) + np.flatnonzero(ok))
            filled += len(block)
            ids += batch.column("id").to_pylist()
            paths += batch.column("path").to_pylist()
            errors += batch_errors
            digests += batch.column("sha256").to_pylist() if "sha256" in names else [None] * len(batch)
    return Rows(ids, paths, errors, digests, vectors[:filled],
                np.concatenate(embedded) if embedded else np.zeros(0, np.int64),
                [path.rsplit("/", 1)[-1] for path in shard_paths], [s.metadata.num_rows for s in shards])


@dataclass
class RegionRows:
    """Embedded rows of some shards with their region codes (``byol-embed run --regions``)."""

    ids: list[str]
    paths: list[str]
    sha256: list[str | None]
    shard: np.ndarray  # each row's shard (index into manifest.parts)
    row: np.ndarray  # its row in that shard
    seen: np.ndarray  # (n, 3) float32: left, top, side of the square the model saw, in the image's pixels
    codes: np.ndarray | None = None  # (n, windows x dims) int8


def iter_region_rows(folder: Path | Store, manifest: Manifest, parts: list[str],
                     wanted: dict[str, set[int]] | None = None, batch_size: int = 4096):
    """The embedded rows of the shards ``parts`` (names; of ``wanted[name]``'s rows where given) with their region
    codes, a record batch at a time (:class:`RegionRows`)."""
    store = as_store(folder)
    names = [p["name"] for p in manifest.parts]
    for name in parts:
        parquet = open_parquet(store, store.path(name))
        if REGION_CODES not in parquet.schema_arrow.names:
            raise FolderError(f"{name} has no region codes (written before --regions); run again with --overwrite")
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=["id", "path", "sha256", "error",
                                                                          REGION_CODES, REGION_SEEN]):
            ok = np.array([e is None for e in batch.column("error").to_pylist()], bool)
            embedded = np.flatnonzero(ok)
            keep = embedded
            if wanted is not None:
                rows = wanted.get(name, set())
                keep = np.array([k for k in embedded if start + k in rows], np.int64)
            among = np.searchsorted(embedded, keep)  # flatten() holds the embedded rows only
            codes = batch.column(REGION_CODES).flatten().to_numpy(zero_copy_only=False).reshape(len(embedded), -1)
            seen = batch.column(REGION_SEEN).flatten().to_numpy(zero_copy_only=False).reshape(len(embedded), 3)
            ids, paths, sha = (batch.column(c).to_pylist() for c in ("id", "path", "sha256"))
            yield RegionRows([ids[k] for k in keep], [paths[k] for k in keep], [sha[k] for k in keep],
                             np.full(len(keep), names.index(name), np.int32), (start + keep).astype(np.int64),
                             seen[among].astype(np.float32), codes[among])
            start += batch.num_rows


def open_input(store: Store, manifest: Manifest) -> tuple[ImageSource, dict[str, int]]:
    """The folder's input as its ``byol-embed run`` read it, and each id's position in it (a listing: for a million
    objects on object storage, seconds to minutes). A folder made from vectors alone has none: said so."""
    if not manifest.input:
        raise FolderError(f"{store} was made from vectors (`byol-embed import`) without --input: its images cannot "
                          "be read; import it again with --input naming where the images are")
    source = open_source(manifest.input, **manifest.source_options, storage_options=store.options)
    return source, source.positions()
