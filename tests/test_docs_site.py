"""The documentation site builds with ``mkdocs build --strict``: a broken link, a page missing from the nav or a
reference to a module that does not exist fails it."""

from __future__ import annotations

import re
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
    for page in ("getting-started", "models", "training", "serving", "embedding", "curation", "data", "deployment",
                 "benchmarks", "development", "reference/storage", "reference/hub", "reference/server",
                 "reference/embed", "reference/curation", "reference/results"):
        assert (site / page / "index.html").is_file(), page
    curation = (site / "curation" / "index.html").read_text()
    assert all(f"screenshots/ui-{tab}.png" in curation for tab in ("duplicates", "outliers", "map", "leaks"))
    assert "screenshots/ui-search.png" in (site / "embedding" / "index.html").read_text()
    assert (site / "screenshots" / "ui-search.png").is_file()
    assert "storage.store.Store" in (site / "reference" / "storage" / "index.html").read_text()


LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


def lists_without_a_blank_line(text: str) -> list[tuple[int, str]]:
    """Lines that start a Markdown list right after a paragraph's line: Python-Markdown (mkdocs) then runs the list
    into the paragraph as plain text, and the strict build does not notice. Code fences are skipped."""
    found, fenced, previous = [], False, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            previous = ""
            continue
        if fenced:
            continue
        starts_list = LIST_ITEM.match(line) is not None
        in_paragraph = previous.strip() and not LIST_ITEM.match(previous) and not previous.lstrip().startswith(
            ("#", "|", ">", "<", "!!!", "    ")) and not previous.startswith((" ", "\t"))
        if starts_list and in_paragraph:
            found.append((number, line.strip()[:60]))
        previous = line
    return found


def test_the_check_finds_a_list_run_into_its_paragraph():
    assert lists_without_a_blank_line("Inputs:\n- a folder\n- a list\n") == [(2, "- a folder")]
    assert lists_without_a_blank_line("Inputs:\n\n- a folder\n- a list\n\n```\ntext\n- code\n```\n") == []


def test_every_list_in_the_docs_follows_a_blank_line():
    pages = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
    problems = {str(p.relative_to(REPO)): found for p in pages if (found := lists_without_a_blank_line(p.read_text()))}
    assert not problems, problems


def test_the_results_reference_is_generated_from_the_contract():
    from curation.results import reference

    page = REPO / "docs" / "reference" / "results.md"
    assert page.read_text() == reference(), "regenerate: python -m curation.results > docs/reference/results.md"
