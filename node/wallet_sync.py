"""Keeping the wallet in step with the chain and the network: noting the transactions that
concern it as blocks connect, rescanning what a crash kept it from seeing, and resubmitting
its unconfirmed payments (bitcoind's ResubmitWalletTransactions).
"""

from __future__ import annotations

import structlog

from consensus.block import Block
from consensus.chainstate import ChainState
from consensus.errors import ConsensusError
from node.interface import NodeAPI
from node.wallet import Wallet

log = structlog.get_logger("powlab.wallet")


def note_block(wallet: Wallet, block: Block, chain: ChainState) -> bool:
    """Note the block's transactions that concern the wallet; True when any was new."""
    found = False
    for tx in block.txs:
        found = wallet.note_tx(tx, block.header.timestamp, chain) or found
    return found


def rescan_start(wallet: Wallet, chain: ChainState) -> int:
    """The first height the wallet has not looked at on the active chain."""
    if wallet.scanned is None:
        return 0
    height, block_hash = wallet.scanned
    entry = chain.get(block_hash)
    if entry is None:
        return 0  # a block the store never committed (the node died first): look at it all
    if not chain.is_active(entry):
        return ChainState.find_fork(entry, chain.tip).height + 1
    return height + 1


def rescan(wallet: Wallet, chain: ChainState) -> tuple[int, bool]:
    """Look at the active blocks the wallet missed (it was killed, or is new to this chain);
    returns (blocks scanned, whether anything new was found). Moves the scan marker."""
    start = rescan_start(wallet, chain)
    found = False
    for height in range(start, chain.height + 1):
        entry = chain.at_height(height)
        block = chain.get_block(entry.hash) if entry is not None else None
        if block is None:
            log.warning("wallet_rescan_block_missing", height=height)
            continue
        found = note_block(wallet, block, chain) or found
    wallet.scanned = (chain.height, chain.tip.hash)
    return max(0, chain.height + 1 - start), found


def resubmit(node: NodeAPI) -> dict[str, int]:
    """Offer the mempool every unconfirmed, unabandoned payment of ours that it lacks, oldest
    first, and announce again those it holds. Returns counts for the log."""
    wallet: Wallet = node.wallet
    counts = {"accepted": 0, "announced": 0, "refused": 0}
    for record in wallet.history.pending(wallet.settled_in(node.chain)):
        tx = record.tx
        if tx.txid in node.mempool:
            if node.p2p is not None:
                node.protocol.announce_tx(tx, node.clock())
                counts["announced"] += 1
            continue
        try:
            node.submit_transaction(tx)
            counts["accepted"] += 1
        except ConsensusError as exc:
            # A conflicting spend confirmed (its inputs are gone: it shows as conflicted), or
            # its parent is not back yet: it stays pending until it confirms or is abandoned.
            counts["refused"] += 1
            log.info("wallet_tx_not_resubmitted", txid=tx.txid.hex(), reason=exc.reason)
    if node.p2p is not None:
        node.p2p.flush()
    return counts
