"""What the CPU can do, read once, without torch: the facts that decide precision and int8 choices.

Benchmarks print :func:`cpu_summary` beside every figure; training asks :func:`native_bf16` before it
turns bf16 autocast on (on a CPU without native bf16, bf16 autocast measured 7x slower than fp32).

    >>> isinstance(native_bf16(), bool)
    True
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
from pathlib import Path

# The flags (as /proc/cpuinfo spells them) that matter for this project's speed choices.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "f16c")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16).

    Where ``/proc/cpuinfo`` is unreadable, torch's own probe decides (``torch.backends.cpu`` reports
    "AVX512_BF16"/"AMX" capabilities on recent builds). This is the one place tests monkeypatch.
    """
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:  # pragma: no cover - non-Linux fallback
        import torch

        capability = torch.backends.cpu.get_cpu_capability().upper()
        return "BF16" in capability or "AMX" in capability
    except Exception:
        return False


def has_vnni() -> bool:
    """True where int8 dot products are native (AVX512-VNNI or AVX-VNNI): what makes U8S8 int8 fast."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's CFS quota allows (cgroup v2 ``cpu.max``, then v1 ``cpu.cfs_quota_us``), or ``None``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may actually use: a container's CPU quota (a pod's ``limits.cpu``), then the
    affinity mask (``taskset``, cpusets), then the machine's count. ``os.cpu_count()`` is the host's count, so
    pools sized from it on a 64-core node with a 2-CPU limit run 64 threads on 2 CPUs' time.

        >>> usable_cpus() >= 1
        True
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cpu_summary() -> str:
    """One line to print beside a benchmark figure, e.g.
    ``AMD EPYC, 2 cores; avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 no, ...; native bf16 no, vnni no``."""
    flags = cpu_flags()
    listed = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in RELEVANT_FLAGS)
    torch = sys.modules.get("torch")  # never import torch just to describe the CPU
    capability = f"; torch capability {torch.backends.cpu.get_cpu_capability()}" if torch is not None else ""
    usable = usable_cpus()
    cores = f"{os.cpu_count()} cores" + (f" ({usable} usable)" if usable != os.cpu_count() else "")
    return (f"{cpu_model()}, {cores}{capability}; {listed}; "
            f"native bf16 {'yes' if native_bf16() else 'no'}, vnni {'yes' if has_vnni() else 'no'}")
