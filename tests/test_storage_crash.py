"""Kill a process that is writing a SQLiteStore with SIGKILL and check what survives.

The child applies a deterministic sequence of updates (tests/storage_crash_child.py) and reports
each commit on stdout. After the kill, the store must hold exactly the first k updates, where k
is the tip counter it holds, and k must be the last number the child reported or one more (an
update committed just before the kill landed between commit and print).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage import MemoryStore, SQLiteStore
from tests import crash_harness
from tests.storage_crash_child import GENESIS, NETWORK, make_update

pytestmark = crash_harness.needs_sigkill


def run_and_kill(datadir: Path, rng: random.Random) -> int:
    """Start the child, SIGKILL it at a pseudo-random moment, return the last count it printed."""
    wanted = rng.randrange(3, 60)
    delay = rng.uniform(0.0, 0.03)  # lands the kill anywhere in the next update or two
    run = crash_harness.run_child(
        "tests.storage_crash_child",
        [str(datadir), "1000000"],
        kill_after=lambda line: int(line) >= wanted,
        delay=delay,
    )
    assert run.killed, f"the child ended by itself after {len(run.lines)} updates"
    return int(run.lines[-1])


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
