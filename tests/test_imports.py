"""The import rules: import-linter's contracts (pyproject.toml's [tool.importlinter]) and no import circle, counting
imports inside functions (the shared tool beside the repository, where CI lays it)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support import REPO


def test_the_import_contracts_hold():
    linter = shutil.which("lint-imports")
    assert linter, "import-linter is in the test extra: pip install -e '.[test]'"
    proc = subprocess.run([linter, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "KEPT" in proc.stdout


def test_no_module_imports_itself_in_a_circle():
    tool = REPO.parent / "shared" / "tools" / "import_circles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not beside the repository")
    proc = subprocess.run([sys.executable, str(tool)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
