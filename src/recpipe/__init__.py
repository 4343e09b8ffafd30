"""recpipe: raw events -> validation -> features -> training -> evaluation -> registry ->
serving -> rollout, with operations (KFP client, trigger, CLI) beside.

The library lives in src/recpipe; the client's top-level folders `validation/`,
`components/`, `pipelines/` and `serving/` are the sub-packages `recpipe.validation`,
`recpipe.components`, `recpipe.pipelines` and `recpipe.serving` (pyproject.toml maps them
into the installed package; there is no import-path hack).
"""

__version__ = "0.1.0"
