"""Progress on the command line: a bar on a terminal, plain lines elsewhere; the local
pipeline run counts its tasks on the bar and prints its log above it."""

from __future__ import annotations

import io

from recpipe.core.progress import progress
from recpipe.local.runner import ReadableLog


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar() -> None:
    out = Terminal()
    with progress(2, "tuning", "trial", out=out) as bar:
        assert bar.bar is not None
        bar.update(1, "trial 0 complete")
    assert "tuning" in out.getvalue() and "1/2" in out.getvalue() and "\r" in out.getvalue()


def test_a_pipe_gets_lines() -> None:
    out = io.StringIO()
    with progress(None, "pipeline", "task", out=out) as bar:
        assert bar.bar is None
        bar.update(1, "train-model")
    assert out.getvalue() == "pipeline 1: train-model\n"


def test_the_local_run_counts_tasks_on_the_bar() -> None:
    log_out, bar_out = io.StringIO(), Terminal()
    with progress(None, "pipeline", "task", out=bar_out) as bar:
        log = ReadableLog(log_out, bar)
        log.write("11:20:29.850 - INFO - Executing task \x1b[96m'train-model'\x1b[0m\n")
        log.write("    [KFP Executor 2026-12-02 11:20:30,001 INFO]: epoch 1/200 loss 7.1\n")
        assert bar.done == 1
    assert "epoch 1/200" in log_out.getvalue()  # the log still goes where it went
    assert "train-model" in bar_out.getvalue()
