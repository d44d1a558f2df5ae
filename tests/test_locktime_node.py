"""Time locks on a real node: `createrawtransaction … locktime`, the mempool's `non-final` refusal
at the height and median-time-past boundaries, generateblock and submitblock with a non-final
transaction, removal on a reorg, and hostile parameters."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.block import Block, decode_block
from consensus.blockbuild import solve_block
from consensus.hashing import merkle_root
from consensus.tx import LOCKTIME_THRESHOLD, SEQUENCE_FINAL, U32_MAX, decode_transaction
from lab.client import RPCError
from lab.testnet.processes import NodeProcess

pytestmark = pytest.mark.slow

MATURITY = 100
FEE = 1_000
INVALID_PARAMS = -32602  # node.rpc.errors (the lab reaches the node over RPC only)
RPC_INVALID_PARAMETER = -8
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "n1").start()
    yield n
    n.ensure_dead()


class Coins:
    """The node's spendable coins, handed out once each."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.left = [u for u in node.rpc("listunspent") if u["spendable"]]

    def take(self) -> dict[str, Any]:
        return self.left.pop()


def locked_tx(
    node: NodeProcess, coin: dict[str, Any], payee: str, locktime: int, **input_extra: Any
) -> str:
    raw = node.rpc(
        "createrawtransaction",
        [{"txid": coin["txid"], "vout": coin["vout"], **input_extra}],
        {payee: coin["amount"] - FEE},
        locktime,
    )
    signed = node.rpc("signrawtransactionwithwallet", raw)
    assert signed["complete"]
    return signed["hex"]


def refused(node: NodeProcess, hexstring: str) -> RPCError:
    err = node.rpc_error("sendrawtransaction", hexstring)
    assert err.code == RPC_VERIFY_REJECTED and err.message.startswith("non-final: "), err
    return err


def block_with(node: NodeProcess, address: str, raw_txs: list[str]) -> Block:
    """A solved block on the tip holding `raw_txs`, built here (the node's generateblock
    refuses non-final transactions) from the node's own empty template."""
    template = decode_block(
        bytes.fromhex(node.rpc("generateblock", address, [], False)["hex"]), 4_000_000
    )
    txs = [template.txs[0], *(decode_transaction(bytes.fromhex(r), 4_000_000) for r in raw_txs)]
    header = dataclasses.replace(template.header, merkle_root=merkle_root([t.txid for t in txs]))
    block = solve_block(Block(header, txs))
    assert block is not None
    return block


@contextlib.contextmanager
def tx_status_events(node: NodeProcess) -> Iterator[Any]:
    """The node's /events stream of tx_status events (reads time out after 30 s)."""
    assert node.auth is not None
    token = base64.b64encode(f"{node.auth[0]}:{node.auth[1]}".encode()).decode()
    request = urllib.request.Request(node.url + "events?types=tx_status")
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as stream:
        yield stream


def test_time_locks_on_a_node(node: NodeProcess) -> None:
    address = node.rpc("getnewaddress")
    payee = node.rpc("getnewaddress")
    node.rpc("generatetoaddress", MATURITY + 10, address)
    coins = Coins(node)
    h = node.rpc("getblockcount")

    # createrawtransaction sets the lock time, and a sequence that leaves it active; signing
    # keeps both; decoderawtransaction shows them.
    at_tip = locked_tx(node, coins.take(), payee, h)
    decoded = node.rpc("decoderawtransaction", at_tip)
    assert decoded["locktime"] == h and decoded["vin"][0]["sequence"] == SEQUENCE_FINAL - 1
    plain = node.rpc("decoderawtransaction", locked_tx(node, coins.take(), payee, 0))
    assert plain["locktime"] == 0 and plain["vin"][0]["sequence"] == SEQUENCE_FINAL

    # Height: locktime h is final in block h + 1, locktime h + 1 is not.
    at_tip_txid = node.rpc("sendrawtransaction", at_tip)
    next_height = locked_tx(node, coins.take(), payee, h + 1)
    err = refused(node, next_height)
    assert f"from height {h + 2} on" in err.message and f"height {h + 1}" in err.message
    verbose = node.rpc("getrawtransaction", at_tip_txid, True)
    assert verbose["locktime"] == h and verbose["vin"][0]["sequence"] == SEQUENCE_FINAL - 1

    # generateblock with it: a clear error, and nothing mined.
    err = node.rpc_error("generateblock", address, [next_height])
    assert err.code == RPC_VERIFY_ERROR and "non-final" in err.message, err
    assert node.rpc("getblockcount") == h
    # submitblock with it (a block built elsewhere): invalid, and marked so.
    bad = block_with(node, address, [next_height])
    assert node.rpc("submitblock", bad.encode().hex()) == "bad-txns-nonfinal"
    tips = {t["hash"]: t["status"] for t in node.rpc("getchaintips")}
    assert tips.get(bad.hash.hex()) == "invalid"
    assert node.rpc("getblockcount") == h

    # The mempool's transaction goes into the next block; then locktime h + 1 is final.
    [mined] = node.rpc("generatetoaddress", 1, address)
    assert at_tip_txid in node.rpc("getblock", mined)["tx"]
    next_txid = node.rpc("sendrawtransaction", next_height)
    assert node.rpc("getrawmempool") == [next_txid]
    node.rpc("generatetoaddress", 1, address)
    assert node.rpc("gettransaction", next_txid)["confirmations"] == 1

    # Final sequence: final whatever the lock time.
    escaped = locked_tx(node, coins.take(), payee, U32_MAX, sequence=SEQUENCE_FINAL)
    assert node.rpc("decoderawtransaction", escaped)["vin"][0]["sequence"] == SEQUENCE_FINAL
    node.rpc("sendrawtransaction", escaped)

    # Time: the tip's median time past is the clock. Locked at it: refused; one second
    # before: accepted.
    mtp = node.rpc("getblockchaininfo")["mediantime"]
    at_mtp = locked_tx(node, coins.take(), payee, mtp)
    assert f"it is {mtp}" in refused(node, at_mtp).message
    before_mtp = node.rpc("sendrawtransaction", locked_tx(node, coins.take(), payee, mtp - 1))
    # Blocks stamped later (a mocked clock) move the median past the lock.
    node.rpc("setmocktime", int(time.time()) + 3600)
    mocked = node.rpc("generatetoaddress", 6, address)
    node.rpc("setmocktime", 0)
    assert node.rpc("getblockchaininfo")["mediantime"] > mtp
    at_mtp_txid = node.rpc("sendrawtransaction", at_mtp)
    height = node.rpc("getblockcount")
    by_height = node.rpc("sendrawtransaction", locked_tx(node, coins.take(), payee, height))

    # A reorg back below both locks removes them, and their status says they left the mempool;
    # what the disconnected blocks held and is still final comes back.
    tip = node.rpc("getbestblockhash")
    with tx_status_events(node) as stream:
        node.rpc("invalidateblock", mocked[0])
        removed = {at_mtp_txid, by_height}
        seen: dict[str, str] = {}
        while not removed <= seen.keys():
            line = stream.readline().decode()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                seen[event["txid"]] = event["status"]
        assert {seen[t] for t in removed} == {"unknown"}
    assert node.rpc("getblockchaininfo")["mediantime"] == mtp
    pool = node.rpc("getrawmempool")
    assert at_mtp_txid not in pool and by_height not in pool
    assert before_mtp in pool and node.rpc("decoderawtransaction", escaped)["txid"] in pool
    for txid in (at_mtp_txid, by_height):
        assert node.rpc("gettransaction", txid)["status"] == "unknown"
    node.rpc("reconsiderblock", mocked[0])
    assert node.rpc("getbestblockhash") == tip


def test_createrawtransaction_hostile_params(node: NodeProcess) -> None:
    coin = {"txid": "11" * 32, "vout": 0}
    payee = node.rpc("getnewaddress")
    outputs = {payee: 5_000}
    for locktime in (-1, U32_MAX + 1, 2**64):
        err = node.rpc_error("createrawtransaction", [coin], outputs, locktime)
        assert err.code == RPC_INVALID_PARAMETER and "locktime out of range" in err.message
    for locktime in ("abc", 1.5, True, [1], {"a": 1}):
        err = node.rpc_error("createrawtransaction", [coin], outputs, locktime)
        assert err.code == INVALID_PARAMS and "locktime" in err.message, (locktime, err)
    for sequence in (-1, U32_MAX + 1, "1", 1.0, True, None, [0]):
        err = node.rpc_error("createrawtransaction", [{**coin, "sequence": sequence}], outputs, 10)
        assert err.code == RPC_INVALID_PARAMETER and "sequence" in err.message, (sequence, err)
    # The edges of the ranges are fine.
    for locktime, sequence in ((0, 0), (U32_MAX, U32_MAX), (LOCKTIME_THRESHOLD, 7)):
        raw = node.rpc("createrawtransaction", [{**coin, "sequence": sequence}], outputs, locktime)
        decoded = node.rpc("decoderawtransaction", raw)
        assert decoded["locktime"] == locktime and decoded["vin"][0]["sequence"] == sequence
    # null means the default, as in bitcoind: no lock, final sequences.
    unlocked = node.rpc(
        "decoderawtransaction", node.rpc("createrawtransaction", [coin], outputs, None)
    )
    assert unlocked["locktime"] == 0 and unlocked["vin"][0]["sequence"] == SEQUENCE_FINAL
    assert node.rpc("getblockcount") == 0  # still serving
