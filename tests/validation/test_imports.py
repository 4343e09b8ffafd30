"""The gate's libraries import in any process, not only in a pytest main process."""

from __future__ import annotations

import subprocess
import sys


def test_great_expectations_imports_under_python_c() -> None:
    """pyspark 4's connect check ends a file-less __main__ (python -c, xdist workers)
    with exit 0 and no error when one of its optional packages is missing."""
    code = "import great_expectations, recpipe.validation.gate; print('alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("alive"), out.stderr[-2000:]
