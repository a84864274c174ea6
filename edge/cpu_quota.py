"""How many workers the machine gives this process: CPUs it may run on, capped by a
cgroup CPU quota.

``os.cpu_count()`` counts the host's cores. In a container limited with ``--cpus=2`` (or a
systemd unit with ``CPUQuota=200%``) on a 64-core host it says 64, and 64 workers would
share two CPUs' worth of time, each throttled in turn. The quota is in the cgroup's
``cpu.max`` (cgroup v2: ``"<quota> <period>"`` in microseconds, or ``"max <period>"``
without a limit), or ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (cgroup v1, -1 without a
limit). A cgroup is limited by its ancestors too, so the tightest quota on the way up
counts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "default_workers"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's ``cpu`` controller."""
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return None, None
    v2 = v1 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _up_from(mount: Path, path: str | None) -> list[Path]:
    """``mount/path`` and each of its ancestors down to ``mount`` itself. Inside a container
    the mount is the container's own cgroup, and ``path`` (the host's name for it) does not
    exist below it: then only the mount is read."""
    dirs = []
    if path:
        current = mount / path.strip("/")
        while current != mount and mount in current.parents:
            dirs.append(current)
            current = current.parent
    dirs.append(mount)
    return dirs


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # "max": no limit at this level
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time the cgroup quota allows (1.5 for ``150000 100000``), the
    tightest along the way to the root; None when no level sets one."""
    v2, v1 = _own_paths(proc_cgroup)
    limits: list[float] = []
    for directory in _up_from(root, v2):
        text = _read(directory / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            limit = _ratio(quota, period or "100000")
            if limit is not None:
                limits.append(limit)
    if not limits:
        for mount in (root / "cpu", root / "cpu,cpuacct"):
            for directory in _up_from(mount, v1):
                v1_quota = _read(directory / "cpu.cfs_quota_us")
                v1_period = _read(directory / "cpu.cfs_period_us")
                if v1_quota is not None and v1_period is not None:
                    limit = _ratio(v1_quota, v1_period)
                    if limit is not None:
                        limits.append(limit)
    return min(limits) if limits else None


def default_workers(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """One worker per CPU this process may use: the CPUs it may run on (affinity, which
    ``--cpuset-cpus`` and ``taskset`` set), no more than the quota allows (rounded down:
    1.5 CPUs make one worker, never fewer than one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)
