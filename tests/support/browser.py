"""The page as a user sees it: Debian's chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def chromium() -> Iterator:
    """A headless chromium with no traffic of its own; skips where none is installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        # new headless; no background networking, component updates or other traffic of the browser's own
        browser = p.chromium.launch(executable_path=binary, args=[
            "--no-sandbox", "--headless=new", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--no-first-run", "--metrics-recording-only"])
        try:
            yield browser
        finally:
            browser.close()


def until(page, js: str, timeout: float = 20) -> None:
    """Poll an expression through page.evaluate (the pages' CSP forbids the eval that wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => {js}"):
        assert time.monotonic() < deadline, js
        time.sleep(0.1)
