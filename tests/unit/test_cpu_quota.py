"""The default worker count: CPUs this process may use, capped by the cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

from edge.cpu_quota import cgroup_cpu_limit, default_workers


def fake_cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup tree under tmp_path and a /proc/self/cgroup naming the process's place."""
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(proc)
    return root, proc_cgroup


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_container_quota_of_two_cpus_on_a_bigger_host(tmp_path: Path) -> None:
    # docker run --cpus=2 with a cgroup namespace: the container's cgroup is the mount
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 2.0
    assert default_workers(root, proc) == min(affinity(), 2)


def test_fractional_quota_rounds_down_but_never_below_one(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert default_workers(root, proc) == 1
    root, proc = fake_cgroup(tmp_path / "b", "0::/\n", {"cpu.max": "150000 100000\n"})
    assert default_workers(root, proc) == 1


def test_no_quota_means_every_cpu_of_the_affinity(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert default_workers(root, proc) == affinity()
    # no cgroup files at all (not Linux, or cgroupfs not mounted)
    missing = tmp_path / "nowhere"
    assert default_workers(missing, missing / "cgroup") == affinity()


def test_systemd_unit_quota_and_the_tightest_ancestor(tmp_path: Path) -> None:
    # a service in system.slice (CPUQuota=300%), the slice itself limited to one CPU
    root, proc = fake_cgroup(
        tmp_path,
        "0::/system.slice/edge.service\n",
        {
            "system.slice/edge.service/cpu.max": "300000 100000",
            "system.slice/cpu.max": "100000 100000",
        },
    )
    assert cgroup_cpu_limit(root, proc) == 1.0
    root, proc = fake_cgroup(
        tmp_path / "b",
        "0::/system.slice/edge.service\n",
        {"system.slice/edge.service/cpu.max": "300000 100000", "system.slice/cpu.max": "max"},
    )
    assert cgroup_cpu_limit(root, proc) == 3.0


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    # a v1 container: /proc/self/cgroup names the host's path, the mount is the container
    root, proc = fake_cgroup(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(root, proc) == 4.0
    root, proc = fake_cgroup(
        tmp_path / "b",
        "3:cpu,cpuacct:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(root, proc) is None
