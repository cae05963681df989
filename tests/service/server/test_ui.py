"""The pages (`/`, `/ui`) and what they read (`/thumb`, `/curation/*`): over HTTP, and in a real browser
(Debian's chromium driven by Playwright) against a real server process with API keys on."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import REPO, processes
from tests.support.browser import until
from tests.support.server import start_server

KEY = "ui-test-key"
STATIC = REPO / "service" / "server" / "static"


@pytest.fixture(scope="module")
def server(trained_model, emb):
    proc, url = start_server(trained_model, "--index", str(emb), "--api-keys", KEY)
    yield url
    processes.stop(proc, timeout=30)


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_thumbnails_only_for_ids_in_the_index(server):
    r = httpx.get(f"{server}/thumb/orig_00.jpg", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) <= 256
    assert httpx.get(f"{server}/thumb/orig_00.jpg").status_code == 401  # behind the keys like every route
    for bad in ("../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "images/orig_00.jpg",
                "no-such-image.jpg", "broken.jpg"):
        r = httpx.get(f"{server}/thumb/{bad}", headers=AUTH)
        assert r.status_code == 404, (bad, r.status_code, r.text)
        # unknown_id: not in the index (broken.jpg has no vector, so none); http_error: the client itself
        # normalized the ../ away and the path is no route
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] in ("unknown_id", "http_error"), (bad, r.text)
    # the encoded traversal reaches the route as an id, and is refused there
    assert httpx.get(f"{server}/thumb/%2e%2e/%2e%2e/etc/passwd", headers=AUTH).json()["error"]["code"] == "unknown_id"
    # the page asks by query string: every id reaches the route as itself ('.' and '..' are not path segments)
    r = httpx.get(f"{server}/thumb", params={"id": "orig_00.jpg"}, headers=AUTH)
    assert r.status_code == 200 and r.content == httpx.get(f"{server}/thumb/orig_00.jpg", headers=AUTH).content
    for bad in (".", "..", "../orig_00.jpg", "./orig_00.jpg"):
        r = httpx.get(f"{server}/thumb", params={"id": bad}, headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_id", (bad, r.text)


def test_pages_and_curation_routes(server):
    for page in ("/", "/ui"):
        r = httpx.get(server + page)  # the page itself holds nothing secret
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(f"{server}/ui/static/../app.py").status_code == 404
    assert httpx.get(f"{server}/curation").status_code == 401
    assert httpx.get(f"{server}/curation", headers=AUTH).json() == {"duplicates": True, "outliers": True, "leaks": False, "map": False, "shared_parts": False,
                                                                      "generation": 1, "stale": {}}
    dup = httpx.get(f"{server}/curation/duplicates?limit=2", headers=AUTH).json()
    assert dup["total"] >= 3 and len(dup["groups"]) == 2
    assert all(m["similarity"] >= 0.86 - 1e-4 for g in dup["groups"] for m in g["members"])
    out = httpx.get(f"{server}/curation/outliers?offset=0&limit=100", headers=AUTH).json()
    assert out["total"] == 26 and out["rows"][0]["rank"] == 1
    assert [r["id"] for r in out["rows"] if r["kind"] == "broken"] == ["broken.jpg"]


def test_static_assets_reach_no_other_origin():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import|fonts\.", text), path.name
        assert "<script>" not in text and " style=" not in text  # the CSP allows no inline script or style


@pytest.mark.slow
def test_the_page_in_a_real_browser(server, browser, emb, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    origin = server.rstrip("/")

    def intercept(route) -> None:  # every request of the page goes through here; another origin's is refused
        requests.append(route.request.url)
        if route.request.url.startswith((origin + "/", "blob:", "data:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", intercept)
    shots = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{server}/ui")
    # keys on: the page asks for one; a wrong one is refused with a clear message
    page.wait_for_selector("#keybar:not([hidden])")
    assert "needs an API key" in page.inner_text("#message")
    page.fill("#key", "wrong")
    page.click("#keysave")
    expect(page.locator("#message")).to_contain_text("refused")
    page.fill("#key", KEY)
    page.click("#keysave")
    expect(page.locator("#model")).to_contain_text("org/byol-test")
    assert "layer avgpool" in page.inner_text("#model")

    # search by upload: a grid of thumbnails with ids and scores; the photo's own id first, then its copies
    images = Path(emb.parent) / "images"
    page.set_input_files("#file", str(images / "orig_02.jpg"))
    page.wait_for_selector("#results .card")
    cards = page.query_selector_all("#results .card")
    assert len(cards) == 20  # the k selector's default
    first = [c.get_attribute("data-id") for c in cards[:5]]
    assert first[0] == "orig_02.jpg" and all(i.startswith("copy_02") for i in first[1:]), first
    until(page, "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "ui-search.png"), full_page=True)
    # "more like this": a click searches by that id
    cards[1].click()
    expect(page.locator("#query-info")).to_contain_text("more like")
    assert page.input_value("#qid") == first[1]
    page.select_option("#k", "10")
    page.fill("#qid", "orig_00.jpg")
    page.click("#byid button")
    expect(page.locator("#results .card")).to_have_count(10)
    # drag and drop a file onto the page
    data = base64.b64encode((images / "orig_03.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        return dt; }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#query-info")).to_contain_text("dropped.jpg")
    expect(page.locator("#results .card").first).to_have_attribute("data-id", "orig_03.jpg")

    # duplicate groups side by side, selected and exported as CSV
    page.click('[data-tab="duplicates"]')
    page.wait_for_selector("#groups .group")
    assert "groups 1-" in page.inner_text("#dup-page")
    planted = page.locator("#groups .group").filter(has=page.locator('.card[data-id="copy_00_q20.jpg"]'))
    expect(planted.locator('.card[data-id="orig_00.jpg"]')).to_have_count(1)  # the photo with its copy, side by side
    until(page, "[...document.querySelectorAll('#groups img')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "ui-duplicates.png"), full_page=True)
    boxes = page.query_selector_all("#groups input[type=checkbox]")
    chosen = [b.get_attribute("data-id") for b in boxes[:3]]
    for box in boxes[:3]:
        box.check()
    with page.expect_download() as download:
        page.click("#dup-export")
    csv = Path(download.value.path()).read_text().splitlines()
    assert csv[0] == "id" and [line.strip('"') for line in csv[1:]] == chosen
    # an id a spreadsheet would run as a formula is written as text
    cells = page.evaluate("['=HYPERLINK(\"http://x\")', '+1', '-1', '@SUM(A1)', 'plain', 'a=b'].map(csvCell)")
    assert cells == ['"\'=HYPERLINK(""http://x"")"', '"\'+1"', '"\'-1"', '"\'@SUM(A1)"', '"plain"', '"a=b"']

    # outliers: ranked, the broken image listed
    page.click('[data-tab="outliers"]')
    page.wait_for_selector("#outlier-rows tr")
    assert "broken" in page.inner_text("#outlier-rows")
    page.screenshot(path=str(shots / "ui-outliers.png"), full_page=True)

    # the landing page: model, card summary, layers
    page.goto(f"{server}/")
    expect(page.locator("#layers tr").nth(1)).to_be_visible()
    assert "avgpool" in page.inner_text("#layers")
    assert page.inner_text("#summary").strip()
    page.screenshot(path=str(shots / "landing.png"), full_page=True)
    assert not errors, errors
    assert requests and all(url.startswith((origin + "/", "blob:")) for url in requests), \
        [u for u in requests if not u.startswith(origin)]
    assert {p.name for p in shots.iterdir()} >= {"landing.png", "ui-duplicates.png", "ui-outliers.png", "ui-search.png"}
    context.close()


@pytest.fixture(scope="module")
def leaky(trained_model, emb, tmp_path_factory):
    """A test split whose images include copies of the served set's (emb: the training split), with its dedup made
    one generation ago (stale) and its leaks made now; served with keys on."""
    from service.embed.cli import main as embed_main

    root = tmp_path_factory.mktemp("leaky")
    images, out = root / "images", root / "emb"
    images.mkdir()
    shutil.copy(emb.parent / "images" / "orig_02.jpg", images / "orig_02.jpg")  # an exact copy
    for i, name in enumerate(("orig_00.jpg", "orig_01.jpg")):  # near copies: the same photos re-encoded
        Image.open(emb.parent / "images" / name).save(images / f"reencoded_{i:02d}.jpg", quality=60)
    Image.linear_gradient("L").convert("RGB").resize((120, 90)).save(images / "unseen.png")
    run = ["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress"]
    for argv in (run, ["index", str(out)], ["dedup", str(out), "--no-progress"]):
        assert embed_main(argv) == 0, argv
    Image.linear_gradient("L").convert("RGB").rotate(90).resize((90, 120)).save(images / "arrival.png")
    for argv in (run, ["leaks", str(emb), str(out), "--no-progress"]):  # generation 2; its index follows
        assert embed_main(argv) == 0, argv
    proc, url = start_server(trained_model, "--index", str(out), "--api-keys", KEY)
    yield url
    processes.stop(proc, timeout=30)


@pytest.mark.slow
def test_the_leaks_tab_shows_pairs_side_by_side_and_stale_results_say_so(leaky, browser, tmp_path):
    from playwright.sync_api import expect

    curation = httpx.get(f"{leaky}/curation", headers=AUTH).json()
    assert curation["leaks"] and curation["generation"] == 2 and set(curation["stale"]) == {"duplicates"}
    assert "made from generation 1" in curation["stale"]["duplicates"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{leaky}/ui")
    page.fill("#key", KEY)
    page.click("#keysave")
    expect(page.locator('[data-tab="leaks"]')).to_be_visible()
    expect(page.locator('[data-tab="duplicates"]')).to_have_text("Duplicates (stale)")
    page.click('[data-tab="leaks"]')
    page.wait_for_selector("#leak-rows tr")
    rows = {tr.get_attribute("data-id"): tr.inner_text() for tr in page.query_selector_all("#leak-rows tr")}
    assert "orig_02.jpg" in rows and "exact" in rows["orig_02.jpg"] and "near" in rows["reencoded_00.jpg"]
    assert "unseen.png" not in rows and "arrival.png" not in rows
    until(page, "[...document.querySelectorAll('#leak-rows img')].every(i => i.naturalWidth > 0)")
    assert len(page.query_selector_all("#leak-rows img")) == 2 * len(rows)  # both sides of every pair
    assert page.is_hidden("#stale")
    shots = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(shots / "ui-leaks.png"), full_page=True)
    page.click('[data-tab="duplicates"]')
    expect(page.locator("#stale")).to_contain_text("made from generation 1")
    assert not errors, errors
    context.close()


@pytest.fixture(scope="module")
def region_server(region_model, regions_emb):
    proc, url = start_server(region_model, "--index", str(regions_emb), "--api-keys", KEY)
    yield url
    processes.stop(proc, timeout=30)


def test_search_inside_images_a_box_dragged_on_the_query_and_the_hits_boxes(region_server, browser, planted,
                                                                             tmp_path):
    """The Search tab with a region index: tick 'search inside images', upload a photo, drag a box around the part;
    the hits come back with the box that matched drawn on each thumbnail."""
    from tests.support.planted import LAYER

    root, holds, boxes = planted
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{region_server}/ui")
    page.wait_for_selector("#keybar:not([hidden])")
    page.fill("#key", KEY)
    page.click("#keysave")
    page.wait_for_selector("#regions-toggle:not([hidden])")
    info = httpx.get(f"{region_server}/info", headers=AUTH).json()["search"]["regions"]
    assert info["layer"] == LAYER and info["images"] == len(holds)
    page.check("#regions")
    j = int(np.flatnonzero(holds == 0)[1])  # a photo holding the drawn logo
    page.set_input_files("#file", str(root / "images" / f"{j:04d}.jpg"))
    page.wait_for_selector("#results .card .hit-box")
    until(page, "document.getElementById('query-img').naturalWidth > 0")
    # drag a box around the logo, in the shown image's coordinates (the image is 320x240, shown at that size or
    # scaled: mapped through its bounding box)
    rect = page.eval_on_selector("#query-img", "i => { const r = i.getBoundingClientRect(); "
                                 "return [r.left, r.top, r.width / i.naturalWidth, r.height / i.naturalHeight]; }")
    x0, y0, x1, y1 = boxes[j]
    assert page.inner_text("#query-info").endswith("box 0,0,320,240)")  # before the drag: the whole image
    page.mouse.move(rect[0] + x0 * rect[2], rect[1] + y0 * rect[3])
    page.mouse.down()
    page.mouse.move(rect[0] + (x0 + x1) / 2 * rect[2], rect[1] + (y0 + y1) / 2 * rect[3], steps=4)
    page.mouse.move(rect[0] + x1 * rect[2], rect[1] + y1 * rect[3], steps=4)
    page.mouse.up()
    until(page, "!document.getElementById('query-info').textContent.endsWith('box 0,0,320,240)')")
    assert not page.is_hidden("#query-box")
    # the box the server looked for (its answer's query_box, shown on the page): the one dragged, in the photo's pixels
    shown = page.inner_text("#query-info").split("box ")[1].rstrip(")").split(",")
    assert all(abs(float(a) - b) <= 3 for a, b in zip(shown, (x0, y0, x1, y1))), (shown, boxes[j])
    until(page, "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
    hits = page.query_selector_all("#results .card")
    assert hits[0].get_attribute("data-id") == f"{j:04d}.jpg"
    # each hit's box is drawn over its thumbnail, inside it
    for card in hits[:5]:
        box = card.query_selector(".hit-box")
        img = card.query_selector("img").bounding_box()
        drawn = box.bounding_box()
        assert drawn["width"] > 4 and drawn["height"] > 4
        assert img["x"] - 3 <= drawn["x"] and drawn["x"] + drawn["width"] <= img["x"] + img["width"] + 3
    first = [float(v) for v in hits[0].query_selector(".hit-box").get_attribute("data-box").split(",")]
    assert first[0] < x1 and x0 < first[2] and first[1] < y1 and y0 < first[3]  # on the logo in its own photo
    shots = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "ui-regions.png"), full_page=False)
    # the pairs that share a part (byol-embed shared), side by side, each with its box
    page.click('[data-tab="shared_parts"]')
    page.wait_for_selector("#shared-rows tr")
    until(page, "[...document.querySelectorAll('#shared-rows .pair-box')].slice(0, 6).every(b => !b.hidden)")
    pair = page.query_selector("#shared-rows tr")
    boxes_drawn = pair.query_selector_all(".pair-box")
    assert len(boxes_drawn) == 2 and all(b.bounding_box()["width"] > 2 for b in boxes_drawn)
    total = httpx.get(f"{region_server}/curation/shared_parts?limit=1", headers=AUTH).json()["total"]
    assert f"{total} pairs of images share a part" in page.inner_text("#shared-info")
    page.screenshot(path=str(shots / "ui-shared-parts.png"), full_page=False)
    assert not errors, errors
    context.close()
