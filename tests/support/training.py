"""The trainer as the training tests run it: through its launchers, always stopped."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO, processes

SCRIPT = str(REPO / "training" / "pretrain.py")
# the documented launcher: its own start-up costs ~4 s on 2 cores, so the tests that are not about launching use
# the script itself (a single process, which is what `accelerate launch --num_processes 1` runs anyway)
ACCELERATE = ["accelerate", "launch", "--cpu", "--num_processes", "1"]
SMALL = ["--batch-size-per-device", "4", "--total-batch-size", "8", "--num-workers", "0"]


def run(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The trainer on ``args`` (``python training/pretrain.py``, or ``launcher`` such as :data:`ACCELERATE`)."""
    launcher = launcher or [sys.executable]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return processes.run([*launcher, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
