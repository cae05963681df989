"""One shard in, its rows out: read, decode and preprocess in threads, batches through a backend.

Shared by the local engine and every Ray actor, so both give the same ids, order, errors and vectors. The
decode is exact (the library's ``preprocess``, which matches torchvision's eval transform); an unreadable,
corrupt or oversized image becomes a row with its ``error`` set, never a crash and never a missing row.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.image_stats import image_stats
from curation.regions import RegionCodec, crop_box
from hub.config import ModelConfig
from hub.errors import ImageDecodeError
from hub.layers import map_name, output_name
from hub.preprocess import decode_image, preprocess_one
from service.runtime.backend import Backend
from storage.folder import QUALITY_STATS, Manifest, ShardRows
from storage.sources import ImageSource
from storage.store import StorageError
from storage.vectors import l2_normalize

logger = logging.getLogger(__name__)
IO_THREADS = 8  # read tasks in flight per reader on object storage
READ_CHUNK = 8  # items per read task: their requests are sent together (one event-loop round trip for all)


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray | None
    error: str | None
    sha256: str | None = None  # of the image's bytes as read (exact duplicates), None when unreadable
    stats: tuple[float, ...] | None = None  # image_stats of the decoded pixels (quality columns)


def read_items(source: ImageSource, indices: list[int]) -> list[bytes | Decoded]:
    """Items' bytes (``source.read_many``: a remote source sends the requests together), each an error row where
    it cannot be read."""
    out: list[bytes | Decoded] = []
    for value in source.read_many(indices):
        if isinstance(value, StorageError):  # the store cannot be reached: the job stops, nothing is marked broken
            raise value
        out.append(Decoded(None, f"unreadable: {value.strerror or value}") if isinstance(value, OSError) else value)
    return out


def decode_item(source: ImageSource, index: int, config: ModelConfig, max_pixels: int) -> Decoded:
    """Read and preprocess one item; every failure becomes its error message."""
    blob = read_items(source, [index])[0]
    return blob if isinstance(blob, Decoded) else decode_blob(blob, config, max_pixels)


def decode_blob(blob: bytes, config: ModelConfig, max_pixels: int) -> Decoded:
    digest = hashlib.sha256(blob).hexdigest()
    try:
        img = decode_image(blob, max_pixels=max_pixels)
        return Decoded(preprocess_one(img, config.preprocessing), None, digest, image_stats(img))
    except ImageDecodeError as err:
        return Decoded(None, str(err), digest)
    except Exception as err:  # a decoder bug on one hostile file costs that row, not the job
        return Decoded(None, f"cannot decode: {type(err).__name__}: {err}", digest)


def _ordered(futures: Iterator[Future], window: int) -> Iterator[Decoded]:
    """The results of ``futures`` (a lazy iterator: each is started when taken) in order, at most ``window``
    started ahead (so a million-image shard never queues a million futures)."""
    from collections import deque

    pending: deque[Future] = deque(itertools.islice(futures, window))
    while pending:
        yield pending.popleft().result()
        pending.extend(itertools.islice(futures, 1))


def _settle(out: Future, compute: Callable[[], object]) -> None:
    try:
        out.set_result(compute())
    except BaseException as err:
        out.set_exception(err)


def _then(first: Future, fn: Callable[[object], object]) -> Future:
    """A future of ``fn(first's result)``, computed in whichever thread finishes ``first``."""
    out: Future = Future()
    first.add_done_callback(lambda done: _settle(out, lambda: fn(done.result())))
    return out


def _decoded_in(pool: Executor, blob: Future, config: ModelConfig, max_pixels: int) -> Future:
    """A future of ``blob``'s decode, submitted to ``pool`` as soon as its bytes are in (nobody waits in between);
    a read that failed is its error row, with nothing to decode."""
    out: Future = Future()

    def after(done: Future) -> None:
        try:
            value = done.result()
            if isinstance(value, Decoded):
                out.set_result(value)
                return
            decoding = pool.submit(decode_blob, value, config, max_pixels)
        except BaseException as err:  # a read that raised, or a pool shut down (the job is stopping)
            out.set_exception(err)
            return
        decoding.add_done_callback(lambda d: _settle(out, d.result))

    blob.add_done_callback(after)
    return out


def read_ahead(source: ImageSource, config: ModelConfig, pool: Executor, indices: Iterable[int], *, batch_size: int,
               max_pixels: int) -> Iterator[Decoded]:
    """The items at ``indices``, decoded in ``pool`` a bounded window ahead, in order. One iterator over several
    shards keeps the window full across their boundaries (the model never waits for a new shard's first batch).

    A remote source (object storage) is read by its own I/O threads, ``READ_CHUNK`` items a task: waiting on the
    network takes no core, so many reads are in flight while the decode pool stays at the cores' count (more
    decoders would only preempt inference)."""
    window = max(batch_size * 4, 16)
    if not getattr(source, "waits_on_network", False):
        return _ordered((pool.submit(decode_item, source, i, config, max_pixels) for i in indices), window)
    return _remote_read_ahead(source, config, pool, indices, window, max_pixels)


def _remote_read_ahead(source: ImageSource, config: ModelConfig, pool: Executor, indices: Iterable[int], window: int,
                       max_pixels: int) -> Iterator[Decoded]:
    from concurrent.futures import ThreadPoolExecutor

    reader = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="byol-read")
    it = iter(indices)

    def futures() -> Iterator[Future]:
        while chunk := list(itertools.islice(it, READ_CHUNK)):
            read = reader.submit(read_items, source, chunk)
            for k in range(len(chunk)):
                yield _decoded_in(pool, _then(read, lambda blobs, k=k: blobs[k]), config, max_pixels)

    try:
        yield from _ordered(futures(), window)
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def embed_shard(source: ImageSource, manifest: Manifest, config: ModelConfig, backend: Backend, shard: dict[str, Any],
                pool: Executor, *, batch_size: int, max_pixels: int,
                on_images: Callable[[int], None] | None = None, decoded: Iterator[Decoded] | None = None,
                codec: RegionCodec | None = None, timings: dict[str, float] | None = None) -> ShardRows:
    """Embed the items ``shard["start"]:shard["stop"]`` of ``source`` in order (``decoded``: a ``read_ahead``
    already running over these items, and maybe the next shards'; the shard takes exactly its own from it).
    ``codec``: the folder's region codec where the run has regions (the backend then gives the layer's maps);
    ``timings["regions_s"]`` adds the seconds spent encoding them."""
    start, stop = shard["start"], shard["stop"]
    count = stop - start
    names = {layer: output_name(layer, manifest.pooling) for layer in manifest.layers}
    vectors = {layer: np.zeros((count, manifest.dims[layer]), np.float32) for layer in manifest.layers}
    errors: list[str | None] = [None] * count
    digests: list[str | None] = [None] * count
    quality = np.full((count, len(QUALITY_STATS)), np.nan, np.float32)
    region_layer = manifest.regions.get("layer") if manifest.regions else None
    codes = seen = None
    if region_layer:
        if codec is None:
            raise ValueError("a run with regions needs the folder's region codec")
        codes = np.zeros((count, len(codec.windows), codec.dims), np.int8)
        seen = np.zeros((count, 3), np.float32)
    prep = config.preprocessing
    batch: list[np.ndarray] = []
    rows: list[int] = []

    def flush() -> None:
        if not batch:
            return
        out = backend.run(np.stack(batch))
        for layer, name in names.items():
            values = out[name].reshape(len(batch), -1).astype(np.float32, copy=False)
            if manifest.normalize:
                values = l2_normalize(values)
            vectors[layer][rows] = values
        if region_layer:
            started = time.perf_counter()
            codes[rows] = codec.encode_maps(out[map_name(region_layer)])
            if timings is not None:
                timings["regions_s"] = timings.get("regions_s", 0.0) + time.perf_counter() - started
        if on_images:
            on_images(len(batch))
        batch.clear()
        rows.clear()

    if decoded is None:
        decoded = read_ahead(source, config, pool, range(start, stop), batch_size=batch_size, max_pixels=max_pixels)
    for row, item in enumerate(itertools.islice(decoded, count)):
        digests[row] = item.sha256
        if item.stats is not None:
            quality[row] = item.stats
            if seen is not None:
                seen[row] = crop_box(int(item.stats[0]), int(item.stats[1]), prep.resize_size, prep.crop_size)
        if item.error is not None:
            errors[row] = item.error
            if on_images:
                on_images(1)
            continue
        batch.append(item.pixels)
        rows.append(row)
        if len(batch) >= batch_size:
            flush()
    flush()
    return ShardRows(shard["index"], [source.item_id(i) for i in range(start, stop)],
                     [source.item_path(i) for i in range(start, stop)], errors, vectors, digests,
                     [source.item_version(i) for i in range(start, stop)], shard.get("name", ""), quality,
                     [source.item_locator(i) for i in range(start, stop)], codes, seen)
