"""Compact blocks: a new block travels as its header and a short id per transaction.

A node that connects a new block pushes it to every peer that lacks it as a `cmpctblock`: the
header, a fresh salt, a 6-byte short id per transaction and the coinbase in full, plus in full
each transaction this peer is not known to have (neither announced by it nor announced to it:
one still queued for the next `inv` counts as unknown), up to PREFILL_MAX_BYTES, as BIP 152
prefills what the peer likely lacks. A block mined moments after a transaction (faster than
announcements travel, which go out on the timer) thus costs no `getblocktxn` round trip per
hop. The receiver fills in what its mempool has, asks for the rest with `getblocktxn` and gets
it in a `blocktxn`; if the block does not come out right (a short-id collision), it falls back
to the full block.
"""

from __future__ import annotations

import secrets
from typing import Any

from consensus.block import Block, decode_header
from consensus.chainstate import AcceptResult
from consensus.errors import ConsensusError, DecodeError
from consensus.tx import Transaction, decode_transaction
from p2p.core import ProtocolCore
from p2p.messages import (
    INV_BLOCK,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    InvItem,
    NotFound,
    PrefilledTx,
    short_tx_id,
)
from p2p.peer import PartialBlock, Peer
from p2p.penalties import HARMLESS_BLOCK_REASONS
from p2p.shortids import MempoolShortIds

MAX_ANNOUNCE_BLOCKS = 10  # a long reorg is announced by its tip only
# More headers than blocks by this much: the node is catching up and announces nothing. Well
# beyond a race between two tips, and an attacker would need this many blocks of more work
# than the chain, unspent, to silence a node's relay with headers alone.
CATCHING_UP_BLOCKS = 16
# Transactions sent in full with a compact block, per peer, at most (encoded bytes); the rest
# go as short ids, fetched with getblocktxn if the peer lacks them.
PREFILL_MAX_BYTES = 20_000


class CompactBlocks(ProtocolCore):
    """Announcing blocks, and reconstructing the ones announced to us."""

    def announce_block(self, block: Block, now: float) -> None:
        """Push a compact form of a newly connected block to every peer that lacks it."""
        block_hash = block.hash
        # One message per distinct set of prefilled transactions (usually one or two).
        messages: dict[tuple[int, ...], CompactBlock] = {}
        salt = 0
        short_ids: list[bytes] = []
        encoded: dict[int, bytes] = {}
        # A copy: a send may drop a peer (its stream queue overflowing).
        for peer in list(self.peers.values()):
            if not peer.established or block_hash in peer.known:
                continue
            if not messages:
                # From the OS CSPRNG: a peer that could predict the salt could craft short-id
                # collisions (self.rng is a seeded Mersenne Twister, for non-security choices).
                salt = secrets.randbits(64)
                short_ids = [short_tx_id(salt, tx.txid) for tx in block.txs]
                encoded[0] = block.txs[0].encode()
            prefill = self._prefill_for(peer, block, encoded)
            msg = messages.get(prefill)
            if msg is None:
                full = set(prefill)
                msg = messages[prefill] = CompactBlock(
                    block.header.encode(),
                    salt,
                    tuple(short_ids[i] for i in range(1, len(block.txs)) if i not in full),
                    tuple(PrefilledTx(i, encoded[i]) for i in (0, *prefill)),
                )
            peer.known.add(block_hash)
            self._send(peer, msg, stream=True)

    def _prefill_for(self, peer: Peer, block: Block, encoded: dict[int, bytes]) -> tuple[int, ...]:
        """Indexes (after the coinbase) of the block's transactions that `peer` is not known to
        have, within PREFILL_MAX_BYTES; fills `encoded` with their encodings."""
        queued = {item.hash for item in peer.inv_queue} if peer.inv_queue else set()
        chosen: list[int] = []
        budget = PREFILL_MAX_BYTES
        for index in range(1, len(block.txs)):
            txid = block.txs[index].txid
            if txid in peer.known and txid not in queued:
                continue
            raw = encoded.get(index)
            if raw is None:
                raw = encoded[index] = block.txs[index].encode()
            if len(raw) > budget:
                break
            budget -= len(raw)
            chosen.append(index)
        return tuple(chosen)

    def announce_blocks(self, result: AcceptResult, now: float) -> None:
        """Pass newly connected blocks on, unless this node is itself still catching up: as
        Bitcoin Core does not announce blocks during initial block download, a node that
        has many more headers than blocks keeps quiet until it reaches the tip, then
        announces that. Otherwise each peer it syncs alongside gets every block twice, and
        a peer still at the start sees a flood of blocks it did not ask for."""
        chain = self.node.chain
        if chain.best_header.height - chain.tip.height > CATCHING_UP_BLOCKS:
            return
        connected = result.connected[-MAX_ANNOUNCE_BLOCKS:]
        for _, block in connected:
            self.announce_block(block, now)

    def _on_compact_block(self, peer: Peer, msg: CompactBlock, now: float) -> None:
        header = decode_header(msg.header)
        block_hash = header.hash
        peer.known.add(block_hash)
        chain = self.node.chain
        if chain.has_block(block_hash):
            return
        parent = chain.index.get(header.prev_hash)
        if parent is None:
            self._send_getheaders(peer, chain.best_header, now)
            return
        new = block_hash not in chain.index
        if new:
            # The same limits as for headers: enough work, and within the peer's budget.
            if parent.chainwork + self._header_work(header.bits) < self._antidos_work():
                self._count_unhelpful(peer, now)
                return
            if self._headers_room(peer) <= 0:
                return
        try:
            entry = self.node.accept_header(header)
        except ConsensusError as exc:
            if exc.reason not in HARMLESS_BLOCK_REASONS:
                self._penalise(peer.addr, "invalid-header", now)
            return
        if new:
            peer.headers_only.add(block_hash)  # until the block is complete
        peer.best_header_work = max(peer.best_header_work, entry.chainwork)
        count = len(msg.short_ids) + len(msg.prefilled)
        txs: list[Transaction | bytes | None] = [None] * count
        for item in msg.prefilled:
            if item.index >= count:
                self._penalise(peer.addr, "bad-field", now)
                return
            txs[item.index] = item.tx
        by_short = self._mempool_short_ids(msg.salt)
        short_iter = iter(msg.short_ids)
        missing = []
        for index in range(count):
            if txs[index] is None:
                tx = by_short.get(next(short_iter))
                if tx is None:
                    missing.append(index)
                else:
                    txs[index] = tx
        self._block_requested(block_hash, peer, now)
        if missing:
            peer.pending_compact[block_hash] = PartialBlock(msg.header, txs, missing, now)
            self._send(peer, GetBlockTxn(block_hash, tuple(missing)))
            return
        self._finish_compact(peer, msg.header, txs, now)

    def _mempool_short_ids(self, salt: int) -> MempoolShortIds:
        """The mempool by short id under `salt`, hashed on the first lookup (p2p/shortids.py)."""
        return MempoolShortIds(self.node.mempool, salt)

    def _finish_compact(
        self, peer: Peer, raw_header: bytes, txs: list[Transaction | bytes | None], now: float
    ) -> None:
        header = decode_header(raw_header)
        # Mempool transactions are used as they are; only what came over the wire is decoded.
        try:
            decoded = [
                t if isinstance(t, Transaction)
                else decode_transaction(t or b"", self.params.max_block_size)
                for t in txs
            ]
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        block = Block(header, decoded)
        if block.computed_merkle_root() != header.merkle_root:
            # A short-id collision or a stale guess: fall back to the full block.
            self._block_requested(header.hash, peer, now)
            self._send(peer, GetData((InvItem(INV_BLOCK, header.hash),)))
            return
        self._process_block(peer, block, now, pushed=True)

    def _on_getblocktxn(self, peer: Peer, msg: GetBlockTxn, now: float) -> None:
        block = self.node.chain.get_block(msg.block_hash)
        if block is None or (msg.indexes and msg.indexes[-1] >= len(block.txs)):
            self._send(peer, NotFound((InvItem(INV_BLOCK, msg.block_hash),)))
            return
        self._send(
            peer,
            BlockTxn(msg.block_hash, tuple(block.txs[i].encode() for i in msg.indexes)),
            stream=True,
        )

    def _on_blocktxn(self, peer: Peer, msg: BlockTxn, now: float) -> None:
        partial = peer.pending_compact.pop(msg.block_hash, None)
        if partial is None:
            return
        if len(msg.txs) != len(partial.missing):
            self._penalise(peer.addr, "bad-field", now)
            return
        for index, raw in zip(partial.missing, msg.txs, strict=True):
            partial.txs[index] = raw
        self._finish_compact(peer, partial.header, partial.txs, now)

    def _expire_compact(self, peer: Peer, now: float) -> None:
        """Give up on compact blocks whose missing transactions did not come in time."""
        for block_hash, partial in list(peer.pending_compact.items()):
            if now - partial.requested_at > self.config.block_stall_timeout:
                del peer.pending_compact[block_hash]


#: The messages this part handles (`P2PProtocol._handlers` merges every part's table).
HANDLERS: dict[type, Any] = {
    CompactBlock: CompactBlocks._on_compact_block,
    GetBlockTxn: CompactBlocks._on_getblocktxn,
    BlockTxn: CompactBlocks._on_blocktxn,
}
