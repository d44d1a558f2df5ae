"""`setmocktime` on two real nodes: the mocked clock stamps that node's templates and moves its
future limit, and only its own; 0 gives the system clock back."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from consensus.block import decode_block
from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from tests import subnets
from tests.daemon_harness import wait_for

pytestmark = pytest.mark.slow

DRIFT = 7200  # max_future_drift, regtest and testnet


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def block_time(hexdata: str) -> int:
    return decode_block(bytes.fromhex(hexdata), 1_000_000).header.timestamp


def template_time(node: NodeProcess, address: str) -> tuple[int, int, int]:
    """(earliest, stamped, latest): the time a withheld block of `node` carries, and the bounds
    its real clock sets on it (the clock, but at least one second above the median time past;
    blocks mined within the same second run ahead of the clock that way)."""
    mtp = node.rpc("getblockchaininfo")["mediantime"]
    before = int(time.time())
    stamped = block_time(node.rpc("generateblock", address, [], False)["hex"])
    return max(before, mtp + 1), stamped, max(int(time.time()), mtp + 1)


def test_setmocktime_moves_only_this_nodes_clock(tmp_path: Path) -> None:
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = free_port(host_a)
    mocked = NodeProcess(tmp_path / "mocked", args=["--p2p-bind", f"{host_a}:{port}"])
    honest = NodeProcess(tmp_path / "honest",
                         args=["--p2p-bind", f"{host_b}:{port}", "--connect", f"{host_a}:{port}"])
    try:
        mocked.start()
        honest.start()
        wait_for(lambda: mocked.rpc("getconnectioncount") == 1, 30, "peers")
        address = mocked.rpc("getnewaddress")
        mocked.rpc("generatetoaddress", 11, address)  # a median time past at the real time
        wait_for(lambda: honest.rpc("getblockcount") == 11, 30, "sync")

        # Ahead by less than the future limit: stamped with the mocked time, and the honest
        # node (real clock) takes it.
        real = int(time.time())
        assert mocked.rpc("setmocktime", real + 3000) is None
        [ahead] = mocked.rpc("generatetoaddress", 1, address)
        assert mocked.rpc("getblockheader", ahead)["time"] == real + 3000
        wait_for(lambda: honest.rpc("getbestblockhash") == ahead, 30, "the block ahead")

        # The honest node's own template keeps its real clock.
        earliest, stamped, latest = template_time(honest, honest.rpc("getnewaddress"))
        assert earliest <= stamped <= latest < real + 3000

        # Beyond the honest node's limit, inside the mocked node's: each judges by its clock.
        mocked.rpc("setmocktime", real + DRIFT + 1800)
        far = mocked.rpc("generateblock", address, [], False)
        assert block_time(far["hex"]) == real + DRIFT + 1800
        assert honest.rpc("submitblock", far["hex"]) == "time-too-new"
        assert mocked.rpc("submitblock", far["hex"]) is None
        assert mocked.rpc("getbestblockhash") == far["hash"]
        assert honest.rpc("getbestblockhash") == ahead

        # 0 gives the clock back: the next template is stamped with the real time again (the
        # median time past is still real time, two blocks ahead out of 11).
        mocked.rpc("setmocktime", 0)
        earliest, stamped, latest = template_time(mocked, address)
        assert earliest <= stamped <= latest < real + 3000
        # ...and the block far ahead, still too new for the real clock, is only its own.
        assert honest.rpc("getbestblockhash") == ahead

        with pytest.raises(RPCError, match="timestamp must be between"):
            mocked.rpc("setmocktime", -1)
        with pytest.raises(RPCError, match="timestamp must be between"):
            mocked.rpc("setmocktime", 2**32)
    finally:
        honest.ensure_dead()
        mocked.ensure_dead()
