"""Dynamic batching: images from concurrent requests are gathered into batches and run off the event loop.

The batcher knows nothing about HTTP: a full queue is :class:`BatcherFull`, a stopping one :class:`BatcherClosed`. ``submit`` enqueues one request's images (all or none: the queue is
bounded, which is the backpressure) and returns one future per image; a worker task takes up to
``max_batch_size`` images, waiting at most ``max_wait_ms`` for more once it has one, runs the backend in
a dedicated thread, and scatters the rows back. With ``streams`` > 1, up to that many batches run at once,
each in its own thread: a batch is formed as soon as a stream is free, so the cores never wait while the
clients of the batch just answered send their next images and those are decoded; and a batch waits
``max_wait_ms`` for more images only while no other batch runs (with one running, waiting would leave
the free stream's core idle; with one stream nothing changes). Images whose future was cancelled (the
client left or timed out) are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.runtime.backend import Backend

logger = logging.getLogger(__name__)


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class BatcherFull(Exception):
    """The queue is full: the images were not taken (retry shortly)."""


class BatcherClosed(Exception):
    """The batcher is stopping or stopped: it takes no more images."""


class Batcher:
    def __init__(self, backend: Backend, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 queue_size: int = 256, on_batch: Callable[[int], None] | None = None, streams: int = 1) -> None:
        self.backend = backend
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.streams = streams
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._pending = 0
        self._running = 0  # batches in a stream now
        self._executor = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="byol-infer")
        self._task: asyncio.Task | None = None
        self._accepting = False

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self._pending

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def accepting(self) -> bool:
        return self._accepting and self.alive

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="byol-batcher")
        self._accepting = True

    def submit(self, pixels: np.ndarray) -> list[asyncio.Future]:
        """Enqueue ``(N, 3, H, W)``; one future per image resolving to ``{output: (D,)}``."""
        if not self.accepting:
            raise BatcherClosed()
        if self._pending + len(pixels) > self.queue_size:
            raise BatcherFull()
        loop = asyncio.get_running_loop()
        futures = []
        for row in pixels:
            item = _Item(row, loop.create_future())
            self._queue.put_nowait(item)
            futures.append(item.future)
        self._pending += len(pixels)
        return futures

    async def _next_batch(self) -> list[_Item] | None:
        first = await self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + (self.max_wait if self._running == 0 else 0.0)
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:  # stop signal: finish this batch, then stop
                self._queue.put_nowait(None)
                break
            batch.append(item)
        return batch

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.streams)
        running: set[asyncio.Task] = set()
        while True:
            await free.acquire()
            batch = await self._next_batch()
            if batch is None:
                break
            self._pending -= len(batch)
            live = [item for item in batch if not item.future.done()]
            if not live:
                free.release()
                continue
            task = asyncio.create_task(self._run(live))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), free.release()))
        if running:  # stopping: the batches still running finish and answer
            await asyncio.gather(*running)

    async def _run(self, live: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        pixels = np.stack([item.pixels for item in live])
        self._running += 1
        try:
            outputs = await loop.run_in_executor(self._executor, self.backend.run, pixels)
        except Exception as err:  # the backend failed on this batch: fail its requests, keep serving
            logger.exception("inference failed on a batch of %d", len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(RuntimeError(f"inference failed: {err}"))
            return
        finally:
            self._running -= 1
        if self.on_batch:
            self.on_batch(len(live))
        for i, item in enumerate(live):
            if not item.future.done():
                item.future.set_result({name: value[i] for name, value in outputs.items()})

    async def stop(self) -> None:
        """Stop accepting, finish what is queued, then stop the worker."""
        self._accepting = False
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)
