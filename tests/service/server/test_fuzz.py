"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis, every check), against a real server process with
API keys on and an index loaded: no 5xx, answers that conform to the schema (status codes, content types, bodies),
the server alive after. And no route that answers without a key where keys are set.

The number of generated requests is bounded (``FUZZ_EXAMPLES`` per operation; ``BYOL_FUZZ_EXAMPLES`` raises it
for a longer run by hand) so that CI spends seconds, not minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.support import processes
from tests.support.server import start_server

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

KEY = "fuzz-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FUZZ_EXAMPLES = int(os.environ.get("BYOL_FUZZ_EXAMPLES", "12"))
# the pages and their assets and the API documentation are public by design (they hold nothing and ask for the
# key); the probes and /metrics are for the orchestrator and Prometheus
PUBLIC = {"/", "/ui", "/ui/{name}", "/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json"}


@pytest.fixture(scope="module")
def fuzzed_server(trained_model, emb):
    proc, url = start_server(trained_model, "--index", str(emb), "--api-keys", KEY)
    yield proc, url
    processes.stop(proc, timeout=30)


def test_the_api_holds_to_its_schema_under_fuzzing(fuzzed_server, tmp_path):
    """Schemathesis' own CLI (``st run``), every check but one, a fixed seed: its exit status is the verdict.

    Left out: ``positive_data_acceptance``, which expects any schema-valid body to be accepted. An image's bytes
    cannot be described by a schema (any string is schema-valid base64 to it), so an undecodable image is rightly
    refused, 400 or 415, and no schema could say otherwise. Everything else runs: no 5xx, negative data rejected,
    status codes, content types and bodies as documented, headers, auth, response times."""
    proc, url = fuzzed_server
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
                          "--exclude-checks", "positive_data_acceptance",
                          "--max-examples", str(FUZZ_EXAMPLES), "--seed", "1", "--header", f"Authorization: Bearer {KEY}",
                          "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path", str(report)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env={**os.environ, "NO_COLOR": "1"})
    summary = run.stdout[-6000:]
    print(summary)
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert proc.poll() is None, "the server died"
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
    assert "5xx" not in summary.lower() or "0 5xx" in summary.lower()


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
