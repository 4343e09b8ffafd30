"""recpipe: raw events -> validation -> features -> training -> evaluation -> push -> serving.

The client's top-level folders `validation/`, `components/`, `pipelines/` and `serving/`
are the sub-packages `recpipe.validation`, `recpipe.components`, `recpipe.pipelines` and
`recpipe.serving` (pyproject.toml maps them). When this package is imported straight from
a source checkout (e.g. `python -m ...` run in the repository root), the checkout root is
added to the package path so those sub-packages resolve the same way.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_root = _Path(__file__).parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "components" / "__init__.py").is_file():
    __path__.append(str(_root))
