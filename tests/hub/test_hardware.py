"""CPU facts: the CPUs a process may use, read from the cgroup quota and the affinity mask."""

from __future__ import annotations

import os

import pytest

from hub.hardware import cpu_summary, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),  # a pod's limits.cpu: 1.5 -> 2 threads
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still gets one thread
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # no quota: the affinity mask
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, no quota
    ({}, AFFINITY),  # no cgroup files at all
    ({"cpu.max": "garbage\n"}, AFFINITY),
])
def test_usable_cpus_takes_the_container_quota_then_the_affinity(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == expected


def test_the_summary_names_the_cores():
    assert f"{os.cpu_count()} cores" in cpu_summary()
