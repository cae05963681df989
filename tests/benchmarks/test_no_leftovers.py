"""Benchmarks that start servers, peers or Ray clusters leave no process behind: after a normal end, after
Ctrl-C midway, after SIGTERM midway. Each runs at its smallest setting under ``reaper.py``, a child subreaper
that keeps every descendant in its tree, so nothing can escape the before/after comparison by re-parenting
or starting a session of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

REAPER = Path(__file__).with_name("reaper.py")
pytestmark = pytest.mark.slow
TINY_SERVE = ["--arch", "resnet18", "--crop", "64", "--seconds", "0.5", "--rounds", "1"]


def reaped(*cmd: str, signal_on: str | None = None, sig: str = "INT", timeout: float = 400) -> dict:
    extra = ["--signal-on", signal_on, "--signal", sig] if signal_on else []
    proc = subprocess.run([sys.executable, str(REAPER), "--timeout", str(timeout), *extra, "--", sys.executable, *cmd],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serve_load_with_every_peer_leaves_nothing_running():
    pytest.importorskip("litserve")
    report = reaped("benchmarks/serve_load.py", *TINY_SERVE, "--concurrency", "1",
                    "--peers", "naive", "litserve")  # each kind of process the peers start (ours-fast is ours)
    out = report["output"]
    assert report["returncode"] == 0, out
    for kind in ("ours", "naive", "litserve"):
        assert f"best {kind}" in out, out  # every peer really ran (none skipped)
    assert report["leftovers"] == [], report["leftovers"]


def test_serve_load_interrupted_with_ctrl_c_leaves_nothing_running():
    pytest.importorskip("litserve")
    # SIGINT to the benchmark alone (not its group) while LitServe and its workers are under load
    report = reaped("benchmarks/serve_load.py", *TINY_SERVE, "--concurrency", "1", "1", "--peers", "litserve",
                    signal_on=r"^litserve\s+c=1")
    assert report["signalled"], report["output"]
    assert report["returncode"] == 130, report["output"]
    assert "interrupted" in report["output"]
    assert report["leftovers"] == [], report["leftovers"]


def test_embed_job_with_ray_stopped_by_sigterm_shuts_its_cluster_down():
    pytest.importorskip("ray")
    # SIGTERM once the local engine is measured: the Ray cluster is starting or running
    report = reaped("benchmarks/embed_job.py", "--images", "64", "--arch", "resnet18", "--batch", "8", "--ray",
                    signal_on=r"ratio job / raw", sig="TERM")
    assert report["signalled"], report["output"]
    assert report["returncode"] == 130, report["output"]
    assert report["leftovers"] == [], report["leftovers"]
