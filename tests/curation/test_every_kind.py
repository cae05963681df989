"""Every curation command on one folder where every kind of row occurs (broken images, images with no content,
exact and near duplicates, leaks, labels, quality flags), then every ``/curation/*`` route paged on a real server
process and each answer validated against the server's own OpenAPI schema, then every tab of the page in a real
browser. The results contract (curation/results.py) is what all three read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema_rs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.results import RESULTS
from service.embed.cli import main as embed_main
from tests.support import processes
from tests.support.browser import until
from tests.support.server import start_server

KEY = "every-kind-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
pytestmark = pytest.mark.slow


def _board(angle: float) -> Image.Image:
    board = Image.new("RGB", (96, 96), "white")
    for i in range(0, 96, 12):
        for j in range(0, 96, 12):
            if (i + j) // 12 % 2:
                board.paste((0, 0, 0), (i, j, i + 12, j + 12))
    return board.rotate(angle, fillcolor="white")


@pytest.fixture(scope="module")
def every_kind(trained_model, emb, tmp_path_factory):
    """The photos' copies (exact and near duplicates), a planted cluster of checkerboards (a dozen slight variants
    of one, like nothing else; flat enough to hold no picture), a broken file, a dark photo and an exact copy of an
    image of ``emb`` (a leak); labelled by folder; every curation command run; served with keys on."""
    root = tmp_path_factory.mktemp("every_kind")
    images, out = root / "images", root / "emb"
    shutil.copytree(emb.parent / "images", images / "photos", ignore=shutil.ignore_patterns("broken.jpg"))
    (images / "planted").mkdir()
    planted = []
    for k in range(12):
        name = f"planted/board_{k:02d}.png"
        _board(k * 0.5).save(images / name)
        planted.append(name)
    (images / "odd").mkdir()
    (images / "odd" / "broken.jpg").write_bytes(b"not an image, nor a copy of emb's broken file")
    Image.open(emb.parent / "images" / "orig_03.jpg").point(lambda v: v // 12).save(images / "odd" / "dark.jpg")
    shutil.copy(emb.parent / "images" / "orig_04.jpg", images / "odd" / "leaked.jpg")  # the same bytes as emb's
    commands = [
        ["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress",
         "--labels", "folders", "--regions", "feature3"],
        ["index", str(out)],
        ["calibrate", str(out), "--sample", "8"],
        ["quality", str(out), "--no-progress"],
        ["dedup", str(out), "--no-progress", "--keep", "largest", "--write-lists"],
        ["outliers", str(out), "--no-progress"],  # after quality: the no-content rows come first
        ["labels", str(out), "--no-progress"],
        ["select", str(out), "-n", "6", "--no-progress"],
        ["map", str(out), "--no-progress", "--clusters", "3"],
        ["leaks", str(emb), str(out), "--no-progress"],
        ["shared", str(out), "--no-progress", "--sample", "8"],
    ]
    for argv in commands:
        assert embed_main(argv) == 0, argv
    proc, url = start_server(trained_model, "--index", str(out), "--api-keys", KEY)
    yield {"url": url, "emb": out, "planted": planted}
    processes.stop(proc, timeout=30)


SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
# a request the schema accepts is answered 2xx, or refused only for what no schema can say: an id that is not in
# the index (404), a body or image over the limits (413), bytes that are valid base64 but not an image (415)
expected-statuses = ["2xx", 404, 413, 415]
"""


def test_the_api_holds_to_its_schema_under_fuzzing(every_kind, tmp_path):
    """Schemathesis' own CLI (``st run``), every check, a fixed seed, against the server of a folder whose curation
    holds every kind of row, with its API key: its exit status is the verdict (0 failures, no 5xx). Positive data
    acceptance included: a request the schema accepts gets no 400 or 422."""
    pytest.importorskip("schemathesis")
    url = every_kind["url"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    examples = os.environ.get("BYOL_FUZZ_EXAMPLES", "12")  # per operation; raise it for a longer run by hand
    run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                          f"{url}/openapi.json", "--checks", "all", "--max-examples", examples, "--seed", "1",
                          "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "60"],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
                              "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    summary = run.stdout[-8000:]
    print(summary)
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200


def test_every_command_wrote_what_the_contract_declares(every_kind):
    curation = every_kind["emb"] / "curation"
    for result in RESULTS.values():
        assert (curation / result.summary).is_file(), result.name
        if result.table is None:
            continue
        parquet = pq.ParquetFile(curation / result.table)
        assert parquet.schema_arrow.names == [c.name for c in result.columns], result.name
        if result.kinds and parquet.metadata.num_rows:
            assert set(parquet.read(columns=["kind"]).column("kind").to_pylist()) <= set(result.kinds)
    for name in ("keep.txt", "remove.txt", "leaks_clean.txt"):
        assert (curation / name).is_file()


def _validator(openapi: dict, model: str):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{model}", "components": openapi["components"]})


def _get(url: str, path: str, model: str, openapi: dict, **params) -> dict:
    r = httpx.get(url + path, params=params, headers=AUTH, timeout=30)
    assert r.status_code == 200, (path, params, r.status_code, r.text[:500])
    body = r.json()
    errors = [str(e) for e in _validator(openapi, model).iter_errors(body)]
    assert not errors, (path, params, errors[:3])
    return body


def test_every_route_pages_every_kind_within_its_schema(every_kind):
    url = every_kind["url"]
    openapi = httpx.get(url + "/openapi.json", headers=AUTH).json()
    available = _get(url, "/curation", "CurationAvailable", openapi)
    assert available == {"duplicates": True, "outliers": True, "leaks": True, "map": True, "shared_parts": True,
                         "generation": 1, "stale": {}}

    # outliers, page by page: no content first, then embedded by score, broken last (the 500 of the issue)
    rows, offset = [], 0
    while True:
        page = _get(url, "/curation/outliers", "OutliersPage", openapi, offset=offset, limit=7)
        rows += page["rows"]
        offset += 7
        if offset >= page["total"]:
            break
    kinds = [r["kind"] for r in rows]
    assert set(kinds) == set(RESULTS["outliers"].kinds) and len(rows) == page["total"]
    assert kinds == sorted(kinds, key=["no content", "embedded", "broken"].index)
    assert {r["id"] for r in rows if r["kind"] == "no content"} >= set(every_kind["planted"])
    assert all(r["reasons"] for r in rows if r["kind"] == "no content")
    assert [r["id"] for r in rows if r["kind"] == "broken"] == ["odd/broken.jpg"]

    # duplicates: the first page and one in the middle; members marked, one kept per group by --keep largest
    first = _get(url, "/curation/duplicates", "DuplicatesPage", openapi, limit=2)
    assert first["keep"] == "largest" and first["total"] >= 4
    middle = _get(url, "/curation/duplicates", "DuplicatesPage", openapi, offset=first["total"] // 2, limit=2)
    groups = first["groups"] + middle["groups"]
    member_kinds = {m["kind"] for g in _all_groups(url, openapi) for m in g["members"]}
    assert member_kinds == set(RESULTS["duplicates"].kinds)
    for g in groups:
        assert g["size"] == len(g["members"]) and sum(not m["remove"] for m in g["members"]) == 1
        assert next(m["id"] for m in g["members"] if not m["remove"]) == g["kept"]
    removal = httpx.get(url + "/curation/duplicates/remove", headers=AUTH)
    assert removal.status_code == 200 and removal.headers["content-type"].startswith("text/plain")
    listed = (every_kind["emb"] / "curation" / "remove.txt").read_text()
    assert sorted(removal.text.splitlines()) == sorted(listed.splitlines()) and listed

    # leaks: the exact copy of emb's image, with its partner's thumbnail
    leaks = _get(url, "/curation/leaks", "LeaksPage", openapi)
    assert {"exact"} <= {r["kind"] for r in leaks["rows"]}
    leaked = next(r for r in leaks["rows"] if r["id"] == "odd/leaked.jpg")
    assert leaked["id_a"] == "orig_04.jpg" and leaked["kind"] == "exact"
    thumb = httpx.get(url + "/curation/leaks/thumb", params={"id": "odd/leaked.jpg"}, headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    # the map: its sample with the labels and quality flags already joined
    shared = _get(url, "/curation/shared_parts", "SharedPartsPage", openapi, limit=3)
    assert shared["total"] >= len(shared["rows"]) and shared["threshold"] is not None
    for row in shared["rows"]:  # each image's size comes from the region index, to draw its box on a thumbnail
        assert row["size"] is not None and row["box"][2] <= row["size"][0] + 0.5
    points = _get(url, "/curation/map", "MapPoints", openapi)
    assert points["total"] == points["shown"] == len(points["ids"]) == len(points["label"]) == len(points["flag"])
    label = dict(zip(points["ids"], points["label"]))
    flag = dict(zip(points["ids"], points["flag"]))
    assert label["planted/board_00.png"] == "planted" and "low information" in flag["planted/board_00.png"]
    assert "dark" in (flag["odd/dark.jpg"] or "")

    # every row's thumbnail, found by the locator `run` recorded
    for item in points["ids"][:5]:
        r = httpx.get(url + "/thumb", params={"id": item}, headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", item


def _all_groups(url: str, openapi: dict) -> list[dict]:
    groups, offset = [], 0
    while True:
        page = _get(url, "/curation/duplicates", "DuplicatesPage", openapi, offset=offset, limit=200)
        groups += page["groups"]
        offset += 200
        if offset >= page["total"]:
            return groups


def test_every_tab_of_the_page_in_a_real_browser(every_kind, browser, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{every_kind['url']}/ui")
    page.fill("#key", KEY)
    page.click("#keysave")
    for tab in ("duplicates", "outliers", "leaks", "map"):
        expect(page.locator(f'[data-tab="{tab}"]')).to_be_visible()
    page.click('[data-tab="duplicates"]')
    page.wait_for_selector("#groups .group")
    assert "kept by --keep largest" in page.inner_text("#dup-page")
    assert page.locator("#groups .card.kept").count() >= 1 and "to remove" in page.inner_text("#groups")
    with page.expect_download() as download:
        page.click("#dup-remove")
    exported = Path(download.value.path()).read_text().splitlines()
    assert sorted(exported) == sorted((every_kind["emb"] / "curation" / "remove.txt").read_text().splitlines())
    shots = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "ui-duplicates-kept.png"), full_page=True)
    page.click('[data-tab="outliers"]')
    page.wait_for_selector("#outlier-rows tr")
    text = page.inner_text("#outlier-rows")
    assert "no content" in text and "broken" in text
    page.click('[data-tab="leaks"]')
    page.wait_for_selector("#leak-rows tr")
    until(page, "[...document.querySelectorAll('#leak-rows img')].every(i => i.naturalWidth > 0)")
    page.click('[data-tab="map"]')
    expect(page.locator("#map-info")).to_contain_text("images")
    page.select_option("#map-colour", "label")
    page.select_option("#map-colour", "flag")
    assert not errors, errors
    context.close()


def test_the_map_tab_selects_a_planted_cluster_and_exports_exactly_its_ids(every_kind, browser, tmp_path):
    from playwright.sync_api import expect

    url, planted = every_kind["url"], set(every_kind["planted"])
    points = httpx.get(f"{url}/curation/map", headers=AUTH).json()
    table = pq.read_table(every_kind["emb"] / "curation" / "map.parquet").to_pydict()
    xy = {i: (x, y) for i, x, y in zip(table["id"], table["x"], table["y"])}
    xs, ys = [xy[i][0] for i in planted], [xy[i][1] for i in planted]
    box = (min(xs), max(xs), min(ys), max(ys))
    # the map keeps the planted images together, apart from the rest: no other point inside their box
    others = [i for i in xy if i not in planted and box[0] <= xy[i][0] <= box[1] and box[2] <= xy[i][1] <= box[3]]
    assert not others, (others, box)
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/ui")
    page.fill("#key", KEY)
    page.click("#keysave")
    expect(page.locator('[data-tab="map"]')).to_be_visible()
    page.click('[data-tab="map"]')
    expect(page.locator("#map-info")).to_contain_text(f"{points['total']} images")
    rect = page.locator("#map-canvas").bounding_box()

    def screen(x: float, y: float) -> tuple[float, float]:
        sx, sy = page.evaluate(f"mapToScreen({x}, {y}, {rect['width']}, {rect['height']})")
        return rect["x"] + sx, rect["y"] + sy

    # a box a few pixels around the planted points, dragged with the mouse
    (x0, y0), (x1, y1) = screen(box[0], box[3]), screen(box[1], box[2])
    page.mouse.move(x0 - 4, y0 - 4)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    page.mouse.move(x1 + 4, y1 + 4, steps=3)
    page.mouse.up()
    expect(page.locator("#map-selected")).to_have_text(f"{len(planted)} selected")
    with page.expect_download() as download:
        page.click("#map-export")
    exported = [line.strip('"') for line in Path(download.value.path()).read_text().splitlines()[1:]]
    assert set(exported) == planted and len(exported) == len(planted)
    # colour by quality flag, hover shows a thumbnail, a click searches for more like it
    page.select_option("#map-colour", "flag")
    hx, hy = screen(*xy[sorted(planted)[0]])
    page.mouse.move(hx, hy)
    expect(page.locator("#map-tip")).to_be_visible()
    until(page, "document.querySelector('#map-tip img') && document.querySelector('#map-tip img').naturalWidth > 0")
    shots = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "ui-map.png"), full_page=True)
    page.mouse.click(hx, hy)
    expect(page.locator("#query-info")).to_contain_text("more like")
    assert page.input_value("#qid") in planted
    assert not errors, errors
    context.close()


def test_results_written_before_the_contract_are_still_served(every_kind, trained_model, tmp_path):
    """A folder curated by an older version: no group table, no map sample, no remove column, one row group."""
    from tests.support.server import make_client

    folder = tmp_path / "emb"
    shutil.copytree(every_kind["emb"], folder)
    curation = folder / "curation"
    (curation / "duplicate_groups.parquet").unlink()
    (curation / "map_sample.parquet").unlink()
    old = pq.read_table(curation / "duplicates.parquet").drop_columns(["remove"])
    pq.write_table(old, curation / "duplicates.parquet")
    with make_client(trained_model, index=str(folder)) as client:
        page = client.get("/curation/duplicates", params={"limit": 50}).json()
        sizes = {}
        for g in old.column("group").to_pylist():
            sizes[g] = sizes.get(g, 0) + 1
        assert page["total"] == len(sizes) and [g["size"] for g in page["groups"]] == list(sizes.values())
        assert all(g["kept"] is None and all(m["remove"] is None for m in g["members"]) for g in page["groups"])
        removal = client.get("/curation/duplicates/remove").text.split()
        rows = zip(old.column("id").to_pylist(), old.column("representative").to_pylist())
        assert sorted(removal) == sorted(i for i, r in rows if i != r)  # all but each group's representative
        points = client.get("/curation/map").json()
        assert points["total"] == points["shown"] > 0 and points.get("label") is None
        assert "run `byol-embed map" in points["note"]


def test_quality_and_labels_join_their_new_flags_and_labels_into_the_maps_points(every_kind, tmp_path, capsys):
    folder = tmp_path / "emb"
    shutil.copytree(every_kind["emb"], folder)
    sample = folder / "curation" / "map_sample.parquet"
    before = pq.read_table(sample).to_pydict()
    low_before = sum("low information" in (f or "") for f in before["flag"])
    # a grey histogram holds at most 8 bits: every measured image has "low information" below 8.01
    assert embed_main(["quality", str(folder), "--no-progress", "--low-information", "8.01"]) == 0
    assert "the map's points show the new flags" in capsys.readouterr().out
    after = pq.read_table(sample).to_pydict()
    assert after["id"] == before["id"] and after["x"] == before["x"]  # the layout is the map's, untouched
    low_after = sum("low information" in (f or "") for f in after["flag"])
    assert low_after > low_before and low_after >= len(after["id"]) - sum(f is None for f in after["flag"])
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\n" + "".join(f"{i},{'board' if i.startswith('planted') else 'other'}\n"
                                          for i in before["id"]))
    assert embed_main(["labels", str(folder), "--labels", str(csv), "--no-progress"]) == 0
    labels = dict(zip(pq.read_table(sample).column("id").to_pylist(), pq.read_table(sample).column("label").to_pylist()))
    assert labels["planted/board_00.png"] == "board" and labels["odd/dark.jpg"] == "other"
