"""The documentation site builds with ``mkdocs build --strict``: a broken link, a page missing from the nav or a
reference to a module that does not exist fails it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


def test_the_site_builds_strict_with_every_page_and_screenshot(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in ("getting-started", "models", "training", "serving", "embedding", "data", "deployment", "benchmarks",
                 "development", "reference/storage", "reference/hub", "reference/server", "reference/embed"):
        assert (site / page / "index.html").is_file(), page
    embedding = (site / "embedding" / "index.html").read_text()
    assert all(f"screenshots/ui-{tab}.png" in embedding for tab in ("search", "duplicates", "outliers"))
    assert (site / "screenshots" / "ui-search.png").is_file()
    assert "storage.store.Store" in (site / "reference" / "storage" / "index.html").read_text()
