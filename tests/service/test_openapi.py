"""The live OpenAPI contract, reduced to what clients depend on, against the saved copy.

Regenerate after an intended change: ``BYOL_UPDATE_OPENAPI=1 python -m pytest tests/service/test_openapi.py``.
"""

import json
import os
from pathlib import Path

SAVED = Path(__file__).with_name("openapi_contract.json")


def contract(schema: dict) -> dict:
    """Paths, methods, query parameters (name, required) and response codes: stable across FastAPI versions."""
    out = {}
    for path, methods in sorted(schema["paths"].items()):
        for method, op in sorted(methods.items()):
            params = sorted((p["name"], bool(p.get("required"))) for p in op.get("parameters", [])
                            if p.get("in") == "query")
            out[f"{method.upper()} {path}"] = {"query": params, "responses": sorted(op.get("responses", {}))}
    return json.loads(json.dumps(out))


def test_openapi_contract_matches_the_saved_copy(onnx_client):
    live = contract(onnx_client.get("/openapi.json").json())
    if os.environ.get("BYOL_UPDATE_OPENAPI"):
        SAVED.write_text(json.dumps(live, indent=2, sort_keys=True) + "\n")
    assert live == json.loads(SAVED.read_text()), "the HTTP contract changed: update the saved copy on purpose"
