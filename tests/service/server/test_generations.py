"""A running server follows its folder: an append while clients search is served after a switch with no error
and no answer that mixes generations; ``POST /search`` checks whether an image is already in the set."""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("faiss")

from service.embed.cli import main as embed_main  # noqa: E402
from tests.support import processes  # noqa: E402
from tests.support.images import image_bytes, write_images  # noqa: E402
from tests.support.server import make_client, start_server  # noqa: E402


def run(model: Path, data: Path, out: Path) -> None:
    assert embed_main(["run", "--model", str(model), "--input", str(data), "--output", str(out), "--shard-size", "6",
                       "--no-progress"]) == 0


def test_an_append_under_load_switches_generations_without_an_error_or_a_mix(trained_model, photos, tmp_path):
    data = tmp_path / "data"
    write_images(data, photos[:4], copies=3)
    shutil.rmtree(data / "bad")
    out = tmp_path / "emb"
    run(trained_model, data, out)
    assert embed_main(["index", str(out)]) == 0
    proc, url = start_server(trained_model, "--index", str(out), "--index-poll-s", "0.2")
    new_photo = photos[5].copy()
    new_photo.thumbnail((130, 130))
    new_blob = image_bytes(new_photo, "JPEG")
    gone = "photo1/01.jpg"
    answers: list[tuple[int, int, list[str]]] = []  # status, generation, ids
    stop = threading.Event()

    def client(query: dict) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/search", json={**query, "k": 50})
                body = r.json()
                answers.append((r.status_code, body.get("generation", -1), [x["id"] for x in body.get("results", [])]))

    threads = [threading.Thread(target=client, args=(q,)) for q in
               ({"id": "photo0/00.png"}, {"image": base64.b64encode(image_bytes(photos[2], "PNG")).decode()})]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)  # load on the first generation
        (data / "arrivals").mkdir()
        (data / "arrivals" / "new.jpg").write_bytes(new_blob)
        (data / gone).unlink()
        run(trained_model, data, out)  # commits generation 2, and the index follows in place
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/info").json()["search"]["generation"] != 2:
            assert time.monotonic() < deadline, "the server did not switch to generation 2"
            time.sleep(0.1)
        time.sleep(0.3)  # more load on the new generation
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        statuses = {status for status, _, _ in answers}
        assert statuses == {200}, statuses
        generations = [g for _, g, _ in answers]
        assert generations[0] == 1 and generations.count(2) > 0 and set(generations) == {1, 2}
        assert not any(gone in ids for _, g, ids in answers if g == 2)  # no answer mixes the two generations
        assert not any("arrivals/new.jpg" in ids for _, g, ids in answers if g == 1)

        found = httpx.post(f"{url}/search", json={"image": base64.b64encode(new_blob).decode(), "k": 3}).json()
        assert found["results"][0]["id"] == "arrivals/new.jpg" and found["results"][0]["score"] > 0.999
        check = httpx.post(f"{url}/search?duplicates=true", json={"image": base64.b64encode(new_blob).decode()}).json()
        assert check["duplicate"] is True and check["min_score"] == pytest.approx(0.86)
        assert check["results"][0] == {"id": "arrivals/new.jpg", "score": check["results"][0]["score"], "kind": "exact"}
        assert all(r["score"] >= 0.86 for r in check["results"])
        metrics = httpx.get(f"{url}/metrics").text
        assert "byol_index_generation 2.0" in metrics and "byol_index_switches_total 1.0" in metrics
        assert 'byol_duplicate_checks_total{found="yes"} 1.0' in metrics
    finally:
        processes.stop(proc, timeout=30)


@pytest.fixture(scope="module")
def searching(trained_model, emb):
    with make_client(trained_model, index=str(emb), index_poll_s=0) as client:
        yield client


def test_the_duplicate_check_says_exact_near_or_new(searching, emb):
    client = searching
    photos_bytes = (emb.parent / "images" / "orig_00.jpg").read_bytes()
    original = Image.open(io.BytesIO(photos_bytes))
    near_copy = image_bytes(original, "JPEG", quality=35)  # not in the set: re-encoded
    distinct = image_bytes(Image.linear_gradient("L").convert("RGB").resize((160, 120)), "PNG")
    same = client.post("/search", data={"duplicates": "true"}, files={"image": ("a.jpg", photos_bytes, "image/jpeg")})
    body = same.json()
    assert same.status_code == 200 and body["duplicate"] and body["results"][0]["kind"] == "exact"
    near = client.post("/search", data={"duplicates": "true"},
                       files={"image": ("b.jpg", near_copy, "image/jpeg")}).json()
    assert near["duplicate"] and near["results"][0]["kind"] == "near" and near["results"][0]["score"] >= 0.86
    fresh = client.post("/search?duplicates=true&min_score=0.999",
                        files={"image": ("c.png", distinct, "image/png")}).json()
    assert fresh == {**fresh, "duplicate": False, "results": [], "min_score": 0.999}
    cut = client.post("/search?min_score=0.5", json={"image": base64.b64encode(distinct).decode(), "k": 100}).json()
    assert all(r["score"] >= 0.5 for r in cut["results"]) and "kind" not in str(cut["results"])
    for bad, message in (("min_score=2", "min_score"), ("duplicates=maybe", "duplicates")):
        r = client.post(f"/search?{bad}", json={"id": "x"})
        assert r.status_code in (400, 422) and message in r.text


def test_a_server_on_object_storage_switches_to_the_new_generation(trained_model, photos, tmp_path, s3, monkeypatch):
    monkeypatch.setenv("BYOL_CACHE", str(tmp_path / "cache"))  # the local copies of the index on S3
    data = tmp_path / "data"
    write_images(data, photos[:2], copies=2)
    s3.upload_tree(data, "bkt/watch/data")
    folder = "s3://bkt/watch/emb/"
    run_s3 = ["run", "--model", str(trained_model), "--input", "s3://bkt/watch/data/", "--output", folder,
              "--no-progress", *s3.option]
    assert embed_main(run_s3) == 0 and embed_main(["index", folder, *s3.option]) == 0
    with make_client(trained_model, index=folder, storage_options=s3.options, index_poll_s=0.2) as client:
        assert client.get("/info").json()["search"]["generation"] == 1
        arrival = image_bytes(photos[3].resize((80, 60)), "JPEG")
        s3.fs.pipe_file("bkt/watch/data/arrivals/new.jpg", arrival)
        assert embed_main(run_s3) == 0  # generation 2 on S3; its index follows
        deadline = time.monotonic() + 30
        while client.get("/info").json()["search"]["generation"] != 2:
            assert time.monotonic() < deadline, client.get("/info").json()["search"]
            time.sleep(0.1)
        found = client.post("/search", json={"image": base64.b64encode(arrival).decode(), "k": 1}).json()
        assert found["generation"] == 2 and found["results"][0]["id"] == "arrivals/new.jpg"
        assert client.get("/info").json()["search"]["watch"]["last_error"] is None


def test_a_broken_new_index_leaves_the_served_one_and_is_not_reloaded_at_every_check(trained_model, photos, tmp_path):
    data = tmp_path / "data"
    write_images(data, photos[:2], copies=2)
    out = tmp_path / "emb"
    run(trained_model, data, out)
    assert embed_main(["index", str(out)]) == 0
    meta = (out / "index" / "index.json").read_text()
    with make_client(trained_model, index=str(out), index_poll_s=0.1) as client:
        (out / "index" / "index.json").write_text("{ not json")  # a broken index, as a failed copy could leave it
        deadline = time.monotonic() + 30
        while client.get("/info").json()["search"]["watch"]["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # five more checks
        assert 'byol_index_poll_errors_total 1.0' in client.get("/metrics").text  # not tried again at each check
        assert "JSONDecodeError" in client.get("/info").json()["search"]["watch"]["last_error"]  # still said
        r = client.post("/search", json={"id": "photo0/00.png", "k": 2})
        assert r.status_code == 200 and r.json()["generation"] == 1  # the served index goes on
        (out / "index" / "index.json").write_text(meta.replace('"count"', '"rewritten": true, "count"'))
        while client.get("/info").json()["search"]["watch"]["switched_at"] is None:  # a new version: loaded at once
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/info").json()["search"]["watch"]["last_error"] is None
