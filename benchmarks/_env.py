"""The environment line every benchmark prints next to its result, and the result line."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from typing import Any


def environment() -> str:
    import torch

    from recpipe import __version__

    cpu = platform.processor() or platform.machine()
    return (
        f"env: recpipe {__version__}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cpus ({cpu}), threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}"
    )


def print_result(name: str, result: Any, default: Callable[[Any], Any] | None = None) -> None:
    """`RESULT <name> <json>` (what RESULTS.md quotes), then the environment line under it."""
    print(f"RESULT {name} " + json.dumps(result, default=default))
    print(environment())
