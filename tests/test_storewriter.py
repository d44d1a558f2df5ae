"""The store writer (node/storewriter.py): order, the queue bound, failure propagation, reads of
what is still queued, and the SQLite store's reads that never wait for a commit in progress.
Every wait is on an event or condition with a timeout; no test measures time."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from consensus.update import ChainSnapshot, ChainUpdate
from node.storewriter import MAX_PENDING_COMMITS, WRITER_NICE_INCREMENT, StoreWriter
from storage import MemoryStore, SQLiteStore, StorageError
from tests.async_wait import wait_until_async

WAIT = 10.0  # seconds any condition below may take before the test fails
GENESIS = bytes(32)


def block_update(n: int, data: bytes | None = None) -> ChainUpdate:
    """An update holding block `n` (its hash is n as 32 bytes) and moving the tip to it."""
    block_hash = n.to_bytes(32, "big")
    body = data if data is not None else b"block %d" % n
    return ChainUpdate(blocks={block_hash: body}, undo={block_hash: b"undo %d" % n}, tip=block_hash)


class GatedStore:
    """A MemoryStore whose `apply` records the order, can be held at a gate, and can fail."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.applied: list[bytes | None] = []
        self.entered = threading.Semaphore(0)  # released each time apply starts
        self.gate = threading.Event()
        self.gate.set()
        self.fail_at: int | None = None  # 1-based number of the apply that raises
        self.closed = False

    def apply(self, update: ChainUpdate) -> None:
        self.entered.release()
        if not self.gate.wait(WAIT):
            raise AssertionError("the gate was never opened")
        if self.fail_at is not None and len(self.applied) + 1 == self.fail_at:
            raise StorageError("cannot apply an update (nothing was written): disk full")
        self.inner.apply(update)
        self.applied.append(update.tip)

    def load(self) -> ChainSnapshot:
        return self.inner.load()

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return self.inner.get_block_bytes(block_hash)

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        return self.inner.get_undo_bytes(block_hash)

    def close(self) -> None:
        self.closed = True


def entered(store: GatedStore) -> None:
    assert store.entered.acquire(timeout=WAIT), "apply was never called"


async def test_updates_are_written_in_order_and_awaitable() -> None:
    store = GatedStore()
    writer = StoreWriter(store)  # type: ignore[arg-type]
    seqs = [writer.submit(block_update(n)) for n in range(1, 201)]
    assert seqs == list(range(1, 201))
    await asyncio.wait_for(writer.wait_written(), WAIT)
    assert store.applied == [n.to_bytes(32, "big") for n in range(1, 201)]
    assert writer.written == writer.submitted == 200 and writer.pending == 0
    writer.close()
    assert store.closed
    with pytest.raises(StorageError, match="closed"):
        writer.submit(block_update(201))


async def test_the_queue_bound_makes_the_submitter_wait() -> None:
    store = GatedStore()
    store.gate.clear()
    writer = StoreWriter(store, max_pending=3)  # type: ignore[arg-type]
    for n in range(1, 4):
        writer.submit(block_update(n))
    entered(store)  # update 1 is being written, 2 and 3 wait: the queue holds its bound
    assert writer.pending == 3 and writer.full_waits == 0
    returned = threading.Event()

    def submit_one_more() -> None:
        writer.submit(block_update(4))
        returned.set()

    extra = threading.Thread(target=submit_one_more)
    extra.start()
    await wait_until_async(lambda: writer.full_waits == 1, WAIT, "the fourth submit to wait")
    assert not returned.is_set() and writer.pending == 3
    store.gate.set()
    assert await asyncio.to_thread(returned.wait, WAIT)
    extra.join(WAIT)
    await asyncio.wait_for(writer.wait_written(), WAIT)
    assert store.applied == [n.to_bytes(32, "big") for n in range(1, 5)]
    writer.close()


def test_the_default_bound_is_the_named_constant() -> None:
    writer = StoreWriter(GatedStore())  # type: ignore[arg-type]
    assert writer.max_pending == MAX_PENDING_COMMITS
    writer.close()
    with pytest.raises(ValueError):
        StoreWriter(GatedStore(), max_pending=0)  # type: ignore[arg-type]


async def test_a_failed_commit_stops_every_later_one_and_is_reported_once() -> None:
    store = GatedStore()
    store.gate.clear()
    store.fail_at = 2
    failures: list[BaseException] = []
    writer = StoreWriter(store, failures.append)  # type: ignore[arg-type]
    seqs = [writer.submit(block_update(n)) for n in range(1, 5)]
    store.gate.set()
    await asyncio.wait_for(writer.wait_written(seqs[0]), WAIT)
    with pytest.raises(StorageError, match="commit failed"):
        await asyncio.wait_for(writer.wait_written(seqs[1]), WAIT)
    with pytest.raises(StorageError):
        await asyncio.wait_for(writer.wait_written(), WAIT)
    # Nothing after the failed update was written: disk holds a prefix (update 1) only.
    assert store.applied == [(1).to_bytes(32, "big")]
    assert store.inner.load().tip == (1).to_bytes(32, "big")
    assert writer.failed and writer.wait_idle(WAIT)
    # The callback runs in the writer thread just after the failure is recorded.
    await wait_until_async(lambda: failures, WAIT, "the failure callback")
    assert len(failures) == 1 and "disk full" in str(failures[0])
    with pytest.raises(StorageError, match="no longer written"):
        writer.submit(block_update(5))
    error = writer.take_error()
    assert error is failures[0]
    assert writer.take_error() is None  # once
    writer.close()  # taken already: closing does not report it again
    assert store.closed


async def test_a_failure_nobody_took_is_raised_by_close() -> None:
    store = GatedStore()
    store.fail_at = 1
    writer = StoreWriter(store)  # type: ignore[arg-type]
    writer.submit(block_update(1))
    with pytest.raises(StorageError, match="disk full"):
        writer.close()
    assert store.closed and store.applied == []


async def test_queued_blocks_and_undo_are_read_from_the_queue_until_written() -> None:
    store = GatedStore()
    store.gate.clear()
    writer = StoreWriter(store)  # type: ignore[arg-type]
    one, two = (1).to_bytes(32, "big"), (2).to_bytes(32, "big")
    writer.submit(block_update(1))
    writer.submit(block_update(2))
    writer.submit(ChainUpdate(blocks={one: None}, undo={two: b"undo 2 again"}))  # prune, rewrite
    entered(store)
    assert store.get_block_bytes(two) is None  # not on disk yet ...
    assert writer.get_block_bytes(two) == b"block 2"  # ... but readable
    assert writer.get_block_bytes(one) is None  # the newest queued change deletes it
    assert writer.get_undo_bytes(two) == b"undo 2 again"
    assert writer.get_block_bytes((9).to_bytes(32, "big")) is None
    store.gate.set()
    await asyncio.wait_for(writer.wait_written(), WAIT)
    assert writer.pending == 0
    assert writer.get_block_bytes(two) == store.get_block_bytes(two) == b"block 2"
    assert writer.get_block_bytes(one) is None and writer.get_undo_bytes(two) == b"undo 2 again"
    writer.close()


def test_reads_agree_with_a_concurrent_writer() -> None:
    """Readers racing the writer thread always find every submitted block (in the queue or on
    disk): an update leaves the queue only after its commit returned."""
    store = GatedStore()
    writer = StoreWriter(store, max_pending=4)  # type: ignore[arg-type]
    missing: list[int] = []
    for n in range(1, 301):
        writer.submit(block_update(n))
        for m in (n, max(1, n - 3), max(1, n - 10)):
            if writer.get_block_bytes(m.to_bytes(32, "big")) != b"block %d" % m:
                missing.append(m)
    assert writer.wait_idle(WAIT)
    writer.close()
    assert missing == []


# ----------------------------------------------------------------------------- SQLite


def test_sqlite_reads_do_not_wait_for_a_commit_in_progress(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path, "regtest", GENESIS)
    one = (1).to_bytes(32, "big")
    store.apply(block_update(1))
    # The writing connection in the middle of a transaction, its lock held as `apply` holds
    # it: reads go to the other connection and see the last commit.
    conn: Any = store._conn
    with store._lock:
        conn.execute("BEGIN IMMEDIATE")
        two = (2).to_bytes(32, "big")
        conn.execute("INSERT INTO blocks (hash, data) VALUES (?, ?)", (two, b"x"))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (two,))
        done: list[Any] = []
        reader = threading.Thread(
            target=lambda: done.append(
                (store.get_block_bytes(one), store.get_block_bytes(two), store.get_meta("tip"))
            )
        )
        reader.start()
        reader.join(WAIT)
        conn.execute("ROLLBACK")
    assert done == [(b"block 1", None, one)], "a read waited for the writer or saw its work"
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get_block_bytes(one)
    store.close()  # idempotent


def test_sqlite_writer_thread_and_reader_agree(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path, "regtest", GENESIS)
    writer = StoreWriter(store, max_pending=2)
    for n in range(1, 101):
        writer.submit(block_update(n, b"%d" % n * 50))
        assert writer.get_block_bytes(n.to_bytes(32, "big")) == b"%d" % n * 50
    assert writer.wait_idle(WAIT)
    writer.close()
    with SQLiteStore.open(tmp_path, "regtest", GENESIS) as again:
        assert again.load().tip == (100).to_bytes(32, "big")
        assert again.get_undo_bytes((57).to_bytes(32, "big")) == b"undo 57"


class PriorityRecordingStore(GatedStore):
    """Records the nice value of the thread that applies each update."""

    def __init__(self) -> None:
        super().__init__()
        self.nice: list[int] = []

    def apply(self, update: ChainUpdate) -> None:
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        super().apply(update)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_the_writer_thread_runs_at_a_lower_priority_than_the_loop() -> None:
    store = PriorityRecordingStore()
    writer = StoreWriter(store)  # type: ignore[arg-type]
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    await writer.wait_written(writer.submit(block_update(1)))
    writer.close()
    assert store.nice == [min(19, loop_nice + WRITER_NICE_INCREMENT)]
    # The loop's own thread is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice
