"""``POST /search`` with ``regions=true``: the images holding a part of the query, each hit with its box, in every
way a request can say it (query string, multipart form, JSON), and the refusals that say what is accepted."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.support.server import make_client


@pytest.fixture(scope="module")
def client(region_model, regions_emb):
    with make_client(region_model, index=str(regions_emb), max_wait_ms=2) as c:
        yield c


def test_a_box_in_a_photo_by_form_query_string_and_json_gives_the_same_hits(client, planted, capsys):
    from service.embed.cli import main

    root, holds, boxes = planted
    j = int(np.flatnonzero(holds == 2)[0])  # a photo holding the coins
    path = root / "images" / f"{j:04d}.jpg"
    blob = path.read_bytes()
    box = ",".join(str(v) for v in boxes[j])
    form = client.post(f"/search?k=5&regions=true&box={box}", files={"image": ("q.jpg", blob, "image/jpeg")})
    assert form.status_code == 200, form.text
    body = form.json()
    assert body["regions"] is True and body["query_box"] == [float(v) for v in boxes[j]] and len(body["results"]) == 5
    assert body["results"][0]["id"] == f"{j:04d}.jpg"
    for r in body["results"]:
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= r["size"][0] + 0.5 and 0 <= y0 < y1 <= r["size"][1] + 0.5 and r["size"] == [320, 240]
    query = client.post(f"/search?regions=1&box={box}", files={"image": ("q.jpg", blob, "image/jpeg")}, data={"k": "5"})
    as_json = client.post("/search", json={"image": base64.b64encode(blob).decode(), "k": 5, "regions": True,
                                           "box": box})
    for other in (query, as_json):
        assert other.status_code == 200, other.text
        assert [(r["id"], r["box"]) for r in other.json()["results"]] == [(r["id"], r["box"]) for r in body["results"]]
    # the command line gives the same hits and boxes
    capsys.readouterr()
    assert main(["search", str(client.app.state.service.settings.index), "--image", str(path), "--regions", "--box",
                 box, "-k", "5", "--json"]) == 0
    import json

    cli = json.loads(capsys.readouterr().out)["results"]
    assert [(r["id"], r["box"]) for r in cli] == [(r["id"], r["box"]) for r in body["results"]]
    assert client.get("/info").json()["search"]["regions"]["windows"] == 25


def test_refusals_say_what_is_accepted(client, trained_model, emb, planted):
    root, _, _ = planted
    blob = (root / "object0.png").read_bytes()
    files = {"image": ("q.png", blob, "image/png")}
    for url, data, code, message in (
            ("/search?regions=true&box=5,5,1,1", None, "invalid_parameter", "expected x0 < x1"),
            ("/search?box=1,1,5,5", None, "invalid_parameter", "add regions=true"),
            ("/search?regions=true&box=500,500,900,900", None, "invalid_parameter", "outside the 120x120 image"),
            ("/search?regions=true&duplicates=true", None, "conflicting_parameters", "duplicates compares whole"),
            ("/search?regions=true", {"regions": "false"}, "invalid_image", "unknown fields ['regions']"),
            ("/search?regions=maybe", None, None, None)):
        r = client.post(url, files=files, data=data or {})
        if code is None:  # not a boolean: refused by the query's own validation
            assert r.status_code in (400, 422), r.text
            continue
        assert r.status_code == 400 and r.json()["error"]["code"] == code and message in r.json()["error"]["message"], \
            (url, r.text)
    r = client.post("/search", json={"id": "0001.jpg", "regions": True})
    assert r.status_code == 400 and "send the image" in r.json()["error"]["message"]
    r = client.post("/search?regions=true", json={"image": base64.b64encode(blob).decode(), "box": "1,2"})
    assert r.status_code in (400, 422)
    # a server whose index has no regions says how to make them
    with make_client(trained_model, index=str(emb)) as plain:
        r = plain.post("/search?regions=true", files=files)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_region_index"
        assert "byol-embed run --regions" in r.json()["error"]["message"]
        assert plain.get("/info").json()["search"]["regions"] is None


def test_a_server_that_cannot_make_region_vectors_says_why(client, planted, monkeypatch):
    """A model folder whose graph lacks the layer's maps, on an image without torch to export one: 503 with the
    reason, and image search goes on."""
    from service.runtime.onnx import OnnxRuntimeError
    from service.server.routes.search import RegionQueries

    def refuse(self, image, box, layer):
        raise OnnxRuntimeError(f"model.onnx does not give the maps of {layer} and torch is not installed")

    monkeypatch.setattr(RegionQueries, "parts", refuse)
    root, _, _ = planted
    files = {"image": ("q.png", (root / "object0.png").read_bytes(), "image/png")}
    r = client.post("/search?regions=true", files=files)
    assert r.status_code == 503 and r.json()["error"]["code"] == "regions_unavailable"
    assert "torch is not installed" in r.json()["error"]["message"]
    assert client.post("/search", files=files).status_code == 200
