"""The operational routes (health, readiness, metrics, info, the OpenAPI contract) and the inference plan the
server reports."""

from service.runtime.factory import inference_plan
from service.server.settings import ServiceSettings


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


def test_inference_plan_splits_the_threads_between_streams(onnx_client):
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
