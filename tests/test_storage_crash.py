"""Kill a process that is writing a SQLiteStore with SIGKILL and check what survives.

The child applies a deterministic sequence of updates (tests/storage_crash_child.py) and reports
each commit on stdout. After the kill, the store must hold exactly the first k updates, where k
is the tip counter it holds, and k must be the last number the child reported or one more (an
update committed just before the kill landed between commit and print).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import MemoryStore, SQLiteStore
from tests.storage_crash_child import GENESIS, NETWORK, make_update

ROOT = Path(__file__).resolve().parent.parent
PROGRESS_TIMEOUT = 60.0  # seconds for the child to report the wanted progress

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def run_and_kill(datadir: Path, rng: random.Random) -> int:
    """Start the child, SIGKILL it at a pseudo-random moment, return the last count it printed."""
    wanted = rng.randrange(3, 60)
    delay = rng.uniform(0.0, 0.03)  # lands the kill anywhere in the next update or two
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_crash_child", str(datadir), "1000000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(PROGRESS_TIMEOUT, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None and child.stderr is not None
        reported = 0
        while reported < wanted:
            line = child.stdout.readline()
            if not line:
                child.wait()
                pytest.fail(
                    f"the child stopped after {reported} updates (exit {child.returncode}):"
                    f" {child.stderr.read()}"
                )
            reported = int(line)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        # Everything the child printed before it died is still in the pipe.
        lines = child.stdout.read().split()
        child.wait()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL, "the watchdog fired: the child made no progress"
    return int(lines[-1]) if lines else reported


@pytest.mark.parametrize("run", range(5))
def test_a_killed_writer_leaves_exactly_a_prefix_of_its_updates(tmp_path: Path, run: int) -> None:
    rng = random.Random(20240 + run)
    reported = run_and_kill(tmp_path, rng)
    with SQLiteStore.open(tmp_path, NETWORK, GENESIS) as store:
        snapshot = store.load()
        assert snapshot.tip is not None
        k = int.from_bytes(snapshot.tip, "big")
        assert reported <= k <= reported + 1
        expected = MemoryStore()
        for i in range(k):
            expected.apply(make_update(i))
        assert snapshot == expected.load()
        for i in range(k + 1):
            block = make_update(i).index.keys()
            for block_hash in block:
                assert store.get_block_bytes(block_hash) == expected.get_block_bytes(block_hash)
                assert store.get_undo_bytes(block_hash) == expected.get_undo_bytes(block_hash)
        # The store is writable again and continues the sequence where it stopped.
        store.apply(make_update(k))
        assert store.load().tip == (k + 1).to_bytes(32, "big")
