"""Where a training run's wall time went: start-up, data waits, steps, evaluation, checkpoints, publish.

The sections are timed where they happen (``with clock.section("data"): ...``); what no section covers (logging,
the progress bar, the budget's bookkeeping) is ``other``. On a GPU the step's kernels run asynchronously, so a
wait for them can land in the next section that synchronizes: the split is exact on CPU and indicative there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

SECTIONS = ("start-up", "data", "steps", "evaluation", "checkpoints", "publish")


class WallClock:
    """Seconds per section since ``started`` (a ``time.monotonic()`` value, the process's start for a script)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.spent = dict.fromkeys(SECTIONS, 0.0)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if name not in self.spent:
            raise ValueError(f"unknown wall-time section {name!r}; sections: {', '.join(SECTIONS)}")
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.spent[name] += time.monotonic() - t0

    def start_up_done(self) -> None:
        """The first step begins: everything since the start was start-up (imports, data listing, model, workers)."""
        self.spent["start-up"] = time.monotonic() - self.started

    def report(self, earlier_s: float = 0.0) -> dict[str, float]:
        """Seconds per section, ``other`` and ``total`` (this process; ``earlier_s``: a resumed run's earlier
        processes, reported apart)."""
        total = time.monotonic() - self.started
        out = {k: round(v, 2) for k, v in self.spent.items()}
        out["other"] = round(max(total - sum(self.spent.values()), 0.0), 2)
        out["total"] = round(total, 2)
        if earlier_s:
            out["earlier_processes"] = round(earlier_s, 2)
        return out

    def line(self, report: dict[str, float] | None = None) -> str:
        report = report or self.report()
        total = max(report["total"], 1e-9)
        parts = [f"{k} {report[k]:.1f} s ({100 * report[k] / total:.1f} %)" for k in (*SECTIONS, "other")]
        return f"wall time {total / 60:.2f} min: " + ", ".join(parts)
