"""Turns between pytest-xdist's workers: a test marked ``exclusive`` (one that measures a server's memory or its
answers under a flood, where a second test on the other core would change what it measures) runs while no other
test runs; every other test runs beside any other. A readers-writer lock on two files, shared by the run's workers
(``flock``), with a turnstile so that an exclusive test waiting for its turn is not starved by the other worker's
stream of ordinary tests."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _lock_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"byol-test-turns-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'serial')}"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def turn(exclusive: bool) -> Iterator[None]:
    """Hold this test's turn: alone if ``exclusive``, else beside any other non-exclusive test."""
    folder = _lock_dir()
    with open(folder / "turnstile", "a") as turnstile, open(folder / "room", "a") as room:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if exclusive:
            try:
                fcntl.flock(room, fcntl.LOCK_EX)  # waits for the other worker's test to end; holds the turnstile
                try:
                    yield
                finally:
                    fcntl.flock(room, fcntl.LOCK_UN)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            return
        fcntl.flock(turnstile, fcntl.LOCK_UN)  # only passed through: an exclusive test waiting holds it
        fcntl.flock(room, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)
