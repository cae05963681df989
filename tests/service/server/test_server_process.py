"""The real thing: ``byol-serve`` as a uvicorn process on loopback, called over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from service.client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from tests.support import processes
from tests.support.server import start_server


@pytest.fixture(scope="module")
def server(trained_model):
    proc, url = start_server(trained_model)
    yield proc, url
    processes.stop(proc, timeout=30)


def test_onnx_server_process_does_not_load_torch(server):
    proc, url = server
    maps = open(f"/proc/{proc.pid}/maps").read()
    assert "libtorch" not in maps and "onnxruntime" in maps


def test_openai_client(server, photo_bytes):
    import openai

    _, url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    uris = ["data:image/jpeg;base64," + base64.b64encode(b).decode() for b in photo_bytes[:3]]
    response = client.embeddings.create(model="org/byol-test", input=uris)  # asks for base64 by default
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert vectors.shape == (3, 512) and response.model == "org/byol-test"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    as_float = client.embeddings.create(model="org/byol-test", input=uris[0], encoding_format="float")
    assert np.allclose(as_float.data[0].embedding, vectors[0], atol=1e-6)
    raw = httpx.post(url + "/embed?layers=avgpool&normalize=true",
                     files=[("images", ("a.jpg", photo_bytes[0], "image/jpeg"))]).json()
    assert np.allclose(raw["data"][0]["embeddings"]["avgpool"], vectors[0], atol=1e-5)
    assert client.models.list().data[0].id == "org/byol-test"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="org/byol-test", input=uris[0], dimensions=128)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="someone/else", input=uris[0])


def test_python_clients(server, photo_bytes):
    _, url = server
    with EmbeddingClient(url) as client:
        result = client.embed(photo_bytes[:2], layers=("feature5", "avgpool"), normalize=True)
        assert result.embeddings["feature5"].shape == (2, 512) and result.model == "org/byol-test"
        with pytest.raises(EmbeddingError) as info:
            client.embed([photo_bytes[0], b"junk"])
        assert info.value.status == 415 and info.value.index == 1

    async def run():
        async with AsyncEmbeddingClient(url) as client:
            return await asyncio.gather(*(client.embed([b]) for b in photo_bytes[:3]))

    rows = asyncio.run(run())
    assert np.allclose(rows[0].embeddings["avgpool"][0], EmbeddingClient(url).embed(photo_bytes[:1]).embeddings[
        "avgpool"][0], atol=1e-5)


def test_client_retries_after_503(monkeypatch):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"code": "overloaded"}})
        body = {"model": "m", "revision": "r", "backend": "onnx", "dims": {"avgpool": 2},
                "data": [{"index": 0, "embeddings": {"avgpool": base64.b64encode(
                    np.array([1, 2], "<f4").tobytes()).decode()}}]}
        return httpx.Response(200, json=body)

    client = EmbeddingClient("http://test", retries=3)
    client._http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    result = client.embed([b"img"])
    assert len(calls) == 3 and result.embeddings["avgpool"].tolist() == [[1.0, 2.0]]


def test_sigterm_drains_in_flight_requests(trained_model, photo_bytes):
    """SIGTERM with 8 requests in flight: /ready is 503 at once, new work gets 503 + Retry-After, all 8 answer 200
    with the right vectors, and the process exits 0 once drained."""
    proc, url = start_server(trained_model, "--max-batch-size", "8", "--drain-timeout-s", "60")
    try:
        files = [("images", (f"{i}.jpg", photo_bytes[i % 4], "image/jpeg")) for i in range(32)]
        query = "/embed?layers=feature1,avgpool&pooling=mhead"
        reference = httpx.post(url + query, files=files[:4], timeout=60).json()
        results: list = []

        def call() -> None:
            try:
                results.append(httpx.post(url + query, files=files, timeout=120))
            except httpx.HTTPError as err:
                results.append(err)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while "byol_requests_in_flight 8.0" not in httpx.get(url + "/metrics").text and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGTERM)  # with 8 requests in flight
        time.sleep(0.3)
        ready = httpx.get(url + "/ready", timeout=10)
        draining_gauge = "byol_draining 1.0" in httpx.get(url + "/metrics", timeout=10).text
        refused = httpx.post(url + query, files=files[:1], timeout=10)
        alive_during_drain = any(t.is_alive() for t in threads)
        for t in threads:
            t.join(120)
        code = proc.wait(timeout=60)
        log = proc.log.read_text()
    finally:
        processes.stop(proc)
    assert alive_during_drain, "the requests finished before the drain was checked; make them heavier"
    assert ready.status_code == 503 and draining_gauge
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"]
    assert [getattr(r, "status_code", r) for r in results] == [200] * 8, log[-2000:]
    for r in results:
        for layer in ("feature1", "avgpool"):
            got = np.array([d["embeddings"][layer] for d in r.json()["data"][:4]])
            ref = np.array([d["embeddings"][layer] for d in reference["data"]])
            assert np.abs(got - ref).max() <= 1e-5
    assert code == 0, log[-2000:]
    assert "8 requests finished while draining" in log, log[-2000:]
    assert "stopped after draining the queue" in log
