"""Progress of long work on the command line: a tqdm bar when a person watches (stderr is
a terminal), plain lines otherwise (logs, CI), so a pipe never fills with carriage returns."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str, out: TextIO) -> None:
        self.total, self.desc, self.out, self.done = total, desc, out, 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=out) if out.isatty() else None

    def update(self, n: int = 1, message: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if message:
                self.bar.set_postfix_str(message)
            return
        of = f"/{self.total}" if self.total else ""
        self.out.write(f"{self.desc} {self.done}{of}" + (f": {message}" if message else "") + "\n")
        self.out.flush()

    def note(self, message: str, file: TextIO | None = None) -> None:
        """A line printed above the bar (to `file`, default the bar's stream), or a plain
        line without one."""
        target = file or self.out
        if self.bar is not None:
            self.bar.clear()  # the line lands where the bar was; the bar redraws below it
        target.write(message + "\n")
        target.flush()
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress(
    total: int | None, desc: str, unit: str = "step", out: TextIO | None = None
) -> Iterator[Progress]:
    bar = Progress(total, desc, unit, out or sys.stderr)
    try:
        yield bar
    finally:
        bar.close()
