"""The live OpenAPI contract, reduced to what clients depend on, against the saved copy.

Regenerate after an intended change: ``BYOL_UPDATE_OPENAPI=1 python -m pytest tests/service/server/test_openapi.py``.
"""

import json
import os
from pathlib import Path
from typing import Any

SAVED = Path(__file__).with_name("openapi_contract.json")


def project(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """A schema reduced to its shape (types, properties, required, items, enums, minimum sizes), refs resolved, titles,
    descriptions and defaults dropped: what a generated client types, stable across FastAPI versions."""
    if not isinstance(schema, dict) or depth > 12:
        return schema
    if "$ref" in schema:
        return project(components[schema["$ref"].rsplit("/", 1)[1]], components, depth + 1)
    out: dict[str, Any] = {}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = sorted((project(s, components, depth + 1) for s in schema[key]), key=json.dumps)
    for key in ("type", "format", "enum", "const", "minItems", "minLength", "pattern", "minimum", "maximum",
                "contentEncoding", "additionalProperties"):
        if key in schema:
            out[key] = schema[key]
    if "properties" in schema or "required" in schema:
        out["properties"] = {k: project(v, components, depth + 1)
                             for k, v in sorted(schema.get("properties", {}).items())}
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
            responses = {code: {ctype: project(media.get("schema"), components)
                                for ctype, media in sorted(resp.get("content", {}).items())}
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
        if name in ("GET /metrics", "GET /thumb", "GET /thumb/{item_id}", "GET /curation/leaks/thumb",
                    "GET /curation/duplicates/remove"):  # not JSON
            continue
        assert (op["responses"]["200"].get("application/json") or {}).get("properties"), f"{name}: untyped 200"
        for code, resp in op["responses"].items():
            if code.startswith(("4", "5")):
                key = "status" if name == "GET /ready" else "error"  # /ready's 503 is its own not-ready body
                assert key in (resp.get("application/json") or {}).get("properties", {}), f"{name} {code}: no error model"
    data = live["POST /embed"]["responses"]["200"]["application/json"]["properties"]["data"]["items"]["properties"]
    assert set(data) == {"index", "embeddings"}


def test_the_schema_says_what_the_server_refuses(onnx_client):
    """Where the handlers refuse a request, the schema says so, so that clients generated from it send only what
    the server takes: at least one image, images as padded base64 or a base64 data URI, a non-empty input, layers
    the model has, k of at least 1, no unknown form fields, exactly one of image and id, the served model's id and
    size, Prometheus text. (The fuzzing in tests/curation/test_every_kind.py holds the server to all of it.)"""
    import re

    from service.server.schemas import BASE64_IMAGE, LAYERS_LIST
    schema = onnx_client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    embed = schema["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert embed["multipart/form-data"]["schema"]["properties"]["images"]["minItems"] == 1
    assert project(embed["application/json"]["schema"], components)["properties"]["images"]["minItems"] == 1
    openai = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    variants = project(openai, components)["properties"]["input"]["anyOf"]
    image = {"type": "string", "minLength": 4, "pattern": BASE64_IMAGE, "contentEncoding": "base64"}
    assert image in variants
    assert any(v.get("type") == "array" and v.get("minItems") == 1 and v["items"] == image for v in variants)
    for text in ("iVBORw0KGgo=", "data:image/png;base64,iVBORw0KGgo="):
        assert re.match(BASE64_IMAGE, text)
    for text in ("0", "iVBORw0KGgo", "http://x/y.png", "data:image/png,abcd"):  # refused by the server: 400
        assert not re.match(BASE64_IMAGE, text), text
        assert onnx_client.post("/v1/embeddings", json={"input": text}).status_code == 400
    layers = next(p for p in schema["paths"]["/embed"]["post"]["parameters"] if p["name"] == "layers")
    assert re.match(LAYERS_LIST, "feature4, avgpool") and not re.match(LAYERS_LIST, "")
    assert layers["schema"]["pattern"] == LAYERS_LIST
    assert embed["multipart/form-data"]["schema"]["additionalProperties"] is False
    openai_props = project(openai, components)["properties"]
    assert {"type": "integer", "enum": [512]} in openai_props["dimensions"]["anyOf"]
    search = schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert project(search, components)["oneOf"] == [
        {"properties": {"id": {"type": "null"}, "image": {"type": "string"}}, "required": ["image"]},
        {"properties": {"id": {"type": "string"}, "image": {"type": "null"}}, "required": ["id"]}]
    assert project(search, components)["properties"]["k"]["minimum"] == 1
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert onnx_client.get("/metrics").headers["content-type"].startswith("text/plain")
    for body, status in ((b'{"images": []}', 400), (b'{"input": ""}', 422), (b'{"input": []}', 422)):
        path = "/embed" if b"images" in body else "/v1/embeddings"
        r = onnx_client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (path, body, r.text)
    r = onnx_client.post("/search", json={"image": "aGk=", "id": "x"})
    assert r.status_code in (400, 404), r.text  # 404 here: this server has no index
