"""Assembling block templates and (for tests and tools) solving them by brute force."""

from __future__ import annotations

from collections.abc import Sequence

from consensus.block import Block, BlockHeader
from consensus.chainstate import BlockIndex, ChainState
from consensus.hashing import merkle_root_of_leaf_hashes
from consensus.pow import bits_to_target, hash_meets_target
from consensus.tx import Transaction, TxOut, make_coinbase

BLOCK_VERSION = 1
NONCE_SPACE = 1 << 32


def block_timestamp(chain: ChainState, prev: BlockIndex, now: int) -> int:
    """The clock, but never earlier than the rules allow (at or below the median time past, or
    too far before `prev` at the start of a retarget window)."""
    return max(now, chain.min_timestamp(prev))


def assemble_block(
    chain: ChainState,
    txs: Sequence[Transaction],
    fees: int,
    payout_pkh: bytes,
    now: int,
    extra_nonce: int = 0,
    prev: BlockIndex | None = None,
) -> Block:
    """A block on `prev` (default: the tip) paying reward + fees to `payout_pkh`, nonce 0."""
    prev = prev or chain.tip
    height = prev.height + 1
    reward = chain.params.block_reward(height) + fees
    coinbase = make_coinbase(height, [TxOut(reward, payout_pkh)], extra_nonce.to_bytes(8, "big"))
    all_txs = [coinbase, *txs]
    header = BlockHeader(
        version=BLOCK_VERSION,
        prev_hash=prev.hash,
        merkle_root=merkle_root_of_leaf_hashes([tx.merkle_leaf for tx in all_txs]),
        timestamp=block_timestamp(chain, prev, now),
        bits=chain.next_bits(prev),
        nonce=0,
    )
    return Block(header, all_txs)


def solve_block(block: Block, max_tries: int = NONCE_SPACE) -> Block | None:
    """Search nonces in order; fine at regtest difficulty, hopeless at real difficulty."""
    target = bits_to_target(block.header.bits)
    header = block.header
    for nonce in range(min(max_tries, NONCE_SPACE)):
        candidate = header.with_nonce(nonce)
        if hash_meets_target(candidate.hash, target):
            return Block(candidate, block.txs)
    return None
