"""Run a child process that commits to a store, SIGKILL it at a chosen moment, keep what it said.

Both crash tests work this way (tests/test_storage_crash.py with tests/storage_crash_child.py,
tests/test_chain_crash.py with tests/chain_crash_child.py): the child prints a line around each
commit and flushes it, the parent reads the lines as they come and kills the child with SIGKILL
a short while after a chosen line, then compares the store with what the lines allow. Lines the
child printed just before it died are still in the pipe, so none is lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRESS_TIMEOUT = 60.0  # seconds for the child to report the wanted progress

needs_sigkill = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


@dataclass
class ChildRun:
    lines: list[str]  # every non-empty line the child printed, in order
    killed: bool  # by us; False: it ran to its end


def run_child(
    module: str,
    args: Sequence[str],
    kill_after: Callable[[str], bool] | None,
    delay: float,
) -> ChildRun:
    """Run ``python -m module *args`` from the repository root. Once `kill_after` is true of a
    line it printed, wait `delay` seconds and SIGKILL it; with None, let it finish.

    Fails the test if the child exits with an error, or makes no progress for
    PROGRESS_TIMEOUT seconds (a watchdog kills it then).
    """
    child = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stalled = threading.Event()

    def watchdog_fired() -> None:
        stalled.set()
        child.kill()

    watchdog = threading.Timer(PROGRESS_TIMEOUT, watchdog_fired)
    watchdog.start()
    lines: list[str] = []
    killed = False
    try:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            lines.append(line.strip())
            if kill_after is not None and kill_after(lines[-1]):
                time.sleep(delay)
                child.send_signal(signal.SIGKILL)
                killed = True
                break
        # Everything the child printed before it died is still in the pipe.
        lines.extend(child.stdout.read().split("\n"))
        lines = [line for line in lines if line]
        child.wait()
        if stalled.is_set():
            pytest.fail(f"the watchdog fired: the child made no progress in {PROGRESS_TIMEOUT} s")
        if child.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"the child failed (exit {child.returncode}): {child.stderr.read()}")
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    return ChildRun(lines, killed)
