"""torch's thread pools sized to the CPUs this process is given (`core.cpus`)."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from recpipe.core import cpus

log = logging.getLogger(__name__)


def set_torch_threads(configured: int | None, interop: int | None = None) -> int:
    """Intra-op threads = the config's, else the cgroup quota / affinity budget; inter-op
    threads the same unless given. torch accepts the inter-op size only before its pool
    starts (once per process): a later call keeps the pool it has. Returns the intra-op
    count set."""
    budget = cpus.cpu_budget()
    threads = cpus.torch_threads(configured, budget)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already started or set in this process
        torch.set_num_interop_threads(interop or threads)
    log.info(
        "torch threads %d intra-op, %d inter-op (%s; %s)",
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        "configured" if configured is not None else budget.describe(),
        ", ".join(f"{k}={os.environ.get(k, '')}" for k in cpus.OPENMP_ENV),
    )
    return threads
