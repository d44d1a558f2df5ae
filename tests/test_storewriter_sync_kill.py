"""kill -9 during a fast initial sync, whose commits are batched and written off the event loop:
the restarted node opens a consistent store at a tip of the source's chain, at most the batches
that can be in flight (one being gathered, MAX_PENDING_COMMITS queued) behind the last block it
logged as connected, and resumes the sync from there."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from consensus.params import REGTEST
from lab.testnet.processes import NodeProcess
from node.daemon import MAX_BLOCKS_PER_COMMIT
from node.storewriter import MAX_PENDING_COMMITS
from tests import subnets
from tests.daemon_harness import wait_for
from tests.helpers import key

pytestmark = pytest.mark.slow

BLOCKS = 3000
KILL_AT = 600  # the fresh node's height at which it is killed (it is still catching up)
TIMEOUT = 120.0
# What a kill may lose beyond the last connected block: the batch being gathered and every
# queued commit.
MAX_LOST = MAX_BLOCKS_PER_COMMIT * (MAX_PENDING_COMMITS + 1)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def logged(node: NodeProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in node.log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def test_kill_9_during_a_batched_initial_sync(tmp_path: Path) -> None:
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = free_port(host_a)
    source = NodeProcess(tmp_path / "a", args=["--p2p-bind", f"{host_a}:{port}"])
    fresh_args = ["--p2p-bind", f"{host_b}:0", "--connect", f"{host_a}:{port}"]
    fresh = NodeProcess(tmp_path / "b", args=fresh_args, log=tmp_path / "b-1.log")
    try:
        source.start()
        burn = key(7).address(REGTEST.address_prefix)
        hashes: list[str] = []
        while len(hashes) < BLOCKS:
            hashes += source.rpc("generatetoaddress", min(1000, BLOCKS - len(hashes)), burn)
        fresh.start()
        # Polled often (not the harness's backing-off interval): the sync runs thousands of
        # blocks a second and must still be under way when the kill comes.
        wait_for(lambda: fresh.rpc("getblockcount") >= KILL_AT, TIMEOUT, "the sync to get going",
                 interval=0.01, first=None)
        fresh.kill()
        connected = [int(r["height"]) for r in logged(fresh, "block_connected")]  # type: ignore[call-overload]
        last = max(connected)
        assert last < BLOCKS, "the sync finished before the kill: nothing was tested"

        # Restarted alone (its peer list points nowhere): what did the store keep?
        alone = NodeProcess(tmp_path / "b", args=["--p2p-bind", f"{host_b}:0", "--connect",
                                                  f"{subnets.host(2, subnets.P2P_TESTS)}:9"],
                            log=tmp_path / "b-2.log")
        alone.start()
        try:
            kept = alone.rpc("getblockcount")
            print(f"killed at connected height {last}; the store kept {kept} "
                  f"({last - kept} behind; bound {MAX_LOST})")
            assert last - MAX_LOST <= kept <= last
            # A consistent prefix of the source's chain: the tip and the blocks below it.
            assert alone.rpc("getbestblockhash") == hashes[kept - 1]
            assert alone.rpc("getblockchaininfo")["blocks"] == kept
            for height in (1, kept // 2, kept):
                assert alone.rpc("getblock", hashes[height - 1])["height"] == height
        finally:
            assert alone.stop() == 0

        # Connected again, it resumes from there.
        again = NodeProcess(tmp_path / "b", args=fresh_args, log=tmp_path / "b-3.log")
        again.start()
        try:
            wait_for(lambda: again.rpc("getbestblockhash") == hashes[-1], TIMEOUT, "resumed sync")
        finally:
            assert again.stop() == 0
        # The resumed sync committed in batches: fewer commits than blocks.
        closed = logged(again, "store_writer_closed")
        assert closed, "the writer's summary is missing"
        commits, blocks = int(closed[-1]["commits"]), int(closed[-1]["blocks"])  # type: ignore[call-overload]
        print(f"resumed sync: {blocks} blocks in {commits} commits")
        assert blocks >= BLOCKS - kept and commits < blocks
    finally:
        fresh.ensure_dead()
        source.ensure_dead()
