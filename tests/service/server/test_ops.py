import asyncio

import numpy as np
import pytest

from service.runtime.batcher import BatchEngine
from service.server.errors import DrainingError, QueueFullError


def test_health_ready_info_models(onnx_client, trained_model):
    assert onnx_client.get("/health").json() == {"status": "ok"}
    ready = onnx_client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = onnx_client.get("/info").json()
    assert info["model"] == "org/byol-test" and info["backend"] == "onnx" and info["precision"] == "fp32"
    assert info["demo"] is False and info["layers"] == ["feature1", "feature2", "feature3", "feature4", "feature5",
                                                         "avgpool"]
    assert info["dims"]["gap"]["avgpool"] == 512 and info["dims"]["mhead"]["feature1"] == 9216
    assert info["preprocessing"]["crop_size"] == 64 and info["max_batch_size"] == 32
    models = onnx_client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "org/byol-test"
    assert models["data"][0]["object"] == "model" and isinstance(models["data"][0]["created"], int)


def test_request_id_is_echoed(onnx_client):
    r = onnx_client.get("/info", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(onnx_client.get("/info").headers["x-request-id"]) == 32


def test_metrics_count_requests_batches_and_decode_errors(onnx_client, photo_bytes):
    files = [("images", ("a.jpg", b, "image/jpeg")) for b in photo_bytes[:2]]
    onnx_client.post("/embed", files=files)
    onnx_client.post("/embed", files=[("images", ("bad.jpg", b"nope", "image/jpeg"))])
    text = onnx_client.get("/metrics").text
    assert 'byol_requests_total{route="/embed",status="200"}' in text
    assert 'byol_requests_total{route="/embed",status="415"}' in text
    assert "byol_decode_errors_total 1.0" in text or "byol_decode_errors_total" in text
    assert "byol_batch_size_bucket" in text and "byol_queue_depth" in text
    assert 'byol_request_latency_seconds_bucket{le="0.005",route="/embed"}' in text
    embedded = float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("byol_images_embedded_total ")))
    assert embedded >= 2


def test_openapi_lists_the_contract(onnx_client):
    paths = onnx_client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/v1/embeddings", "/v1/models", "/info", "/health", "/ready", "/metrics"} <= set(paths)


class SlowBackend:
    """Records the batches it sees; each run takes a little while (like a real model)."""

    name, precision = "fake", "fp32"
    outputs = ["avgpool"]

    def __init__(self, delay: float = 0.05) -> None:
        self.delay, self.batches = delay, []

    def run(self, pixels):
        import time

        time.sleep(self.delay)
        self.batches.append(len(pixels))
        return {"avgpool": pixels.reshape(len(pixels), -1)[:, :4].copy()}


def _pixels(n, value=0.0):
    return np.full((n, 3, 2, 2), value, np.float32) + np.arange(n, dtype=np.float32)[:, None, None, None]


def test_engine_batches_concurrent_requests_and_scatters_in_order():
    async def scenario():
        backend = SlowBackend()
        engine = BatchEngine(backend, max_batch_size=8, max_wait_ms=20, queue_size=64)
        await engine.start()
        futures = [engine.submit(_pixels(3, 100 * r)) for r in range(4)]
        results = [await asyncio.gather(*f) for f in futures]
        await engine.stop()
        return backend, results

    backend, results = asyncio.run(scenario())
    assert sum(backend.batches) == 12 and max(backend.batches) > 3  # requests were batched together
    for r, rows in enumerate(results):
        assert [row["avgpool"][0] for row in rows] == [100 * r + i for i in range(3)]


def test_engine_streams_run_batches_at_once_and_each_image_gets_its_own_row():
    import threading
    import time

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
        engine = BatchEngine(backend, max_batch_size=4, max_wait_ms=0, queue_size=64, streams=streams)
        await engine.start()
        start = time.perf_counter()
        futures = [engine.submit(_pixels(4, 100 * r)) for r in range(4)]
        results = [await asyncio.gather(*f) for f in futures]
        elapsed = time.perf_counter() - start
        await engine.stop()
        return backend, results, elapsed

    one, _, serial = asyncio.run(scenario(1))
    two, results, parallel = asyncio.run(scenario(2))
    assert one.most == 1 and two.most == 2  # two batches really ran at the same time
    assert parallel < serial * 0.75
    for r, rows in enumerate(results):
        assert [row["avgpool"][0] for row in rows] == [100 * r + i for i in range(4)]


def test_inference_plan_splits_the_threads_between_streams(onnx_client):
    from service.runtime.factory import inference_plan
    from service.server.settings import ServiceSettings

    served = inference_plan(ServiceSettings())
    assert onnx_client.get("/info").json()["inference"] == {"streams": served.streams,
                                                             "threads_per_stream": served.threads_per_stream}

    plan = inference_plan(ServiceSettings(threads=4))
    assert (plan.streams, plan.threads_per_stream) == (2, 2)
    one = inference_plan(ServiceSettings(threads=4, inference_streams=1))
    assert (one.streams, one.threads_per_stream) == (1, 4)
    torch_plan = inference_plan(ServiceSettings(threads=4, backend="torch", inference_streams=2))
    assert (torch_plan.streams, torch_plan.threads_per_stream) == (1, 4)  # torch shares one intra-op pool
    single_core = inference_plan(ServiceSettings(threads=1))
    assert (single_core.streams, single_core.threads_per_stream) == (1, 1)


def test_engine_backpressure_cancellation_and_drain():
    async def scenario():
        backend = SlowBackend(delay=0.1)
        engine = BatchEngine(backend, max_batch_size=2, max_wait_ms=0, queue_size=4)
        await engine.start()
        first = engine.submit(_pixels(2))
        await asyncio.sleep(0.02)  # the first batch is running; the queue is empty again
        queued = engine.submit(_pixels(4))
        with pytest.raises(QueueFullError):
            engine.submit(_pixels(1))
        for fut in queued[2:]:
            fut.cancel()  # a client that went away
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0)
        with pytest.raises(DrainingError):
            engine.submit(_pixels(1))
        await stopping
        return backend, first, queued

    backend, first, queued = asyncio.run(scenario())
    assert all(f.done() and not f.cancelled() for f in first + queued[:2])  # drained, not dropped
    assert sum(backend.batches) == 4  # the two cancelled images never reached the model


def test_streamed_backend_splits_a_batch_and_gives_its_rows_in_order():
    from service.runtime.factory import StreamedBackend

    inner = SlowBackend(delay=0.0)
    streamed = StreamedBackend(inner, 2)
    pixels = _pixels(7)
    out = streamed.run(pixels)
    assert sorted(inner.batches) == [3, 4]  # two slices, run at once
    assert np.array_equal(out["avgpool"], pixels.reshape(7, -1)[:, :4])
    assert streamed.run(_pixels(1))["avgpool"].shape == (1, 4) and inner.batches[-1] == 1
