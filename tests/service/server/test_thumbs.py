"""Thumbnails: read by the locator `byol-embed run` recorded for each row (one read, no listing of the input); an
index made before locators reads the input as `run` did, and an input that moved answers 404 at once, the failure
remembered for a while and its reason logged."""

from __future__ import annotations

import json
import shutil

import pyarrow.feather as feather
import pytest

from service.server import thumbs
from tests.support.server import make_client


def test_a_thumbnail_reads_its_locator_and_never_lists_the_input(emb, trained_model, monkeypatch):
    listed = []
    monkeypatch.setattr(thumbs, "open_input", lambda *args: listed.append(args))
    with make_client(trained_model, index=str(emb)) as client:
        for item in ("orig_00.jpg", "copy_01_half.jpg", "orig_04.jpg"):
            r = client.get("/thumb", params={"id": item})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", item
    assert listed == []


@pytest.fixture()
def older_index(emb, tmp_path):
    """A copy of the folder whose index was built before locators existed (its id table has none)."""
    folder = tmp_path / "emb"
    shutil.copytree(emb, folder)
    ids = folder / "index" / "ids.arrow"
    table = feather.read_table(ids)
    feather.write_feather(table.drop_columns(["locator"]), ids, compression="uncompressed")
    return folder


def test_an_older_index_lists_its_input_once_and_a_moved_input_fails_fast(older_index, emb, trained_model,
                                                                          monkeypatch, tmp_path, caplog):
    real = thumbs.open_input
    listings = []
    monkeypatch.setattr(thumbs, "open_input", lambda *args: listings.append(1) or real(*args))
    with make_client(trained_model, index=str(older_index)) as client:
        for item in ("orig_00.jpg", "orig_01.jpg"):
            assert client.get("/thumb", params={"id": item}).status_code == 200
    assert len(listings) == 1  # one listing for every thumbnail

    moved = tmp_path / "moved"
    manifest = json.loads((older_index / "manifest.json").read_text())
    manifest["input"] = str(moved)
    (older_index / "manifest.json").write_text(json.dumps(manifest))
    listings.clear()
    with make_client(trained_model, index=str(older_index)) as client:
        for item in ("orig_02.jpg", "orig_03.jpg", "orig_02.jpg"):
            r = client.get("/thumb", params={"id": item})
            assert r.status_code == 404 and r.json()["error"]["code"] == "image_unavailable"
            assert str(moved) not in r.text  # the reason goes to the log, not to the client
        assert len(listings) == 1  # the failure is remembered: no listing per request
        assert any(str(moved) in record.getMessage() for record in caplog.records)
        shutil.copytree(emb.parent / "images", moved)  # the input is back
        monkeypatch.setattr(thumbs, "FAILURE_TTL_S", 0.0)  # ... and the failure forgotten
        assert client.get("/thumb", params={"id": "orig_02.jpg"}).status_code == 200
