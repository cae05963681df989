"""The service's fixtures: one embedding folder made once per session (the apps are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.embed.cli import main as embed_main
from tests.support.images import make_near_duplicate_fixture, photos_for_quality, skimage_data_dir


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
                 ["index", str(out)], ["dedup", str(out), "--no-progress", "--threshold", "0.86"], ["outliers", str(out), "--no-progress"]):
        assert embed_main(argv) == 0, argv
    return out
