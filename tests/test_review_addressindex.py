"""Hostile review of the address index: each test pins a bug the review found."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from consensus.tx import OutPoint
from consensus.update import ChainUpdate
from lab.testnet.processes import NodeProcess
from node.addressindex import sync_address_index
from node.events import EventHub
from node.rpc.registry import MethodRegistry
from node.rpc.server import RPCServer
from storage import MemoryStore
from tests.helpers import ChainBuilder, pkh
from tests.test_addressindex_daemon import start_watch
from tests.test_chain_properties import PARAMS

MATURITY = 100
TIMEOUT = 60


def _watch(datadir: Path, address: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    return start_watch(address, "--datadir", str(datadir))


def _next_event(lines: queue.Queue[str], kind: str) -> dict[str, Any]:
    """The next event of `kind` (the watcher may repeat "unreachable" while it waits)."""
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        event: dict[str, Any] = json.loads(lines.get(timeout=left))
        if event.get("event") == kind:
            return event
    raise AssertionError(f"no {kind!r} event within {TIMEOUT}s")


@pytest.mark.slow
def test_watch_follows_a_node_that_restarts_with_a_new_port_and_cookie(tmp_path: Path) -> None:
    # The node picks a fresh RPC port and cookie at every start; a watcher that kept the ones
    # it read at its own start could never reach the restarted node again.
    node = NodeProcess(tmp_path / "n", args=["--addressindex"]).start()
    watcher: subprocess.Popen[str] | None = None
    try:
        miner = node.rpc("getnewaddress")
        node.rpc("generatetoaddress", MATURITY + 1, miner)
        payee = node.rpc("getnewaddress")
        watcher, lines = _watch(node.datadir, payee)
        assert json.loads(lines.get(timeout=TIMEOUT))["entries"] == []
        node.stop()
        assert _next_event(lines, "unreachable")["error"]
        node.start()
        paid = node.rpc("sendtoaddress", payee, 2_500)
        event = _next_event(lines, "pending")
        assert (event["txid"], event["amount"]) == (paid, 2_500)
        node.kill()  # gone for good: the watcher keeps saying so, and exits cleanly on Ctrl-C
        _next_event(lines, "unreachable")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(TIMEOUT) == 0
        assert watcher.stderr is not None
        assert "Traceback" not in watcher.stderr.read()
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        node.ensure_dead()


class RecordingStore(MemoryStore):
    """A store that remembers how many address rows each update carried."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_per_update: list[int] = []

    def apply(self, update: ChainUpdate) -> None:
        self.rows_per_update.append(len(update.address_deltas))
        super().apply(update)


def test_a_rebuild_bounds_the_rows_of_one_transaction_not_only_its_blocks() -> None:
    # A batch of REBUILD_BATCH_BLOCKS full blocks of many-output transactions is millions of
    # rows (~400 bytes each in the journal, then again in a fold): the rows bound the batch too.
    b = ChainBuilder(PARAMS)
    outputs = 40
    for _ in range(12):
        txs = []
        if b.chain.height >= 1:
            cb = b.block_at(b.chain.height).txs[0]
            total = b.outputs[OutPoint(cb.txid, 0)].amount
            amounts = [total // outputs] * outputs
            txs.append(b.spend([OutPoint(cb.txid, 0)], amounts, to=pkh(3)))
        b.mine(1, txs=txs)
    per_block = 2 + outputs + 1  # the coinbase output, the input, the outputs (+ a fee output)
    store = RecordingStore()
    assert sync_address_index(store, b.chain, batch_rows=100) == "rebuilt"
    assert max(store.rows_per_update) <= 100 + per_block
    assert len(store.rows_per_update) > 2
    whole = MemoryStore()
    sync_address_index(whole, b.chain, rebuild=True)
    owners = [pkh(n) for n in range(6)]
    assert store.address_deltas(owners, 0, 1 << 40, 1 << 40) == whole.address_deltas(
        owners, 0, 1 << 40, 1 << 40
    )
    assert store.address_index_tip() == b.chain.tip.hash


async def test_a_batch_of_large_address_replies_is_bounded_in_bytes() -> None:
    # An address RPC may answer MAX_ADDRESS_RESULTS rows (about 10 MB of JSON); the request that
    # asks for it is ~100 bytes, so a batch of max_batch of them in one 100 kB POST would make
    # the node build gigabytes of reply. The batch's reply is bounded in bytes instead: requests
    # past the bound are not run and each gets an error naming it.
    ran: list[int] = []

    def big(n: int) -> str:
        ran.append(n)
        return "x" * 100_000

    registry = MethodRegistry()
    registry.register("big", big)
    hub = EventHub()
    server = RPCServer(registry, hub, None, auth_failure_delay=0.0, max_batch_reply_bytes=1_000_000)
    host, port = await server.start("127.0.0.1", 0)
    try:
        batch = [{"jsonrpc": "2.0", "id": n, "method": "big", "params": [n]} for n in range(50)]
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"http://{host}:{port}/", json=batch) as resp,
        ):
            body = await resp.read()
        replies = json.loads(body)
        assert [r["id"] for r in replies] == list(range(50))
        served = [r for r in replies if "result" in r]
        refused = [r for r in replies if "error" in r]
        assert len(body) < 1_000_000 + 2 * 100_100
        assert 0 < len(served) <= 11 and len(served) + len(refused) == 50
        assert ran == [r["id"] for r in served]
        assert "batch reply" in refused[0]["error"]["message"]
    finally:
        await server.stop()
        hub.close()


def test_an_invalid_address_is_not_echoed_whole_into_the_error_and_the_log() -> None:
    # The error reply is also logged (rpc_error, info): a 1 MB "address" made a 1 MB log line
    # per request. Other invalid items were already cut to 80 characters.
    from node.rpc.errors import RPCError
    from node.rpc.methods import addressindex as methods
    from node.wallet import WalletError

    class Wallet:
        def decode(self, address: str) -> bytes:
            raise WalletError(f"invalid address {address!r}: wrong length or case")

    node: Any = SimpleNamespace(address_index=object(), wallet=Wallet())
    for method in (methods.getaddressbalance, methods.getaddressutxos, methods.getaddressdeltas):
        with pytest.raises(RPCError) as err:
            asyncio.run(method(node, {"addresses": ["x" * 1_000_000]}))
        assert err.value.message.startswith("Invalid address: invalid address 'xxx")
        assert len(err.value.message) <= 300


def test_classifying_a_reorged_transaction_does_not_fetch_the_whole_mempool() -> None:
    # getrawmempool answers every txid in the pool (250,000 txids is a 17 MB reply, built on
    # the node's event loop), once per transaction a reorg took out of the address's history.
    from lab.address import classify_vanished
    from lab.client import RPCError as ClientRPCError

    pool = {"aa" * 32}
    called: list[str] = []

    class Endpoint:
        def call(self, method: str, *params: Any) -> Any:
            called.append(method)
            if method == "gettransaction":
                raise ClientRPCError(-5, "Invalid or non-wallet transaction id")
            if method == "getmempoolentry":
                if params[0] in pool:
                    return {"fees": {"base": 1}}
                raise ClientRPCError(-5, "Transaction not in mempool")
            if method == "getrawmempool":
                return sorted(pool) + [f"{n:064x}" for n in range(250_000)]
            raise AssertionError(method)

    endpoint: Any = Endpoint()
    assert classify_vanished(endpoint, "aa" * 32) == ("pending", 0)
    assert classify_vanished(endpoint, "bb" * 32) == ("gone", 0)
    assert "getrawmempool" not in called
