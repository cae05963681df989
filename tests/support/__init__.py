"""What the tests (and the benchmarks) build with: processes that are always stopped, image sets, the repo root."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
