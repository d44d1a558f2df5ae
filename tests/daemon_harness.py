"""What the tests share for running real nodes and the `powlab` command line.

Node processes themselves are started with `lab.testnet.processes.NodeProcess`, the one
harness of the testnet, the tests and the benchmarks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail loudly after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def run_powlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `powlab` command line in a subprocess, from the repository root."""
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def tear_down_testnet(directory: Path, timeout: float = 120) -> None:
    """`powlab testnet down`, then SIGKILL anything it left: never leave processes behind."""
    import json

    from lab.testnet.processes import process_alive

    run_powlab("testnet", "down", "--dir", str(directory), timeout=timeout)
    try:
        nodes = json.loads((directory / "testnet.json").read_text())["nodes"]
    except FileNotFoundError:
        return
    for pid in (n.get("pid") for n in nodes):
        if pid and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
