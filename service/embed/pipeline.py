"""One shard in, its rows out: read, decode and preprocess in threads, batches through a backend.

Shared by the local engine and every Ray actor, so both give the same ids, order, errors and vectors. The
decode is exact (the library's ``preprocess``, which matches torchvision's eval transform); an unreadable,
corrupt or oversized image becomes a row with its ``error`` set, never a crash and never a missing row.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from hub.config import ModelConfig
from hub.errors import ImageDecodeError
from hub.layers import output_name
from hub.preprocess import decode_image, preprocess_one
from hub.sources import ImageSource
from hub.storage import StorageError
from service.backends.base import Backend
from service.embed.shards import Manifest, ShardRows

logger = logging.getLogger(__name__)
IO_THREADS = 8  # read tasks in flight per reader on object storage
READ_CHUNK = 8  # items per read task: their requests are sent together (one event-loop round trip for all)


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray | None
    error: str | None
    sha256: str | None = None  # of the image's bytes as read (exact duplicates), None when unreadable


def read_item(source: ImageSource, index: int) -> bytes | Decoded:
    """One item's bytes, or its error row where it cannot be read."""
    try:
        return source.read(index)
    except StorageError:  # the store cannot be reached: the job stops (and resumes), no row is marked broken
        raise
    except OSError as err:
        return Decoded(None, f"unreadable: {err.strerror or err}")


def decode_item(source: ImageSource, index: int, config: ModelConfig, max_pixels: int) -> Decoded:
    """Read and preprocess one item; every failure becomes its error message."""
    blob = read_item(source, index)
    return blob if isinstance(blob, Decoded) else decode_blob(blob, config, max_pixels)


def decode_blob(blob: bytes, config: ModelConfig, max_pixels: int) -> Decoded:
    digest = hashlib.sha256(blob).hexdigest()
    try:
        return Decoded(preprocess_one(decode_image(blob, max_pixels=max_pixels), config.preprocessing), None, digest)
    except ImageDecodeError as err:
        return Decoded(None, str(err), digest)
    except Exception as err:  # a decoder bug on one hostile file costs that row, not the job
        return Decoded(None, f"cannot decode: {type(err).__name__}: {err}", digest)


def _ordered(start: Callable[[int], Future], indices: Iterable[int], window: int) -> Iterator[Decoded]:
    """The results of ``start(i)`` (a future) in the order of ``indices``, at most ``window`` started ahead (so a
    million-image shard never queues a million futures)."""
    futures = []
    it = iter(indices)
    for index in it:
        futures.append(start(index))
        if len(futures) >= window:
            break
    while futures:
        yield futures.pop(0).result()
        nxt = next(it, None)
        if nxt is not None:
            futures.append(start(nxt))


def _then(first: Future, pool: Executor, fn: Callable) -> Future:
    """A future of ``fn(first's result)`` run in ``pool`` once ``first`` is done; nobody waits in between."""
    out: Future = Future()

    def forward(done: Future) -> None:
        try:
            out.set_result(done.result())
        except BaseException as err:
            out.set_exception(err)

    def after(done: Future) -> None:
        try:
            value = done.result()
        except BaseException as err:
            out.set_exception(err)
            return
        if isinstance(value, Decoded):  # the read failed: its error row, nothing to decode
            out.set_result(value)
            return
        try:
            pool.submit(fn, value).add_done_callback(forward)
        except RuntimeError as err:  # the pool was shut down (the job is stopping)
            out.set_exception(err)

    first.add_done_callback(after)
    return out


def read_ahead(source: ImageSource, config: ModelConfig, pool: Executor, indices: Iterable[int], *, batch_size: int,
               max_pixels: int) -> Iterator[Decoded]:
    """The items at ``indices``, decoded in ``pool`` a bounded window ahead, in order. One iterator over several
    shards keeps the window full across their boundaries (the model never waits for a new shard's first batch).

    A remote source (object storage) is read by its own I/O threads, further ahead: waiting on the network takes
    no core, so many reads are in flight while the decode pool stays at the cores' count (more decoders would
    only preempt inference)."""
    window = max(batch_size * 4, 16)
    if getattr(source, "fs", None) is None:
        return _ordered(lambda i: pool.submit(decode_item, source, i, config, max_pixels), indices, window=window)
    return _remote_read_ahead(source, config, pool, indices, window, max_pixels)


def _remote_read_ahead(source: ImageSource, config: ModelConfig, pool: Executor, indices: Iterable[int], window: int,
                       max_pixels: int) -> Iterator[Decoded]:
    """Reads in the I/O pool, ``READ_CHUNK`` items a task (one ``read_many``: their requests go out together),
    then each item's decode in ``pool`` as soon as its bytes are in; yielded in order."""
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    reader = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="byol-read")
    it = iter(indices)
    pending: deque[Future] = deque()

    def decode(blob: bytes) -> Decoded:
        return decode_blob(blob, config, max_pixels)

    def top_up() -> None:
        while len(pending) < window:
            chunk = list(itertools.islice(it, READ_CHUNK))
            if not chunk:
                return
            read = reader.submit(read_items, source, chunk)
            pending.extend(_then(_item(read, k), pool, decode) for k in range(len(chunk)))

    try:
        top_up()
        while pending:
            yield pending.popleft().result()
            top_up()
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def read_items(source: ImageSource, indices: list[int]) -> list[bytes | Decoded]:
    """Several items' bytes at once (``source.read_many``), each an error row where it cannot be read."""
    out: list[bytes | Decoded] = []
    for value in source.read_many(indices):
        if isinstance(value, StorageError):  # the store cannot be reached: the job stops, nothing is marked broken
            raise value
        out.append(Decoded(None, f"unreadable: {value.strerror or value}") if isinstance(value, OSError) else value)
    return out


def _item(many: Future, k: int) -> Future:
    """A future of element ``k`` of ``many``'s list."""
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            out.set_result(f.result()[k])
        except BaseException as err:
            out.set_exception(err)

    many.add_done_callback(done)
    return out


def embed_shard(source: ImageSource, manifest: Manifest, config: ModelConfig, backend: Backend, shard: dict[str, int],
                pool: Executor, *, batch_size: int, max_pixels: int,
                on_images: Callable[[int], None] | None = None, decoded: Iterator[Decoded] | None = None) -> ShardRows:
    """Embed the items ``shard["start"]:shard["stop"]`` of ``source`` in order (``decoded``: a ``read_ahead``
    already running over these items, and maybe the next shards'; the shard takes exactly its own from it)."""
    start, stop = shard["start"], shard["stop"]
    count = stop - start
    names = {layer: output_name(layer, manifest.pooling) for layer in manifest.layers}
    vectors = {layer: np.zeros((count, manifest.dims[layer]), np.float32) for layer in manifest.layers}
    errors: list[str | None] = [None] * count
    digests: list[str | None] = [None] * count
    batch: list[np.ndarray] = []
    rows: list[int] = []

    def flush() -> None:
        if not batch:
            return
        out = backend.run(np.stack(batch))
        for layer, name in names.items():
            values = out[name].reshape(len(batch), -1).astype(np.float32, copy=False)
            if manifest.normalize:
                norms = np.linalg.norm(values, axis=1, keepdims=True)
                values = values / np.where(norms > 0, norms, 1.0)
            vectors[layer][rows] = values
        if on_images:
            on_images(len(batch))
        batch.clear()
        rows.clear()

    if decoded is None:
        decoded = read_ahead(source, config, pool, range(start, stop), batch_size=batch_size, max_pixels=max_pixels)
    for row, item in enumerate(itertools.islice(decoded, count)):
        digests[row] = item.sha256
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
                     [source.item_path(i) for i in range(start, stop)], errors, vectors, digests)
