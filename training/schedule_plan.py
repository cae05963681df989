"""The step plan of a run: how many optimizer steps, how long the warmup, and what a time budget planned.

Without a budget the plan is the config's: ``epochs x steps_per_epoch`` (capped by ``max_steps``), warmup
``warmup_epochs x steps_per_epoch``. With ``time_budget_min`` the trainer first runs a few calibration steps,
measures the step time and one checkpoint, then :func:`plan_for_budget` sets the total steps so that the whole
recipe (linear warmup, cosine lr to zero, tau to one) ends inside the budget, with the time that checkpoints,
the kNN monitor and the final export will take reserved. The warmup keeps its fraction of the schedule. The
plan is stored in every checkpoint's trainer state, so a resumed run follows the same plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from training.schedules import lr_at, tau_at

CALIBRATION_STEPS = 4  # one untimed (allocations, first batch) + three timed steps


@dataclass
class StepPlan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    budget: dict[str, Any] = field(default_factory=dict)  # what a time budget measured and planned

    def lr(self, step: int, peak_lr: float) -> float:
        return lr_at(step, peak_lr=peak_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps)

    def tau(self, step: int, tau_base: float, hold_fraction: float) -> float:
        return tau_at(step, tau_base=tau_base, total_steps=self.total_steps, hold_fraction=hold_fraction)

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepPlan:
        return cls(**data)


def config_plan(steps_per_epoch: int, epochs: int, warmup_epochs: float, max_steps: int = 0) -> StepPlan:
    total = steps_per_epoch * epochs
    if max_steps:
        total = min(total, max_steps)
    return StepPlan(steps_per_epoch, total, int(round(warmup_epochs * steps_per_epoch)))


def plan_for_budget(full: StepPlan, *, budget_s: float, elapsed_s: float, done_steps: int, step_s: float,
                    checkpoint_s: float, checkpoint_every: int, monitor_s: float, export_s: float,
                    epoch_checkpoints: bool = True, checkpoint_every_s: float = 0.0,
                    monitor_every: int = 0) -> StepPlan:
    """Fit ``full`` into what is left of ``budget_s``.

    ``elapsed_s``: wall time already spent (set-up and the calibration steps); ``step_s``: measured seconds per
    optimizer step; ``checkpoint_s``: one checkpoint; ``monitor_s``: one kNN monitor pass (0 when off), run at
    each epoch end, or every ``monitor_every`` steps where that is set; ``export_s``: the final checkpoint, card
    and export. Checkpoints are taken every ``checkpoint_every`` steps, at epoch ends (``epoch_checkpoints``) and
    every ``checkpoint_every_s`` seconds. Never plans more than ``full`` nor fewer than ``done_steps + 1``.

    Example:
        >>> full = StepPlan(steps_per_epoch=10, total_steps=1000, warmup_steps=100)
        >>> p = plan_for_budget(full, budget_s=100, elapsed_s=10, done_steps=4, step_s=0.5, checkpoint_s=0,
        ...                     checkpoint_every=500, monitor_s=0, export_s=0)
        >>> p.total_steps, p.warmup_steps
        (184, 18)
    """
    left = budget_s - elapsed_s - export_s

    def overhead(steps: int) -> float:
        new = max(steps - done_steps, 0)
        epoch_ends = steps // full.steps_per_epoch - done_steps // full.steps_per_epoch
        timed = int(new * step_s / checkpoint_every_s) if checkpoint_every_s > 0 else 0
        saves = min(new // max(checkpoint_every, 1) + (epoch_ends if epoch_checkpoints else 0) + timed, new)
        monitors = new // monitor_every if monitor_every > 0 else epoch_ends
        return saves * checkpoint_s + monitors * monitor_s

    # the most steps whose time plus overheads fits (overheads grow with the steps: search down from the estimate)
    steps = done_steps + max(int(left / max(step_s, 1e-9)), 0)
    steps = min(steps, full.total_steps)
    def fits(n: int) -> bool:
        return (n - done_steps) * step_s + overhead(n) <= left

    while steps > done_steps + 1 and not fits(steps):
        over = (steps - done_steps) * step_s + overhead(steps) - left
        steps -= max(1, int(over / max(step_s, 1e-9)))
    while steps < full.total_steps and fits(steps + 1):  # the coarse step down may overshoot: fill up again
        steps += 1
    steps = max(steps, done_steps + 1)
    fraction = full.warmup_steps / max(full.total_steps, 1)
    warmup = int(round(fraction * steps))
    budget = {"budget_min": round(budget_s / 60, 3), "planned_at_step": done_steps, "full_steps": full.total_steps,
              "planned_steps": steps, "planned_epochs": round(steps / full.steps_per_epoch, 3),
              "warmup_steps": warmup, "step_s": round(step_s, 4), "checkpoint_s": round(checkpoint_s, 3),
              "monitor_s": round(monitor_s, 3), "export_s": round(export_s, 3), "setup_s": round(elapsed_s, 2),
              "fits_full_schedule": steps >= full.total_steps}
    return StepPlan(full.steps_per_epoch, steps, warmup, budget)


def estimate_export_s(checkpoint_s: float, onnx: bool) -> float:
    """The final checkpoint, the weights, the card and (when asked) the ONNX export: measured at about twice a
    checkpoint plus a few seconds of tracing on 2 cores for a ResNet-18; generous on purpose."""
    return 2.0 * checkpoint_s + (15.0 if onnx else 2.0)


def ceil_epochs(total_steps: int, steps_per_epoch: int) -> int:
    return math.ceil(total_steps / steps_per_epoch)
