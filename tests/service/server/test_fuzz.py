"""No route answers without a key where keys are set, on a real server process with an index loaded. (The API
fuzzed from its own schema with Schemathesis, every check, runs against the server of a folder whose curation
holds every kind of row: tests/curation/test_every_kind.py.)"""

from __future__ import annotations

import httpx
import pytest

from tests.support import processes
from tests.support.server import start_server

pytestmark = pytest.mark.slow

KEY = "fuzz-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# the pages and their assets and the API documentation are public by design (they hold nothing and ask for the
# key); the probes and /metrics are for the orchestrator and Prometheus
PUBLIC = {"/", "/ui", "/ui/{name}", "/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json"}


@pytest.fixture(scope="module")
def fuzzed_server(trained_model, emb):
    proc, url = start_server(trained_model, "--index", str(emb), "--api-keys", KEY)
    yield proc, url
    processes.stop(proc, timeout=30)


def test_no_route_answers_without_a_key(fuzzed_server):
    _, url = fuzzed_server
    spec = httpx.get(f"{url}/openapi.json").json()
    checked = []
    for path, methods in spec["paths"].items():
        if path in PUBLIC:
            continue
        concrete = path.replace("{item_id}", "orig_00.jpg").replace("{name}", "x")
        for method in methods:
            r = httpx.request(method.upper(), f"{url}{concrete}", params={"id": "orig_00.jpg"}, timeout=30,
                              headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            checked.append(f"{method.upper()} {path}")
    assert {"POST /embed", "POST /v1/embeddings", "POST /search", "GET /info", "GET /thumb"} <= set(checked)
