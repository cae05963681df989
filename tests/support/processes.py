"""Processes the tests and benchmarks start, and how they end: all of them, whatever way the run ends.

A server peer is rarely one process: LitServe forks workers, uvicorn may, Ray starts a whole cluster. Killing the
process we started leaves its children running, using the cores the next measurement needs. So every process
is started in a session of its own (its own process group), and stopping it ends the whole group and every
descendant found beforehand (children that made a session of their own too): SIGTERM, a grace period, SIGKILL.

    with interruptible(), started([sys.executable, "-m", "service.server.cli", ...]) as proc:
        ...                       # Ctrl-C, SIGTERM, an exception or a normal end: the group is gone after
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # the process group alone (children that left it are then missed)
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for every purpose but its parent's wait()
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_all(group: int, pids: Sequence[int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """End ``proc``, its process group and its descendants: SIGTERM, up to ``timeout`` s, then SIGKILL."""
    pids = _descendants(proc.pid)
    _signal_all(proc.pid, pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    pids = sorted(set(pids) | set(_descendants(proc.pid)))
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    _signal_all(proc.pid, pids, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def start(cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session, so that ``stop`` can end the whole group."""
    return subprocess.Popen(list(cmd), start_new_session=True, **popen)


def run(cmd: Sequence[str], timeout: float | None = None, check: bool = False, **popen: Any
        ) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose whole process group ends on a timeout, an exception or Ctrl-C (``subprocess.run``
    kills only the direct child: an ``accelerate launch`` would leave the training process behind)."""
    if popen.pop("capture_output", False):
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = start(cmd, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    finally:
        if proc.poll() is None:
            stop(proc)
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd), out, err)
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


@contextlib.contextmanager
def started(cmd: Sequence[str], timeout: float = 15.0, **popen: Any) -> Iterator[subprocess.Popen]:
    proc = start(cmd, **popen)
    try:
        yield proc
    finally:
        stop(proc, timeout)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C does, so ``finally`` blocks (and ``started``) run on both."""

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
