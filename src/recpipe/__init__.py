"""recpipe: raw events -> validation -> features -> training -> evaluation -> registry ->
serving -> rollout, with operations (KFP client, trigger, CLI) beside.

The library lives in src/recpipe; the client's top-level folders `validation/`,
`components/`, `pipelines/` and `serving/` are the sub-packages `recpipe.validation`,
`recpipe.components`, `recpipe.pipelines` and `recpipe.serving` (pyproject.toml maps them
into the installed package; there is no import-path hack).
"""

from recpipe.core.cpus import prepare_openmp_env

__version__ = "0.1.0"

# OpenMP reads its wait policy once, when torch loads it; every entry point (the CLI, a KFP
# component, the model server, a torchrun worker) imports this package before torch, so
# this is the one place early enough. Waiting threads sleep instead of spinning on CPUs
# other processes share (core.cpus says why); a value already in the environment wins.
prepare_openmp_env()
