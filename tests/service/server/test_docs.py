"""/docs and /redoc work offline: every asset comes from the installed package, none from a CDN."""

from __future__ import annotations

import re

import pytest

from tests.support.server import make_client

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|spec-url)\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def keyed_client(trained_model):
    with make_client(trained_model, backend="onnx", api_keys=["s3cret"]) as client:
        yield client


@pytest.mark.parametrize("page, needs", [
    ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon")),
    ("/redoc", ("redoc.standalone.js", "favicon")),
])
def test_doc_pages_load_every_asset_locally_without_an_api_key(keyed_client, page, needs):
    html = keyed_client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    text = html.text
    assert not re.search(r"https?://|//cdn|fonts\.googleapis", text), "a doc page points outside the server"
    urls = {a or b for a, b in ASSET.findall(text)}
    for name in needs:
        assert any(name in url for url in urls), f"{page} does not reference {name}: {sorted(urls)}"
    for url in urls:
        if url.startswith("#"):
            continue
        asset = keyed_client.get(url)
        assert asset.status_code == 200, url
        if url.endswith((".js", ".css")):
            assert len(asset.content) > 50_000, f"{url} is not the real bundle"
        if url.endswith("openapi.json"):
            assert asset.json()["info"]["title"] == "BYOL embeddings"
    # the API itself still needs the key
    assert keyed_client.get("/info").status_code == 401
