"""How many CPUs this process may really use: affinity and the cgroup (container) CPU quota.

``os.cpu_count()`` reports the host's cores; a container limited to 2 CPUs on a 64-core host
that sizes its thread pools from it oversubscribes the quota and gets throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup: Path = CGROUP) -> int:
    """The smaller of the CPUs we may be scheduled on and the cgroup quota, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    v2 = _read(cgroup / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    quota_us = _read(cgroup / "cpu" / "cpu.cfs_quota_us")
    period_us = _read(cgroup / "cpu" / "cpu.cfs_period_us")
    if quota_us is None or period_us is None or int(quota_us) <= 0:
        return None
    return int(quota_us) / int(period_us)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
