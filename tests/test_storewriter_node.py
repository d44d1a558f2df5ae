"""The node with its store commits off the event loop, in process, its store held or failed at
will: RPCs answer while a commit hangs, generatetoaddress still names the blocks written before
a failure, a failure stops the node once, and one while draining at stop is in `unsaved`.
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
from consensus.update import ChainUpdate
from node.config import NodeConfig
from node.daemon import Node, stop_message
from node.rpc.errors import RPCError
from node.rpc.methods import build_registry
from storage import StorageError, open_store
from tests.async_wait import wait_until_async
from tests.helpers import key

WAIT = 20.0
PAYEE = key(7).address(REGTEST.address_prefix)


class HeldStore:
    """Wraps the node's real store: `apply` can be held at a gate or made to fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()  # set while an apply waits at the closed gate
        self.fail = False

    def apply(self, update: ChainUpdate) -> None:
        if not self.gate.is_set():
            self.holding.set()
            if not self.gate.wait(WAIT):
                raise AssertionError("the gate was never opened")
            self.holding.clear()
        if self.fail:
            raise StorageError("cannot apply an update to chain.sqlite3 (nothing was written):"
                               " database or disk is full")
        self.inner.apply(update)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[HeldStore]]:
    stores: list[HeldStore] = []

    def open_held(datadir: Path, params: Any) -> HeldStore:
        store = HeldStore(open_store(datadir, params))
        stores.append(store)
        return store

    monkeypatch.setattr(daemon, "open_store", open_held)
    yield stores


async def started(datadir: Path) -> Node:
    config = NodeConfig(datadir=datadir, p2p_bind="127.0.0.1:0", rpc_bind="127.0.0.1:0")
    node = Node(config, REGTEST)
    await node.start()
    return node


async def call(node: Node, method: str, *params: Any) -> Any:
    return await build_registry(node).call(method, list(params))


async def test_rpcs_answer_while_a_commit_hangs(tmp_path: Path, held: list[HeldStore]) -> None:
    node = await started(tmp_path / "n")
    store = held[0]
    try:
        await call(node, "generatetoaddress", 1, PAYEE)
        store.gate.clear()
        mining = asyncio.create_task(call(node, "generatetoaddress", 1, PAYEE))
        await asyncio.to_thread(store.holding.wait, WAIT)
        assert store.holding.is_set(), "the commit never reached the store"
        # The commit of block 2 hangs in the writer thread; the loop still answers.
        assert await call(node, "getblockcount") == 2
        tip = bytes.fromhex(await call(node, "getbestblockhash"))
        assert (await call(node, "getblock", tip.hex()))["height"] == 2
        assert node.store.get_block_bytes(tip) is None  # not on disk ...
        assert node.chain.reader.get_block_bytes(tip) is not None  # ... served from the queue
        assert not mining.done()  # generatetoaddress waits for its commit
        store.gate.set()
        hashes = await asyncio.wait_for(mining, WAIT)
        assert hashes == [tip.hex()]
        assert node.store.get_block_bytes(tip) is not None
    finally:
        store.gate.set()
        await node.stop()
    assert node.failure is None and node.unsaved == []


async def test_a_failed_commit_stops_the_node_and_generate_names_what_was_written(
    tmp_path: Path, held: list[HeldStore]
) -> None:
    node = await started(tmp_path / "n")
    store = held[0]
    try:
        written = await call(node, "generatetoaddress", 2, PAYEE)
        store.fail = True
        with pytest.raises(RPCError) as info:
            await call(node, "generatetoaddress", 3, PAYEE)
        assert info.value.message.startswith("0 of 3 blocks were committed before a failure")
        assert info.value.data == {"committed": []}
        await asyncio.wait_for(node.wait_stopped(), WAIT)
        assert node.failure is not None and "database or disk is full" in node.failure
        # Later changes are refused rather than written over the missing one.
        with pytest.raises(RPCError) as info:
            await call(node, "generatetoaddress", 1, PAYEE)
        assert info.value.message.startswith("0 of 1 blocks were committed")
        assert "no longer written" in info.value.message
    finally:
        await node.stop()
    assert node.unsaved == []  # reported once, as the failure
    assert stop_message(node.failure, node.unsaved).startswith(
        "stopped: could not write the block store"
    )
    node = await started(tmp_path / "n")  # what was written is there; the rest was not
    try:
        assert await call(node, "getblockcount") == 2
        assert await call(node, "getbestblockhash") == written[-1]
    finally:
        await node.stop()


async def test_a_failure_while_draining_at_stop_is_unsaved(
    tmp_path: Path, held: list[HeldStore]
) -> None:
    node = await started(tmp_path / "n")
    store = held[0]
    await call(node, "generatetoaddress", 1, PAYEE)
    store.gate.clear()
    store.fail = True
    # A block accepted without awaiting its commit (as a peer's is): queued, held at the gate.
    block = await node.miner.solve(bytes(20), None)
    assert node.submit_block(block).status == "connected"
    await asyncio.to_thread(store.holding.wait, WAIT)
    stopping = asyncio.create_task(node.stop())
    await wait_until_async(lambda: node._stopping, WAIT, "the stop to begin")
    store.gate.set()
    await asyncio.wait_for(stopping, WAIT)
    assert node.failure is None
    assert len(node.unsaved) == 1 and node.unsaved[0].startswith("block store (")
    assert "database or disk is full" in node.unsaved[0]
    node = await started(tmp_path / "n")
    try:
        assert await call(node, "getblockcount") == 1  # the consistent prefix before it
    finally:
        await node.stop()


async def test_stop_drains_queued_commits(tmp_path: Path, held: list[HeldStore]) -> None:
    node = await started(tmp_path / "n")
    store = held[0]
    store.gate.clear()
    blocks = []
    for _ in range(5):
        block = await node.miner.solve(bytes(20), None)
        assert node.submit_block(block).status == "connected"
        blocks.append(block.hash)
    await asyncio.to_thread(store.holding.wait, WAIT)
    assert node.writer is not None and node.writer.pending >= 1
    stopping = asyncio.create_task(node.stop())
    await wait_until_async(lambda: node._stopping, WAIT, "the stop to begin")
    store.gate.set()
    await asyncio.wait_for(stopping, WAIT)
    assert node.failure is None and node.unsaved == []
    node = await started(tmp_path / "n")
    try:
        assert await call(node, "getbestblockhash") == blocks[-1].hex()
    finally:
        await node.stop()


async def test_a_reorg_reads_undo_data_still_queued(tmp_path: Path, held: list[HeldStore]) -> None:
    """Blocks connected and not yet written, evicted from the chain's memory caches: undoing
    them reads their bodies and undo data from the writer's queue."""
    node = await started(tmp_path / "n")
    store = held[0]
    try:
        first = await call(node, "generatetoaddress", 1, PAYEE)
        store.gate.clear()
        queued = []
        for _ in range(3):
            block = await node.miner.solve(bytes(20), None)
            assert node.submit_block(block).status == "connected"
            queued.append(block.hash)
        await asyncio.to_thread(store.holding.wait, WAIT)
        assert all(node.store.get_undo_bytes(h) is None for h in queued[1:])  # not on disk
        node.chain._blocks.clear()  # as if evicted by later blocks
        node.chain._undo.clear()
        await call(node, "invalidateblock", queued[0].hex())
        assert await call(node, "getbestblockhash") == first[0]
        await call(node, "reconsiderblock", queued[0].hex())
        assert await call(node, "getbestblockhash") == queued[-1].hex()
        store.gate.set()
        await asyncio.wait_for(node.committed(), WAIT)
    finally:
        store.gate.set()
        await node.stop()
    assert node.failure is None and node.unsaved == []
    node = await started(tmp_path / "n")
    try:
        assert await call(node, "getbestblockhash") == queued[-1].hex()
    finally:
        await node.stop()
