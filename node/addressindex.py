"""Bring the on-disk address index up to the chain's tip at start-up (``--addressindex``).

The index is valid for the block recorded with it (`address_index_tip`). When that is the tip,
nothing is done. When it is an ancestor of the tip on the active chain (the node ran without the
index, or a rebuild was interrupted), the blocks above it are indexed ("catch-up"). Otherwise
(never built, a reorg happened while the index was off, or ``--reindex-addresses``) every address
row is dropped and the whole active chain is indexed again. Each batch of blocks is one store
transaction that also moves `address_index_tip`, so a kill at any moment resumes by catching up.

The caller commits the chain state's pending update first and switches
`ChainState.address_index` on afterwards: from then on every connect and disconnect journals its
rows in the same transaction as the UTXO set.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

import structlog

from consensus.addressindex import index_block
from consensus.chainstate import ChainState
from consensus.update import ChainUpdate

log = structlog.get_logger("powlab.node")

# Blocks indexed per store transaction while (re)building: large enough that the per-commit cost
# vanishes, small enough that an interrupted rebuild loses little and memory stays bounded.
REBUILD_BATCH_BLOCKS = 200
# Address rows per store transaction while (re)building: 200 full blocks of many-output
# transactions would be millions of rows, held in the journal (~400 bytes each) and again by the
# fold that follows; this caps one batch near 20 MB of journal whatever the blocks hold.
REBUILD_BATCH_ROWS = 50_000
# Seconds between two progress events in the log.
PROGRESS_INTERVAL = 5.0

SyncOutcome = Literal["current", "caught-up", "rebuilt"]


class _IndexStore(Protocol):
    def address_index_tip(self) -> bytes | None: ...

    def apply(self, update: ChainUpdate) -> None: ...


def sync_address_index(
    store: _IndexStore,
    chain: ChainState,
    *,
    rebuild: bool = False,
    batch_blocks: int = REBUILD_BATCH_BLOCKS,
    batch_rows: int = REBUILD_BATCH_ROWS,
) -> SyncOutcome:
    """Make `store`'s address index match `chain`'s active chain; say what that took."""
    tip = chain.tip
    marker = store.address_index_tip()
    if not rebuild and marker == tip.hash:
        log.info("address_index_current", height=tip.height, tip=tip.hash.hex())
        return "current"
    marked = None if marker is None else chain.get(marker)
    if not rebuild and marked is not None and chain.is_active(marked):
        start, outcome = marked.height + 1, "caught-up"
        log.info("address_index_catching_up", from_height=marked.height, to_height=tip.height)
    else:
        reason = (
            "requested"
            if rebuild
            else "never built"
            if marker is None
            else "its block left the active chain"
        )
        log.info("address_index_rebuilding", reason=reason, blocks=tip.height)
        genesis = chain.active[0].hash  # the genesis block pays nobody an indexed coin
        store.apply(ChainUpdate(address_reset=True, address_tip=genesis))
        start, outcome = 1, "rebuilt"
    _index_range(store, chain, start, tip.height, batch_blocks, batch_rows)
    log.info("address_index_ready", outcome=outcome, height=tip.height)
    return outcome


def _index_range(
    store: _IndexStore,
    chain: ChainState,
    start: int,
    end: int,
    batch_blocks: int,
    batch_rows: int,
) -> None:
    update = ChainUpdate()
    last_report = time.monotonic()
    for height in range(start, end + 1):
        entry = chain.active[height]
        block = chain.get_block(entry.hash)
        if block is None:
            raise RuntimeError(f"block {entry.hash.hex()} of the active chain is not stored")
        index_block(block, height, chain.block_undo(entry.hash), update.address_deltas)
        update.address_tip = entry.hash
        if (
            height == end
            or (height - start + 1) % batch_blocks == 0
            or len(update.address_deltas) >= batch_rows
        ):
            store.apply(update)
            update = ChainUpdate()
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL or height == end:
                last_report = now
                log.info("address_index_progress", height=height, of=end)
