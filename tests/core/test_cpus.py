"""The CPU budget from hand-made cgroup trees (v1 and v2, nested limits, junk files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recpipe.core import cpus
from recpipe.core.cpus import CpuBudget


def _tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return str(root), str(proc_file)


@pytest.mark.parametrize(
    ("files", "proc", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),  # v2, limit at the root
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2, unlimited
        ({"cpu.max": "150000 100000"}, "0::/\n", 1.5),
        # v2: the pod's own folder is limited, its parent more tightly: the parent binds
        (
            {"kubepods/cpu.max": "100000 100000", "kubepods/pod1/cpu.max": "400000 100000"},
            "0::/kubepods/pod1\n",
            1.0,
        ),
        # v1 cpu controller, quota on this process's cgroup below the mount
        (
            {
                "cpu/cpu.cfs_quota_us": "-1",
                "cpu/cpu.cfs_period_us": "100000",
                "cpu/job/cpu.cfs_quota_us": "50000",
                "cpu/job/cpu.cfs_period_us": "100000",
            },
            "4:memory:/x\n1:cpu:/job\n0::/\n",
            0.5,
        ),
        # v1 with the combined cpu,cpuacct mount (Debian/Ubuntu hosts)
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            "2:cpu,cpuacct:/\n",
            3.0,
        ),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n", None),
        # a host path not visible in this namespace: the mount's own file still counts
        ({"cpu.max": "100000 100000"}, "0::/not/here\n", 1.0),
        # junk: unreadable numbers, a zero period, no files at all
        ({"cpu.max": "lots 100000"}, "0::/\n", None),
        ({"cpu.max": "100000 0"}, "0::/\n", None),
        ({}, "", None),
    ],
)
def test_cgroup_quota(
    tmp_path: Path, files: dict[str, str], proc: str, expected: float | None
) -> None:
    root, proc_file = _tree(tmp_path, files, proc)
    assert cpus.cgroup_quota(root, proc_file) == expected


def test_missing_root_is_no_limit(tmp_path: Path) -> None:
    assert cpus.cgroup_quota(str(tmp_path / "none"), str(tmp_path / "none.txt")) is None


def test_an_oversized_file_is_not_read_whole(tmp_path: Path) -> None:
    root, proc_file = _tree(tmp_path, {"cpu.max": "1" * 100_000 + " 100000"}, "0::/\n")
    assert cpus.cgroup_quota(root, proc_file) is None


@pytest.mark.parametrize(
    ("quota", "affinity", "threads"),
    [
        (None, 64, 64),  # no limit: every CPU it may run on
        (2.0, 64, 2),  # a 2-CPU pod on a 64-core node: 2, not 64
        (1.5, 64, 1),  # a thread beyond the quota only adds throttling
        (0.25, 8, 1),  # never below one
        (8.0, 2, 2),  # taskset to 2 CPUs under a larger quota
    ],
)
def test_budget_threads(quota: float | None, affinity: int, threads: int) -> None:
    budget = CpuBudget(quota=quota, affinity=affinity)
    assert budget.threads == threads
    assert f"-> {threads} threads" in budget.describe()


def test_configured_threads_win() -> None:
    assert cpus.torch_threads(3, CpuBudget(quota=1.0, affinity=1)) == 3
    assert cpus.torch_threads(None, CpuBudget(quota=1.0, affinity=4)) == 1


def test_affinity_is_this_process() -> None:
    assert cpus.affinity_cpus() == len(os.sched_getaffinity(0))


def test_openmp_env_keeps_explicit_values() -> None:
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    cpus.prepare_openmp_env(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}


def test_importing_recpipe_sets_the_wait_policy_before_torch() -> None:
    env = {k: v for k, v in os.environ.items() if k not in cpus.OPENMP_ENV}
    code = "import os, sys, recpipe; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["PASSIVE", "False"]
