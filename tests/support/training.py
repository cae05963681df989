"""The trainer as the training tests run it: through its launchers, always stopped."""

from __future__ import annotations

import os
import subprocess

from tests.support import REPO, processes

SCRIPT = str(REPO / "training" / "pretrain.py")
SMALL = ["--batch-size-per-device", "4", "--total-batch-size", "8", "--num-workers", "0"]


def run(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = launcher or ["accelerate", "launch", "--cpu", "--num_processes", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return processes.run([*launcher, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
