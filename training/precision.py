"""Which precision a run computes in, decided from the config and the hardware, with the reason.

On GPUs the config's ``mixed_precision`` is used as it is. On CPU, fp16 autocast is not what
Accelerate does, so ``fp16`` maps to ``cpu_precision``: ``auto`` (the default) picks bf16 only where the
CPU computes bf16 natively (AVX512-BF16 or AMX) and fp32 otherwise; on an AVX2-only CPU bf16 autocast
measured 7x slower than fp32 (ResNet-18 64² batch 32: 48 vs 6.7 img/s). An explicit bf16 on such a
CPU is honoured, with a warning.
"""

from __future__ import annotations

import logging

from hub import hardware

logger = logging.getLogger(__name__)
CPU_PRECISIONS = ("auto", "bf16", "no")
EMULATED_BF16_SLOWDOWN = 7  # measured: ResNet-18 64² batch-32 step on an AMD EPYC with AVX2 only


def resolve_precision(mixed_precision: str, cpu_precision: str, device_type: str) -> tuple[str, str]:
    """``(precision for Accelerate, the reason in words)``; ``precision`` is ``"fp16" | "bf16" | "no"``.

    Example:
        >>> resolve_precision("bf16", "auto", "cuda")
        ('bf16', 'mixed_precision bf16')
    """
    if device_type != "cpu":
        return mixed_precision, f"mixed_precision {mixed_precision}"
    native = hardware.native_bf16()
    if mixed_precision == "fp16":
        if cpu_precision == "auto":
            if native:
                return "bf16", "cpu_precision auto: this CPU has native bf16"
            return "no", "cpu_precision auto: this CPU has no native bf16"
        precision, reason = cpu_precision, f"fp16 maps to cpu_precision {cpu_precision} on CPU"
    else:
        precision, reason = mixed_precision, f"mixed_precision {mixed_precision}"
    if precision == "bf16" and not native:
        logger.warning("bf16 was asked for explicitly but this CPU has no native bf16 (no avx512_bf16 or amx_bf16): "
                       "it is emulated and expected to run about %dx slower than fp32; use cpu_precision auto or no",
                       EMULATED_BF16_SLOWDOWN)
        reason += " (emulated: no native bf16 on this CPU)"
    return precision, reason


def precision_label(precision: str) -> str:
    return "fp32" if precision == "no" else precision
