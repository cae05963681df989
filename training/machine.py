"""The settings a config leaves to the machine it runs on (``machine_settings: true``, as ``byol_r18_short`` does).

A user passes the data, the output, the image size and the budget; the rest follows from the hardware:

- **precision**: on CPU, bf16 autocast where the CPU computes bf16 natively (AVX512-BF16 or AMX), fp32 otherwise
  (``cpu_precision auto``, :mod:`training.precision`); on GPUs bf16 where supported, else fp16;
- **batch**: :data:`CPU_BATCH` images per step on CPU, :data:`GPU_BATCH` per GPU; the lr follows the optimizer
  batch linearly (``base_lr x batch / 256``);
- **crops**: where the views are made. On CPU the training process makes them itself between steps, with OpenCV
  from decoded images kept in memory (``decode_cache_mb``): a loader process
  would take cores from the step and preempt its threads; on GPUs the step decodes and augments on the GPU
  (``augment_backend device``), the loader workers only read bytes.

A field given on the command line is never changed. The choices and their reasons go into the run record.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from training.config import TrainConfig

CPU_BATCH = 256  # per step on CPU (the ablation in docs/training.md)
GPU_BATCH = 256  # per GPU
CACHE_MB_MAX = 2048  # decoded images per loader worker, at most (and at most an eighth of the memory)


def memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return 8192


def machine_settings(cfg: TrainConfig, device_type: str, world: int, explicit: set[str],
                     bf16_supported: bool = False) -> tuple[TrainConfig, dict[str, Any]]:
    """``(config, {field: [value, reason]})``: ``cfg`` with the machine's choices where ``cfg.machine_settings`` and
    the field was not given explicitly."""
    if not cfg.machine_settings:
        return cfg, {}
    choices: dict[str, tuple[Any, str]] = {}
    if device_type == "cuda":
        choices["mixed_precision"] = ("bf16" if bf16_supported else "fp16", "this GPU computes bf16" if bf16_supported
                                      else "this GPU has no bf16: fp16 with loss scaling")
        choices["batch_size_per_device"] = (GPU_BATCH, "per GPU")
        choices["augment_backend"] = ("device", "decode and augment on the GPU: the CPUs do not cap the step")
        choices["num_workers"] = (-1, "the workers only read bytes")
    else:
        choices["cpu_precision"] = ("auto", "bf16 where the CPU has native bf16, fp32 otherwise")
        choices["batch_size_per_device"] = (CPU_BATCH, "per step on CPU")
        choices["augment_backend"] = ("opencv", "OpenCV: 2.7x PIL's speed per core")
        choices["num_workers"] = (0, "the views are made in the training process between steps: a loader process "
                                     "would preempt the step's threads")
        choices["decode_cache_mb"] = (min(CACHE_MB_MAX, memory_mb() // 8), "decode each image once, augment from "
                                      "memory")
    if "image_size" in explicit:  # the published preprocessing follows the size asked for (resize 8/7 x crop)
        choices["eval_resize"] = (round(cfg.image_size * 8 / 7), "the crop's 8/7, as 224 is of 256")
    applied = {k: v for k, v in choices.items() if k not in explicit}
    changes = {k: v for k, (v, _) in applied.items()}
    batch = changes.get("batch_size_per_device", cfg.batch_size_per_device)
    if "total_batch_size" not in explicit:
        changes["total_batch_size"] = batch * cfg.grad_accum_steps * world
        applied["total_batch_size"] = (changes["total_batch_size"], "the batch actually used: no lr rescaling warning")
    return dataclasses.replace(cfg, **changes), {k: [v, why] for k, (v, why) in applied.items()}
