"""Store commits off the event loop: one writer thread applies the chain's updates in order.

The node hands each `ChainUpdate` to `StoreWriter.submit` and carries on (relaying, validating
the next block) while the thread writes it. Why a dedicated thread with its own queue rather than
a `ThreadPoolExecutor(max_workers=1)`: the queue is also what reads consult (a block or undo
record that is queued but not yet written is served from it, `get_block_bytes`), a failed commit
must stop every later one (an executor would run the queued jobs anyway, and a later update
written over a missing earlier one is not a prefix of what was accepted), and the bound must
make the submitter wait, which an executor's unbounded queue cannot.

Guarantees, given a store whose `apply` is all-or-nothing (docs/storage.md):

* updates are applied one at a time in submission order, so what is on disk is always the
  state after some prefix of the submitted updates;
* after the first failed `apply` nothing more is written, `submit` refuses further updates and
  the failure is reported once (`take_error`) to whoever asks first: the node's loop callback
  while it runs, or `close` while it stops;
* at most `max_pending` updates wait (`MAX_PENDING_COMMITS`): a submit beyond that blocks the
  caller until the thread has written one, so a disk that falls behind slows the node down
  instead of filling its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import structlog

from consensus.addressindex import AddressIndexEntry, AddressUtxo
from consensus.update import AddressIndexReader, ChainStore, ChainUpdate
from storage import StorageError

log = structlog.get_logger("powlab.node.storewriter")

# Updates handed to the writer and not yet written. During a sync an update holds up to
# MAX_BLOCKS_PER_COMMIT blocks (node/daemon.py), or the run of blocks one accepted block
# connects (at most the download window), so this also bounds the block data held twice (in
# the queue and, until written, nowhere else on disk) to 16 batches.
MAX_PENDING_COMMITS = 16
# The writer runs at this nice value above the node's (Linux: per thread). SQLite work that
# can wait should not take a core from the loop of this or another node (a testnet runs many
# nodes on few cores): relaying a block is what a peer is waiting for, writing it is not.
WRITER_NICE_INCREMENT = 10


class StoreWriter:
    """Applies updates to `store` in a thread of its own; implements `BlockReader`.

    `on_failure` is called in the writer thread with the exception of the first failed
    `apply` (the node forwards it to its loop with `call_soon_threadsafe`).
    """

    def __init__(
        self,
        store: ChainStore,
        on_failure: Callable[[BaseException], None] | None = None,
        max_pending: int = MAX_PENDING_COMMITS,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.store = store
        self.max_pending = max_pending
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, ChainUpdate]] = deque()
        self._submitted = 0  # sequence number of the last update submitted
        self._written = 0  # ... and of the last one written
        self._error: BaseException | None = None
        self._error_taken = False
        self._closing = False
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # What the bound cost: submits that had to wait for room, and the time they waited.
        self.full_waits = 0
        self.full_wait_seconds = 0.0
        self.blocks_written = 0  # block bodies written (a batched commit holds several)
        # Started by the first submit, not here: the node forks its miner workers after opening
        # the store, and a fork is only safe while the process has a single thread.
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- the loop's side

    def submit(self, update: ChainUpdate) -> int:
        """Queue `update` behind every earlier one; its sequence number. Blocks while
        `max_pending` updates wait. StorageError once a commit failed or after `close`."""
        with self._cond:
            self._refuse_if_failed()
            if len(self._pending) >= self.max_pending:
                self.full_waits += 1
                started = time.perf_counter()
                while len(self._pending) >= self.max_pending and self._error is None:
                    self._cond.wait()
                self.full_wait_seconds += time.perf_counter() - started
                self._refuse_if_failed()
            self._submitted += 1
            self._pending.append((self._submitted, update))
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
                self._thread.start()
            return self._submitted

    def _refuse_if_failed(self) -> None:
        if self._error is not None:
            raise StorageError(
                f"the block store is no longer written: a commit failed ({self._error})"
            )
        if self._closing:
            raise StorageError("the store writer is closed")

    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        """Updates submitted and not yet written."""
        with self._cond:
            return len(self._pending)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def take_error(self) -> BaseException | None:
        """The failure of a commit, the first time it is asked for; then None."""
        with self._cond:
            if self._error is None or self._error_taken:
                return None
            self._error_taken = True
            return self._error

    async def wait_written(self, seq: int | None = None) -> None:
        """Until update `seq` (default: the last submitted) is on disk; StorageError if a
        commit up to it failed. The loop stays free meanwhile."""
        target = self._submitted if seq is None else seq
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._cond:
            if self._written >= target:
                return
            if self._error is None:
                future = loop.create_future()
                self._waiters.append((target, loop, future))
        if future is not None:
            await future
        if self._written < target:
            raise StorageError(
                "the block store is no longer written: a commit failed before this one was"
                f" written ({self._error})"
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or a commit failed; False on timeout. For callers that
        must read the store as the chain sees it (the address index) and for the node's start."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending or self._error is not None, timeout
            )

    def close(self) -> None:
        """Write what is queued, stop the thread and close the store. Raises StorageError if a
        commit failed and nobody took the failure yet (it happened while draining)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        log.info("store_writer_closed", commits=self._written, blocks=self.blocks_written,
                 full_waits=self.full_waits, full_wait_s=round(self.full_wait_seconds, 3))
        try:
            self.store.close()
        finally:
            error = self.take_error()
            if error is not None:
                raise StorageError(str(error)) from error

    # ----------------------------------------------------------------- reads

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        found, data = self._queued("blocks", block_hash)
        return data if found else self.store.get_block_bytes(block_hash)

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        found, data = self._queued("undo", block_hash)
        return data if found else self.store.get_undo_bytes(block_hash)

    def _queued(self, table: str, key: bytes) -> tuple[bool, bytes | None]:
        """The newest queued value of `key` (None: queued for deletion). An update leaves the
        queue only after its commit returned, so a key not found here is already on disk."""
        with self._cond:
            for _, update in reversed(self._pending):
                rows: dict[bytes, bytes] = getattr(update, table)
                if key in rows:
                    return True, rows[key]
        return False, None

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                seq, update = self._pending[0]
            try:
                self.store.apply(update)
            except BaseException as exc:  # whatever it was, nothing more may be written
                self._fail(exc)
                return
            with self._cond:
                self._pending.popleft()
                self._written = seq
                self.blocks_written += len(update.blocks)
                self._cond.notify_all()
                ready = [w for w in self._waiters if w[0] <= seq]
                self._waiters = [w for w in self._waiters if w[0] > seq]
            for _, loop, future in ready:
                _resolve_threadsafe(loop, future)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            waiters, self._waiters = self._waiters, []
            self._cond.notify_all()
        log.error("store_writer_failed", error=str(exc), queued=len(self._pending))
        if self._on_failure is not None:
            self._on_failure(exc)
        for _, loop, future in waiters:
            _resolve_threadsafe(loop, future)


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(resolve)


# Turns of the event loop an address query spends waiting, without holding the loop, for the
# writer to be idle; a sync that keeps the queue busy past that is then waited for on the loop,
# for what it queued during the last turn only, rather than starving the query.
SETTLE_ROUNDS = 8


class WrittenAddressIndex:
    """The store's address index, read only once everything the chain accepted is written.

    The index lives on disk alone, so a query while commits are queued would miss their rows:
    each query first hands over the node's deferred update (`flush`), then waits for the
    writer to be idle. The RPCs wait with `settled`, which leaves the event loop free; the
    synchronous methods below block their caller instead. Only address queries pay this wait,
    and only while commits are queued.
    """

    def __init__(
        self, writer: StoreWriter, index: AddressIndexReader, flush: Callable[[], None]
    ) -> None:
        self._writer = writer
        self._index = index
        self._flush = flush

    async def settled(self) -> AddressIndexReader:
        """The index, once every update the chain has made is written: read it at once, with
        no await in between, and it matches the chain in memory (only the loop submits)."""
        for _ in range(SETTLE_ROUNDS):
            self._flush()
            if self._writer.pending == 0:
                break
            await self._writer.wait_written()  # StorageError if a commit failed
        return self._settle()

    def _settle(self) -> AddressIndexReader:
        self._flush()
        self._writer.wait_idle()
        if self._writer.failed:
            raise StorageError("the block store could not be written: the address index is stale")
        return self._index

    def address_index_tip(self) -> bytes | None:
        return self._settle().address_index_tip()

    def address_deltas(
        self, pkhs: list[bytes], start: int, end: int, limit: int
    ) -> list[AddressIndexEntry]:
        return self._settle().address_deltas(pkhs, start, end, limit)

    def address_balance(self, pkh: bytes) -> tuple[int, int]:
        return self._settle().address_balance(pkh)

    def address_utxos(self, pkhs: list[bytes], limit: int) -> list[AddressUtxo]:
        return self._settle().address_utxos(pkhs, limit)


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority by WRITER_NICE_INCREMENT, where the OS
    allows it per thread (Linux); elsewhere, or when refused, the thread keeps the node's."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + WRITER_NICE_INCREMENT))
    except OSError as exc:
        log.debug("store_writer_priority_unchanged", error=str(exc))
