"""The service's fixtures: in-process apps on both backends, and one embedding folder made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.embed.cli import main as embed_main
from tests.support.images import make_near_duplicate_fixture, photos_for_quality, skimage_data_dir
from tests.support.server import make_client


@pytest.fixture(scope="module")
def onnx_client(trained_model):
    with make_client(trained_model, backend="onnx", max_wait_ms=2) as client:
        yield client


@pytest.fixture(scope="module")
def torch_client(trained_model):
    with make_client(trained_model, backend="torch", max_wait_ms=2) as client:
        yield client


@pytest.fixture(scope="session")
def emb(tmp_path_factory, trained_model) -> Path:
    """Copies of real photos embedded, indexed, deduplicated and scored: what a user serves with --index (made
    once for the page tests and the fuzzing)."""
    root = tmp_path_factory.mktemp("ui")
    images = root / "images"
    make_near_duplicate_fixture(photos_for_quality(skimage_data_dir())[:5], images)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = root / "emb"
    for argv in (["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress"],
                 ["index", str(out)], ["dedup", str(out), "--no-progress"], ["outliers", str(out), "--no-progress"]):
        assert embed_main(argv) == 0, argv
    return out
