"""Hostile review of the store writer (issue 17): each test pins a bug the review found.

In process, the node's real store wrapped so that a commit can be held in the writer thread.
Waits are on events and conditions with timeouts; nothing measures time."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import node.daemon as daemon
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import ChainState
from consensus.params import REGTEST
from consensus.update import ChainUpdate
from node.config import NodeConfig
from node.daemon import MAX_BLOCKS_PER_COMMIT, Node
from node.rpc.methods import build_registry
from node.storewriter import SETTLE_ROUNDS, StoreWriter, WrittenAddressIndex
from p2p.compact import CATCHING_UP_BLOCKS
from storage import MemoryStore, SQLiteStore, StorageError, open_store
from tests import crash_harness
from tests.chain_crash_child import PARAMS as CRASH_PARAMS
from tests.chain_crash_child import build_script
from tests.helpers import key, pkh
from tests.test_addressindex_crash import check_index
from tests.test_chain_crash import Tip, _after_commits, check_store
from tests.test_storewriter import GatedStore, block_update
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


# -- kill -9 with the writer thread, on the crash test's script of reorgs, orphans and an
# invalid heavier branch (tests/chain_crash_child.py --writer)

KILLS = 5


def writer_tips(lines: list[str], previous: Tip) -> tuple[set[Tip], int]:
    """The tips the store may hold after a kill (the last commit the child reported, or the
    next, committed but not yet reported) and the deepest the queue got. Checks on the way
    that the commits came in the order of the hand-overs."""
    submitted: list[Tip] = []
    committed = 0
    deepest = 0
    for line in lines:
        kind, *rest = line.split()
        if kind == "submitted":
            submitted.append((int(rest[0]), bytes.fromhex(rest[1])))
        elif kind == "committed":
            assert committed < len(submitted), "a commit of an update never handed over"
            assert submitted[committed][1].hex() == rest[0], "commits out of order"
            committed += 1
        deepest = max(deepest, len(submitted) - committed)
    after = [previous, *submitted]
    return set(after[committed : committed + 2]), deepest


@crash_harness.needs_sigkill
def test_a_killed_writer_thread_leaves_a_prefix_of_the_handed_over_updates(
    tmp_path: Path,
) -> None:
    """Not a bug: pins what the writer thread keeps under SIGKILL on the script that the crash
    test runs (reorganisations whose undo data is still queued, orphans, an invalid heavier
    branch), which the other kill tests (one linear sync) do not reach: the store holds the
    state after a prefix of the updates, in order, equal to replaying its active chain."""
    rng = random.Random(9_017)
    tip: Tip = (0, CRASH_PARAMS.genesis_hash)
    kills = deepest = 0
    for _ in range(KILLS):
        kill_after = rng.randrange(1, 60)
        seen = 0

        def due(line: str, count: int = kill_after) -> bool:
            nonlocal seen
            seen += line.startswith("submitted")
            return seen >= count

        run = crash_harness.run_child(
            "tests.chain_crash_child", [str(tmp_path), "--writer"], due, rng.uniform(0.0, 0.003)
        )
        assert run.killed or run.lines[-1] == "done"
        allowed, depth = writer_tips(run.lines, tip)
        deepest = max(deepest, depth)
        tip = check_store(tmp_path, allowed)
        kills += run.killed
        if not run.killed:
            break
    assert kills >= 3, "the script ended too early to test much"
    run = crash_harness.run_child("tests.chain_crash_child", [str(tmp_path), "--writer"], None, 0)
    assert not run.killed and run.lines[-1] == "done"
    allowed, depth = writer_tips(run.lines, tip)
    deepest = max(deepest, depth)
    tip = check_store(tmp_path, allowed)
    builder = build_script().builder
    assert builder is not None
    assert tip == (builder.chain.tip.height, builder.chain.tip.hash)
    print(f"deepest queue seen: {deepest}")
    assert deepest >= 2, "the writer never fell behind: no queue was tested"


class PermitStore(GatedStore):
    """Each apply waits for a permit: the test decides when each update may be written."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)

    def apply(self, update: ChainUpdate) -> None:
        if not self.permits.acquire(timeout=WAIT):
            raise AssertionError("no permit to write")
        super().apply(update)


async def test_an_address_query_under_a_queue_that_never_empties_waits_a_bounded_number_of_turns(
) -> None:
    """SETTLE_ROUNDS, the fix's named bound: a sync that hands over an update at every turn
    of the loop cannot starve an address query; after SETTLE_ROUNDS turns it waits on the loop
    for what is left and answers from the written index."""
    store = PermitStore()
    writer = StoreWriter(store)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    handed: list[int] = []

    def flush() -> None:
        # As a sync does: one more update at every hand-over, still queued when the query
        # looks (its permit comes with the loop's next turn); the one handed over after the
        # last round is written at once, since the loop then waits for it.
        handed.append(writer.submit(block_update(len(handed) + 1)))
        if len(handed) <= SETTLE_ROUNDS:
            loop.call_soon(store.permits.release)
        else:
            store.permits.release()

    index = WrittenAddressIndex(writer, store.inner, flush)
    try:
        settled = await asyncio.wait_for(index.settled(), WAIT)
        assert settled is store.inner
        assert len(handed) == SETTLE_ROUNDS + 1
        assert writer.pending == 0 and writer.written == len(handed)
    finally:
        store.permits.release(SETTLE_ROUNDS + 2)
        writer.close()


# -- a store failure during --loadblock


def blocks_file(path: Path, count: int) -> Path:
    """`count` regtest blocks on genesis, one hex line each, timestamped just before now."""
    store = MemoryStore()
    chain = ChainState(REGTEST, store, store.load())
    start = int(time.time()) - 2 * count
    lines = []
    for i in range(count):
        block = solve_block(assemble_block(chain, [], 0, pkh(3), start + i))
        assert block is not None and chain.accept_block(block, start + i).status == "connected"
        lines.append(block.encode().hex())
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_store_failure_during_loadblock_stops_the_node_cleanly(
    tmp_path: Path, held: list[HeldStore]
) -> None:
    """Was: once a commit had failed, `submit_block` raised StorageError; the import task died
    of it, and `stop()`, awaiting its tasks, re-raised it: the node quit with a traceback,
    without saving the mempool and wallet or closing the store, instead of the one-line exit 1
    of a store failure."""
    source = blocks_file(tmp_path / "blocks.hex", 40)
    node = await started(tmp_path / "n", loadblock=[str(source)])
    store = held[0]
    store.fail = True  # before the import task first runs: every commit of it fails
    await asyncio.wait_for(node.wait_stopped(), WAIT)
    await node.stop()
    assert node.failure is not None and "database or disk is full" in node.failure
    assert node.unsaved == []
    assert not (tmp_path / "n" / "rpc.url").exists()
    assert (tmp_path / "n" / "mempool.dat").exists()  # the rest of the stop ran


# -- SQLiteStore.open's second connection


def test_a_store_that_fails_to_open_closes_its_reading_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the reading connection was opened before the store's state was read, and a state
    that did not read (a corrupt staging marker) closed only the writing one: the reader stayed
    open, its file descriptor held until the garbage collector found it."""
    opened: list[sqlite3.Connection] = []
    real_open_reader = SQLiteStore._open_reader

    def recording(path: Path) -> sqlite3.Connection:
        reader = real_open_reader(path)
        opened.append(reader)
        return reader

    def corrupt(self: SQLiteStore, conn: sqlite3.Connection) -> Any:
        raise StorageError("address staging marker does not decode")

    monkeypatch.setattr(SQLiteStore, "_open_reader", staticmethod(recording))
    monkeypatch.setattr(SQLiteStore, "_read_staging_state", corrupt)
    with pytest.raises(StorageError, match="does not decode"):
        SQLiteStore.open(tmp_path, "regtest", bytes(32))
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


# -- the named bound of a batched commit


async def test_a_catching_up_node_hands_over_at_most_max_blocks_per_commit(
    tmp_path: Path,
) -> None:
    """Not a bug: pins MAX_BLOCKS_PER_COMMIT, which no test checked (the sync kill test only
    sees fewer commits than blocks). Blocks delivered in one turn of the loop to a node whose
    best header is far ahead are handed over in batches of at most that many."""
    count = 3 * MAX_BLOCKS_PER_COMMIT + 8
    store = MemoryStore()
    chain = ChainState(REGTEST, store, store.load())
    start = int(time.time()) - 2 * count
    blocks = []
    for i in range(count):
        block = solve_block(assemble_block(chain, [], 0, pkh(3), start + i))
        assert block is not None and chain.accept_block(block, start + i).status == "connected"
        blocks.append(block)
    node = await started(tmp_path / "n")
    try:
        assert node.writer is not None
        sizes: list[int] = []
        real_submit = node.writer.submit

        def recording(update: ChainUpdate) -> int:
            sizes.append(len(update.blocks))
            return real_submit(update)

        node.writer.submit = recording  # type: ignore[method-assign]
        for block in blocks:
            node.accept_header(block.header)
        for block in blocks:  # one turn of the loop: no await in between
            assert node.submit_block(block).status == "connected"
        await asyncio.wait_for(node.committed(), WAIT)
        assert sum(sizes) == count
        assert max(sizes) == MAX_BLOCKS_PER_COMMIT  # batched, and never more
        # The last CATCHING_UP_BLOCKS blocks are no longer a catch-up: one commit each.
        assert sizes[-CATCHING_UP_BLOCKS:] == [1] * CATCHING_UP_BLOCKS
    finally:
        await node.stop()
    assert node.failure is None and node.unsaved == []
    node = await started(tmp_path / "n")
    try:
        assert await call(node, "getbestblockhash") == blocks[-1].hash.hex()
    finally:
        await node.stop()


@crash_harness.needs_sigkill
def test_a_killed_writer_thread_keeps_the_address_index_marker_with_its_tip(
    tmp_path: Path,
) -> None:
    """Not a bug: the address index through the writer thread under SIGKILL (the crash test of
    the index runs without the writer). After every kill the index marker is the store's tip,
    moved in the same commit as the rows: the index is current, never caught up or rebuilt,
    and equals a rebuild from scratch."""
    rng = random.Random(17_017)
    args = [str(tmp_path), "--writer", "--addressindex"]
    outcomes: list[str] = []
    kills = 0
    for _ in range(KILLS):
        due = _after_commits(rng.randrange(1, 40))
        run = crash_harness.run_child("tests.chain_crash_child", args, due, rng.uniform(0, 0.003))
        outcomes.append(check_index(tmp_path, was_indexed=bool(outcomes)))
        kills += run.killed
        if not run.killed:
            break
    assert kills >= 3, "the script ended too early to test much"
    assert set(outcomes[1:]) == {"current"}, outcomes
    run = crash_harness.run_child("tests.chain_crash_child", args, None, 0)
    assert not run.killed and run.lines[-1] == "done"
    assert check_index(tmp_path, was_indexed=True) == "current"
