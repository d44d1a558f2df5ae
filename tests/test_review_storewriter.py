"""Hostile review of the store writer (issue 17): each test pins a bug the review found.

In process, the node's real store wrapped so that a commit can be held in the writer thread.
Waits are on events and conditions with timeouts; nothing measures time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import node.daemon as daemon
from consensus.params import REGTEST
from node.config import NodeConfig
from node.daemon import Node
from node.rpc.methods import build_registry
from storage import open_store
from tests.helpers import key, pkh
from tests.test_storewriter_node import HeldStore

WAIT = 20.0
PAYEE = key(7).address(REGTEST.address_prefix)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[HeldStore]]:
    stores: list[HeldStore] = []

    def open_held(datadir: Path, params: Any) -> HeldStore:
        store = HeldStore(open_store(datadir, params))
        stores.append(store)
        return store

    monkeypatch.setattr(daemon, "open_store", open_held)
    yield stores


async def started(datadir: Path, **options: Any) -> Node:
    config = NodeConfig(
        datadir=datadir, p2p_bind="127.0.0.1:0", rpc_bind="127.0.0.1:0", **options
    )
    node = Node(config, REGTEST)
    await node.start()
    return node


async def call(node: Node, method: str, *params: Any) -> Any:
    return await build_registry(node).call(method, list(params))


class Watchdog:
    """Opens a held store's gate from another thread if the test has not by `WAIT`: a loop
    that is blocked cannot open it itself, and the test then fails instead of hanging."""

    def __init__(self, store: HeldStore) -> None:
        self.store = store
        self.cancelled = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="review-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self.cancelled.wait(WAIT):
            self.fired = True
            self.store.gate.set()

    def stop(self) -> None:
        self.cancelled.set()
        self._thread.join()


async def test_an_address_query_does_not_hold_the_event_loop_while_a_commit_hangs(
    tmp_path: Path, held: list[HeldStore]
) -> None:
    """Was: the address-index RPCs waited for the writer to be idle with a blocking
    `wait_idle()` on the event loop, so one such query during a slow (or hung) commit froze the
    whole node, RPCs, P2P and stop included, for as long as the disk took."""
    node = await started(tmp_path / "n", addressindex=True)
    store = held[0]
    watchdog: Watchdog | None = None
    try:
        await call(node, "generatetoaddress", 1, PAYEE)
        before = await call(node, "getaddressbalance", PAYEE)
        store.gate.clear()
        watchdog = Watchdog(store)
        block = await node.miner.solve(pkh(7), None)
        assert node.submit_block(block).status == "connected"  # queued, held at the gate
        await asyncio.to_thread(store.holding.wait, WAIT)
        assert store.holding.is_set(), "the commit never reached the store"
        query = asyncio.create_task(call(node, "getaddressbalance", PAYEE))
        await asyncio.sleep(0)  # one turn of the loop: the query starts and meets the queue
        # The loop still answers while the address query waits for the held commit.
        assert await call(node, "getblockcount") == 2
        assert not query.done() and not watchdog.fired
        store.gate.set()
        after = await asyncio.wait_for(query, WAIT)
        # ... and the answer includes the block that was queued when it was asked.
        assert after["balance"] == 2 * before["balance"] > 0
        assert not watchdog.fired
    finally:
        store.gate.set()
        if watchdog is not None:
            watchdog.stop()
        await node.stop()
    assert node.failure is None and node.unsaved == []
