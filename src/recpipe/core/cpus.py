"""How many CPUs this process is really given, and OpenMP settings that share them well.

torch sizes its thread pools from the host's core count: in a pod limited to 2 CPUs on a
64-core node it starts 64 threads, the cgroup's CFS quota is spent in the first few
milliseconds of each 100 ms period, and every thread then waits, throttled, for the next
one. The real budget is the smallest of

- the cgroup CPU quota: v2 `cpu.max` ("max 100000" or "200000 100000"), v1
  `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none), on this process's cgroup and every
  ancestor (a parent's limit binds its children);
- the CPUs the scheduler may run it on (`os.sched_getaffinity`: cpusets, taskset).

Sharing is the other trap: OpenMP (libgomp in torch's CPU wheel) lets a thread that waits
at the end of a parallel region spin on the CPU for ~300,000 iterations before it sleeps.
Alone that saves a wake-up; beside busy processes the spinning thread burns the time
slice its sibling needs to finish, and every small op of a training step waits a whole
scheduler tick. `OMP_WAIT_POLICY=PASSIVE` (libgomp, Intel's `KMP_BLOCKTIME=0` likewise)
makes waiting threads sleep. OpenMP reads these variables once, when torch loads it, so
`prepare_openmp_env` must run before `import torch`; an explicit setting is kept.

Pure: no torch import here; the root and file paths are parameters, so tests feed it
hand-made cgroup trees.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
# Set before torch loads OpenMP (see the module docstring); setdefault keeps a user's value.
OPENMP_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",  # libgomp and Intel OpenMP: waiting threads sleep
    "KMP_BLOCKTIME": "0",  # Intel OpenMP (MKL builds): the same, in its own words
}
_MAX_FILE_BYTES = 4096  # cgroup files hold a line; a bigger one is not a cgroup file


@dataclass(frozen=True)
class CpuBudget:
    """What this process may use: `quota` CPUs by the cgroup (None: no limit) on
    `affinity` CPUs it may be scheduled on."""

    quota: float | None
    affinity: int

    @property
    def threads(self) -> int:
        """Threads worth starting: a thread beyond the quota only adds throttling, so the
        quota is rounded down (1.5 CPUs -> 1), never below one."""
        limit = self.affinity if self.quota is None else min(self.affinity, self.quota)
        return max(1, math.floor(limit + 1e-9))

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g}"
        return f"cgroup quota {quota} CPUs, affinity {self.affinity} CPUs -> {self.threads} threads"


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(_MAX_FILE_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return None


def _v2_quota(text: str | None) -> float | None:
    """`cpu.max`: "<quota> <period>" or "max <period>"."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(quota_text: str | None, period_text: str | None) -> float | None:
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy ("0::/path") and in v1's cpu
    controller ("N:cpu,cpuacct:/path"), from /proc/self/cgroup."""
    v2 = v1 = None
    text = _read(Path(proc_cgroup)) or ""
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """`base/path` and each parent folder up to `base` itself, deepest first. A path not
    visible here (a host path outside this cgroup namespace) leaves just `base`."""
    out = [base]
    if path:
        current = base
        for part in [p for p in path.split("/") if p and p not in (".", "..")]:
            current = current / part
            out.append(current)
    return out[::-1]


def cgroup_quota(root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs
    (e.g. 1.5); None when no level sets one or no cgroup file can be read."""
    base = Path(root)
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    quotas: list[float] = []
    for folder in _ancestors(base, v2_path):
        q = _v2_quota(_read(folder / "cpu.max"))
        if q is not None:
            quotas.append(q)
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        mount = base / controller
        if not mount.is_dir():
            continue
        for folder in _ancestors(mount, v1_path):
            q = _v1_quota(
                _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            )
            if q is not None:
                quotas.append(q)
        break
    return min(quotas) if quotas else None


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on (taskset, cpusets)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cpu_budget(root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> CpuBudget:
    return CpuBudget(quota=cgroup_quota(root, proc_cgroup), affinity=affinity_cpus())


def torch_threads(configured: int | None, budget: CpuBudget | None = None) -> int:
    """The thread count to give torch: the config's when it sets one, else the budget's."""
    if configured is not None:
        return configured
    return (budget or cpu_budget()).threads


def prepare_openmp_env(environ: dict[str, str] | None = None) -> bool:
    """Set `OPENMP_ENV` where unset. True when it can still take effect (torch not loaded
    yet in this process); call it first thing in an entry point."""
    env = os.environ if environ is None else environ
    for key, value in OPENMP_ENV.items():
        env.setdefault(key, value)
    return "torch" not in sys.modules
