"""The output folder of ``byol-embed run``: manifest, shard plan, Parquet shards written atomically, resume.

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

On object storage (``--output s3://bucket/emb/``, through :class:`hub.storage.Store`) there is no rename: each
shard is written as one whole object, then its done marker; the marker is the commit, and a shard object without
one is rewritten by the next run. The lock is a lease object written only conditionally (S3's ``If-None-Match`` and
``If-Match``) that fences every later write of its run (:class:`FolderLock`); a rerun takes over a lock whose owner
is gone (the same host, container and process namespace with its process dead, or not renewed for its lease,
``--lock-ttl``), or any lock with ``--break-lock``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hub.errors import HubError
from hub.files import durable_replace
from hub.storage import Store, as_store

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT = "byol-embeddings/1"
# what a rerun must agree on (the settings that change the vectors, and the input)
LOCK_TTL_S = 600.0  # the lease: a remote lock not renewed for this long belongs to a dead or stalled run
IDENTITY_FIELDS = ("model_id", "revision", "weights_sha256", "layers", "pooling", "normalize", "dtype",
                   "preprocessing", "input_fingerprint", "input_count", "shard_size", "decode")


class EmbedJobError(HubError):
    """A run that cannot start or continue: a mismatched rerun, a locked folder, bad settings."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def done_name(index: int) -> str:
    return f"part-{index:05d}.done"


def done_marker(folder: Path, index: int) -> Path:
    return Path(folder) / done_name(index)


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
            raise EmbedJobError(f"{store} has no {MANIFEST}: not an output folder of `byol-embed run`") from None
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
        raise EmbedJobError(f"--shard-size must be positive, got {shard_size}")
    return [{"index": i, "start": start, "stop": min(start + shard_size, count)}
            for i, start in enumerate(range(0, count, shard_size))]


class LostLockError(EmbedJobError):
    """This run no longer holds its folder's lock: it stops before its next commit."""


def _process_identity() -> dict[str, Any]:
    """Who this process is, precisely enough to tell whether a lock's holder still runs: containers on one node
    share a hostname pattern and a boot id, but not a pid namespace."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""

    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_ns = ""
    return {"host": socket.gethostname(), "boot_id": read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns,
            "pid": os.getpid()}


class FolderLock:
    """One writer per output folder (``run``, ``index``, ``dedup``, ``outliers``).

    On disk an exclusive ``flock`` on ``folder/.lock``, released by the kernel when the process dies. On object
    storage a lease object: created with ``If-None-Match: *``, renewed every ``ttl_s / 4`` with ``If-Match`` on
    the version this run wrote last, taken over (a holder that is gone, or silent for ``ttl_s``, or
    ``--break-lock``) with ``If-Match`` on the version that was read, so two contenders can never both win. It
    fences the folder's store: before every write or removal, a run checks that the lock is still the version it
    wrote and that it renewed it within ``ttl_s``; a run that lost it (taken over, or stalled past its lease)
    stops with :class:`LostLockError` before its next commit. Stores without conditional writes say so, and
    take over a lock only with ``--break-lock``.
    """

    def __init__(self, folder: Path | Store, *, break_lock: bool = False, ttl_s: float = LOCK_TTL_S) -> None:
        if ttl_s <= 0:
            raise EmbedJobError(f"--lock-ttl must be positive, got {ttl_s:g}")
        self.store = as_store(folder)
        self.break_lock, self.ttl_s = break_lock, ttl_s
        self.handle = None
        self.path = self.store.local_path(LOCK) if not self.store.remote else None
        self.token = uuid.uuid4().hex
        self.version: str | None = None  # the lock object's version this run wrote last
        self.renewed = 0.0  # time.monotonic() of the last renewal
        self.lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> FolderLock:
        if self.store.remote:
            self._acquire_remote()
            self.store.fence = self.check
            return self
        self.handle = open(self.path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise EmbedJobError(f"another byol-embed run holds {self.path}; wait for it or use another --output") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return self

    # --- object storage: a lease ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps({**_process_identity(), "token": self.token, "started": self.started,
                           "heartbeat": time.time(), "ttl_s": self.ttl_s}).encode()

    def _acquire_remote(self) -> None:
        self.started = time.time()
        url = self.store.url(LOCK)
        version = self.store.create(LOCK, self._body())
        if version is None:
            holder, seen = self._holder()
            reason = self._stale(holder)
            if reason is None:
                age = time.time() - float(holder.get("heartbeat", 0))
                raise EmbedJobError(
                    f"another byol-embed run holds {url} (host {holder.get('host')}, pid {holder.get('pid')}, last "
                    f"heartbeat {age:.0f} s ago); wait for it, use another --output, or pass --break-lock if that "
                    f"run is dead (a lock not renewed for its lease, {float(holder.get('ttl_s', self.ttl_s)):.0f} s, "
                    "is taken over by itself)")
            if not self.store.conditional and not self.break_lock:
                raise EmbedJobError(f"{url} looks stale ({reason}), but {self.store.protocol} has no conditional "
                                    "writes, so taking it over could let two runs write at once; pass --break-lock "
                                    "once you know the other run is gone")
            logger.warning("taking over the lock %s: %s", url, reason)
            if self.store.conditional:  # only from the version read: a contender that moved first wins alone
                version = (self.store.replace_if(LOCK, self._body(), seen) if seen is not None
                           else self.store.create(LOCK, self._body()))
            else:
                self.store.write_bytes(LOCK, self._body())
                version = self.store.version(LOCK)
            if version is None:
                raise EmbedJobError(f"another run took the lock {url} at the same moment; retry")
        if not self.store.conditional:
            logger.warning("%s has no conditional writes: the lock on %s is check-then-write, so two runs started "
                           "at the same moment could both proceed", self.store.protocol, url)
        self.version, self.renewed = version, time.monotonic()
        self._beat = threading.Thread(target=self._heartbeat, name="byol-embed-lock", daemon=True)
        self._beat.start()

    def _holder(self) -> tuple[dict[str, Any], str | None]:
        """The lock's content and the version it was read at (the version first: a change in between makes
        the takeover's ``If-Match`` fail, never succeed on content it did not see)."""
        version = self.store.version(LOCK)
        try:
            return json.loads(self.store.read_text(LOCK)), version
        except (FileNotFoundError, ValueError):
            return {}, version

    def _stale(self, holder: dict[str, Any]) -> str | None:
        if self.break_lock:
            return "--break-lock"
        if not holder:
            return "the lock is empty or gone"
        me = _process_identity()
        if all(holder.get(key) == me[key] and me[key] for key in ("host", "boot_id", "pid_ns")):
            try:
                os.kill(int(holder.get("pid", 0)), 0)
            except ProcessLookupError:
                return f"its run (pid {holder.get('pid')} on this host) is no longer running"
            except (PermissionError, ValueError):
                pass
        age = time.time() - float(holder.get("heartbeat", 0))
        ttl = float(holder.get("ttl_s", self.ttl_s))
        if age > ttl:
            return f"not renewed for {age:.0f} s (its lease is {ttl:.0f} s)"
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self.renew()
            if self.lost:
                return

    def renew(self) -> None:
        with self._mutex:
            if self.lost:
                return
            try:
                if self.store.conditional:
                    version = self.store.replace_if(LOCK, self._body(), self.version)
                else:
                    holder, _ = self._holder()
                    version = None
                    if holder.get("token") == self.token:
                        self.store.write_bytes(LOCK, self._body())
                        version = self.store.version(LOCK)
                if version is None:
                    self.lost = "another run took the lock over"
                    logger.error("lost the lock %s: %s; this run stops before its next commit",
                                 self.store.url(LOCK), self.lost)
                    return
                self.version, self.renewed = version, time.monotonic()
            except Exception as err:  # a missed renewal only shortens the lease
                logger.warning("lock renewal failed: %s (the lease ends %.0f s after the last renewal)", err,
                               self.ttl_s)

    def check(self, name: str = "") -> None:
        """The fence, before a write or removal of ``name``: this run still holds the lock."""
        if name == LOCK:
            return
        with self._mutex:  # not in the middle of a renewal (the lock's new version not yet recorded)
            if self.lost is None:
                idle = time.monotonic() - self.renewed
                if idle > self.ttl_s:
                    self.lost = (f"its lease was not renewed for {idle:.0f} s, longer than the lease "
                                 f"({self.ttl_s:.0f} s): another run may hold the folder now")
                elif self.store.conditional and self.store.version(LOCK) != self.version:
                    self.lost = "another run took the lock over"
        if self.lost is not None:
            raise LostLockError(f"this run no longer holds {self.store.url(LOCK)} ({self.lost}); it stopped before "
                                f"writing {name or 'more'}. The run that holds the lock now owns the folder")

    def __exit__(self, *exc: Any) -> None:
        if self.store.remote:
            self._stop.set()
            self.store.fence = None
            with self._mutex:
                if self.lost is None and self.version is not None:
                    if self.store.conditional:
                        self.store.remove_if(LOCK, self.version)
                    elif self._holder()[0].get("token") == self.token:
                        self.store.remove(LOCK)
            return
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


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
            raise EmbedJobError(f"{store} holds embeddings made with other settings or input ("
                                + "; ".join(diffs) + "); rerun with the same settings to resume, use another "
                                "--output, or pass --overwrite to start over")
        if diffs:
            logger.warning("--overwrite: removing the previous run's shards in %s", store)
            clear_outputs(store)
    if not store.remote:
        for stale in store.local_path().glob(".part-*.tmp-*"):  # a killed run's shard in flight: rewritten below
            stale.unlink(missing_ok=True)
    manifest.save(store)
    done = set(store.names("part-*.done"))  # one listing, not one request per shard
    return [s["index"] for s in manifest.shards if done_name(s["index"]) not in done]


def clear_outputs(folder: Path | Store) -> None:
    """Remove a run (``--overwrite``): the done markers first, so that a reader never takes a shard whose
    marker outlived it; then the shards, leftovers, the index and the curation results made from them; the
    manifest last."""
    store = as_store(folder)
    for pattern in ("part-*.done", "part-*.parquet", ".part-*.tmp-*"):
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
    """Write one shard whole (on disk: a temporary name, not ``*.parquet``, then a rename; on object storage: one
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
    name = shard_name(rows.index)
    if store.remote:
        write_table(store, name, table)
    else:  # streamed to a temporary file (no copy in memory), renamed
        final = store.local_path(name)
        tmp = final.parent / f".{final.stem}.tmp-{os.getpid()}-{threading.get_ident()}"
        pq.write_table(table, tmp, compression="zstd")
        durable_replace(tmp, final)  # on the disk before its done marker is written
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
        raise EmbedJobError(f"layer {layer!r} was not embedded; this folder has {', '.join(manifest.layers)}")
    shards = finished_shards(folder, manifest)
    if len(shards) < manifest.shard_count:
        raise EmbedJobError(f"{manifest.shard_count - len(shards)} of {manifest.shard_count} shards are not done; "
                            "finish the run first (rerun the same `byol-embed run` command)")
    return shards


def open_parquet(store: Store, path: str):
    """A ``pyarrow.parquet.ParquetFile`` of a shard path from :func:`finished_shards`, local or remote."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(store.fs.open(path, "rb") if store.remote else path)


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
