"""The batcher: concurrent requests gathered into batches, rows scattered back in order, streams that run batches
at once, a bounded queue, cancelled images dropped before the model, a drain that finishes what is queued."""

import asyncio
import threading
import time

import pytest

from service.runtime.batcher import Batcher, BatcherClosed, BatcherFull
from tests.support.backends import SlowBackend, pixels


def test_batches_gather_concurrent_requests_and_scatter_in_order():
    async def scenario():
        backend = SlowBackend()
        batcher = Batcher(backend, max_batch_size=8, max_wait_ms=20, queue_size=64)
        await batcher.start()
        futures = [batcher.submit(pixels(3, 100 * r)) for r in range(4)]
        results = [await asyncio.gather(*f) for f in futures]
        await batcher.stop()
        return backend, results

    backend, results = asyncio.run(scenario())
    assert sum(backend.batches) == 12 and max(backend.batches) > 3  # requests were batched together
    for r, rows in enumerate(results):
        assert [row["avgpool"][0] for row in rows] == [100 * r + i for i in range(3)]


def test_streams_run_batches_at_once_and_each_image_gets_its_own_row():
    class OverlapBackend(SlowBackend):
        def __init__(self) -> None:
            super().__init__(delay=0.1)
            self.running = self.most = 0
            self.lock = threading.Lock()

        def run(self, pixels):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return super().run(pixels)
            finally:
                with self.lock:
                    self.running -= 1

    async def scenario(streams):
        backend = OverlapBackend()
        batcher = Batcher(backend, max_batch_size=4, max_wait_ms=0, queue_size=64, streams=streams)
        await batcher.start()
        start = time.perf_counter()
        futures = [batcher.submit(pixels(4, 100 * r)) for r in range(4)]
        results = [await asyncio.gather(*f) for f in futures]
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return backend, results, elapsed

    one, _, serial = asyncio.run(scenario(1))
    two, results, parallel = asyncio.run(scenario(2))
    assert one.most == 1 and two.most == 2  # two batches really ran at the same time
    assert parallel < serial * 0.75
    for r, rows in enumerate(results):
        assert [row["avgpool"][0] for row in rows] == [100 * r + i for i in range(4)]


def test_backpressure_cancellation_and_drain():
    async def scenario():
        backend = SlowBackend(delay=0.1)
        batcher = Batcher(backend, max_batch_size=2, max_wait_ms=0, queue_size=4)
        await batcher.start()
        first = batcher.submit(pixels(2))
        await asyncio.sleep(0.02)  # the first batch is running; the queue is empty again
        queued = batcher.submit(pixels(4))
        with pytest.raises(BatcherFull):
            batcher.submit(pixels(1))
        for fut in queued[2:]:
            fut.cancel()  # a client that went away
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosed):
            batcher.submit(pixels(1))
        await stopping
        return backend, first, queued

    backend, first, queued = asyncio.run(scenario())
    assert all(f.done() and not f.cancelled() for f in first + queued[:2])  # drained, not dropped
    assert sum(backend.batches) == 4  # the two cancelled images never reached the model
