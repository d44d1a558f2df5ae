"""What the tests share for running real nodes and the `powlab` command line.

Node processes themselves are started with `lab.testnet.processes.NodeProcess`, the one
harness of the testnet, the tests and the benchmarks.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

from lab.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


# The tests' flavour of lab.waiting.wait_until: wait_for(predicate, timeout=30, what=…) polls
# from 20 ms up to 250 ms, and a timeout fails the test as an AssertionError.
wait_for = functools.partial(wait_until, first=0.02, error=AssertionError)


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
