"""The environment line every benchmark prints next to its result."""

from __future__ import annotations

import os
import platform


def environment() -> str:
    import torch

    from recpipe import __version__

    cpu = platform.processor() or platform.machine()
    return (
        f"env: recpipe {__version__}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cpus ({cpu}), threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}"
    )
