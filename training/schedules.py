"""Learning-rate and EMA schedules, as pure functions of the optimizer step."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0) -> float:
    """Linear warmup from ~0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``final_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay, 1.0)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def tau_at(step: int, *, tau_base: float, total_steps: int, hold_fraction: float = 0.0) -> float:
    """EMA coefficient: ``tau_base`` held for the first ``hold_fraction`` of the steps, then
    ``1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2`` over the remaining ``K`` steps, reaching 1."""
    hold = int(round(hold_fraction * total_steps))
    if step < hold:
        return tau_base
    span = max(total_steps - hold, 1)
    k = min(step - hold, span)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * k / span) + 1.0) / 2.0
