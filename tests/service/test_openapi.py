"""The live OpenAPI contract, reduced to what clients depend on, against the saved copy.

Regenerate after an intended change: ``BYOL_UPDATE_OPENAPI=1 python -m pytest tests/service/test_openapi.py``.
"""

import json
import os
from pathlib import Path
from typing import Any

SAVED = Path(__file__).with_name("openapi_contract.json")


def project(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """A schema reduced to its shape (types, properties, required, items, enums), refs resolved, titles,
    descriptions and defaults dropped: what a generated client types, stable across FastAPI versions."""
    if not isinstance(schema, dict) or depth > 12:
        return schema
    if "$ref" in schema:
        return project(components[schema["$ref"].rsplit("/", 1)[1]], components, depth + 1)
    out: dict[str, Any] = {}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = sorted((project(s, components, depth + 1) for s in schema[key]), key=json.dumps)
    for key in ("type", "format", "enum", "const"):
        if key in schema:
            out[key] = schema[key]
    if "properties" in schema:
        out["properties"] = {k: project(v, components, depth + 1) for k, v in sorted(schema["properties"].items())}
        out["required"] = sorted(schema.get("required", []))
    if "items" in schema:
        out["items"] = project(schema["items"], components, depth + 1)
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = project(schema["additionalProperties"], components, depth + 1)
    return out


def contract(schema: dict) -> dict:
    """Paths, methods, query parameters (name, required), request bodies and responses with their schemas."""
    components = schema.get("components", {}).get("schemas", {})
    out = {}
    for path, methods in sorted(schema["paths"].items()):
        for method, op in sorted(methods.items()):
            params = sorted((p["name"], bool(p.get("required"))) for p in op.get("parameters", [])
                            if p.get("in") == "query")
            body = {ctype: project(media.get("schema", {}), components)
                    for ctype, media in sorted(op.get("requestBody", {}).get("content", {}).items())}
            responses = {code: project(resp.get("content", {}).get("application/json", {}).get("schema"), components)
                         for code, resp in sorted(op.get("responses", {}).items())}
            out[f"{method.upper()} {path}"] = {"query": params, "body": body, "responses": responses}
    return json.loads(json.dumps(out))


def test_openapi_contract_matches_the_saved_copy(onnx_client):
    live = contract(onnx_client.get("/openapi.json").json())
    if os.environ.get("BYOL_UPDATE_OPENAPI"):
        SAVED.write_text(json.dumps(live, indent=2, sort_keys=True) + "\n")
    assert live == json.loads(SAVED.read_text()), "the HTTP contract changed: update the saved copy on purpose"


def test_every_route_declares_typed_bodies_and_responses(onnx_client):
    """Generated clients get types, not Any: request bodies and every 200 and error response have a schema."""
    live = contract(onnx_client.get("/openapi.json").json())
    embed = live["POST /embed"]
    assert set(embed["body"]) == {"multipart/form-data", "application/json"}
    assert embed["body"]["multipart/form-data"]["properties"]["images"]["items"]["format"] == "binary"
    assert "images" in embed["body"]["application/json"]["required"]
    assert "input" in live["POST /v1/embeddings"]["body"]["application/json"]["required"]
    for name, op in live.items():
        if name in ("GET /metrics", "GET /thumb/{item_id}"):  # Prometheus text and a JPEG, not JSON
            continue
        assert op["responses"]["200"].get("properties"), f"{name}: untyped 200 response"
        for code, resp in op["responses"].items():
            if code.startswith(("4", "5")):
                key = "status" if name == "GET /ready" else "error"  # /ready's 503 is its own not-ready body
                assert resp and key in resp["properties"], f"{name} {code}: no error model"
    data = live["POST /embed"]["responses"]["200"]["properties"]["data"]["items"]["properties"]
    assert set(data) == {"index", "embeddings"}
