"""Compact blocks: a new block travels as its header and a short id per transaction.

A node that connects a new block pushes it to every high-bandwidth peer that lacks it
(p2p/bandwidth.py: at most three ask us, as BIP152) as a `cmpctblock`, and announces it to the
others by its header; they fetch the `cmpctblock` with a getdata (INV_CMPCT_BLOCK) if they want
it. A block that would become our new tip is pushed to the high-bandwidth peers even before we
have validated it, flagged `pipelined` (`_pipeline`). A compact block is the
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
from consensus.chainstate import AcceptResult, BlockStatus
from consensus.errors import ConsensusError, DecodeError
from consensus.tx import Transaction, decode_transaction
from consensus.validation import check_block
from p2p.core import ProtocolCore
from p2p.messages import (
    INV_BLOCK,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    Headers,
    Inv,
    InvItem,
    NotFound,
    PrefilledTx,
)
from p2p.peer import PartialBlock, Peer
from p2p.penalties import HARMLESS_BLOCK_REASONS
from p2p.shortids import MempoolShortIds, short_ids_for

MAX_ANNOUNCE_BLOCKS = 10  # a long reorg is announced by its tip only
# More headers than blocks by this much: the node is catching up and announces nothing. Well
# beyond a race between two tips, and an attacker would need this many blocks of more work
# than the chain, unspent, to silence a node's relay with headers alone.
CATCHING_UP_BLOCKS = 16
# Transactions sent in full with a compact block, per peer, at most (encoded bytes); the rest
# go as short ids, fetched with getblocktxn if the peer lacks them.
PREFILL_MAX_BYTES = 20_000
# A block in the index with these flags is stored already, or known to be invalid.
_STORED_OR_FAILED = BlockStatus.HAVE_DATA | BlockStatus.FAILED_MASK


class _CompactBuilder:
    """One block's compact forms: one salt and short-id list, one message per distinct set of
    prefilled transactions (usually one or two per block, whatever the number of peers)."""

    def __init__(self, block: Block, pipelined: int) -> None:
        self.block = block
        self.pipelined = pipelined
        self.encoded: dict[int, bytes] = {}  # transaction index -> encoding, shared by peers
        self._messages: dict[tuple[int, ...], CompactBlock] = {}
        self._salt: int | None = None
        self._short_ids: list[bytes] = []

    def message(self, prefill: tuple[int, ...]) -> CompactBlock:
        msg = self._messages.get(prefill)
        if msg is not None:
            return msg
        txs = self.block.txs
        if self._salt is None:
            # From the OS CSPRNG: a peer that could predict the salt could craft short-id
            # collisions (the protocol's rng is a seeded Mersenne Twister).
            self._salt = secrets.randbits(64)
            self._short_ids = short_ids_for(self._salt, (tx.txid for tx in txs))
        encoded = self.encoded
        if 0 not in encoded:
            encoded[0] = txs[0].encode()
        full = set(prefill)
        msg = self._messages[prefill] = CompactBlock(
            self.block.header.encode(),
            self._salt,
            tuple(self._short_ids[i] for i in range(1, len(txs)) if i not in full),
            tuple(PrefilledTx(i, encoded[i]) for i in (0, *prefill)),
            self.pipelined,
        )
        return msg


class CompactBlocks(ProtocolCore):
    """Announcing blocks, and reconstructing the ones announced to us."""

    pipelined_blocks = 0  # blocks passed on before validation

    def announce_block(self, block: Block, now: float, pipelined: bool = False) -> None:
        """Pass a block on to every peer that lacks it: pushed as a compact block to the peers
        that asked for that (high bandwidth), announced by its header to the others. A
        `pipelined` block (not validated yet) goes to the high-bandwidth peers only, flagged."""
        block_hash = block.hash
        builder = _CompactBuilder(block, int(pipelined))
        # A copy: a send may drop a peer (its stream queue overflowing).
        for peer in list(self.peers.values()):
            if not peer.established or block_hash in peer.known:
                continue
            if peer.hb_to:
                peer.known.add(block_hash)
                self._send(peer, builder.message(self._prefill_for(peer, block, builder.encoded)),
                           stream=True)
            elif not pipelined:
                self._announce_header(peer, block)

    def _announce_header(self, peer: Peer, block: Block) -> None:
        """Low bandwidth: the header alone, which the peer can connect (it has the parent's
        header), else an inv that makes it ask for headers; it fetches the block if it wants it."""
        block_hash = block.hash
        prev = block.header.prev_hash
        peer.known.add(block_hash)
        if prev in peer.known or prev == peer.tip:
            self._send(peer, Headers((block.header.encode(),)))
        else:
            self._send(peer, Inv((InvItem(INV_BLOCK, block_hash),)))

    def _compact_reply(self, peer: Peer, block: Block) -> CompactBlock:
        """The compact block a getdata (INV_CMPCT_BLOCK) is answered with: a validated block,
        so never flagged."""
        builder = _CompactBuilder(block, 0)
        return builder.message(self._prefill_for(peer, block, builder.encoded))

    def _pipeline(self, block: Block, now: float) -> None:
        """Pass `block` (its header accepted, rebuilt with a matching merkle root) on to our
        high-bandwidth peers before validating it, if it would become our new tip, as Bitcoin
        Core's NewPoWValidBlock. The caller validates it right after; the node sends what is
        queued first (see NodeInterface.submit_block)."""
        chain = self.node.chain
        entry = chain.index.get(block.hash)
        tip = chain.tip
        if entry is None or entry.prev is not tip or entry.status & _STORED_OR_FAILED:
            return  # not the next block on our tip, or already stored (or failed)
        if entry.chainwork <= tip.chainwork:
            return
        if chain.best_header.height - tip.height > CATCHING_UP_BLOCKS:
            return  # catching up: no relay at all until we reach the tip
        if not any(
            p.established and p.hb_to and block.hash not in p.known for p in self.peers.values()
        ):
            return
        # A block whose transaction list repeats itself can have the right merkle root
        # (CVE-2012-2459) and still not be the block that was mined: never pass that on.
        if len({tx.txid for tx in block.txs}) != len(block.txs):
            return
        # Core's CheckBlock before NewPoWValidBlock: size, one coinbase first, each transaction's
        # own rules. Cached on the block and its (mostly mempool) transactions, so the
        # validation right after does not repeat it; a failure is left to that validation.
        try:
            check_block(block, self.params)
        except ConsensusError:
            return
        self.pipelined_blocks += 1
        self.announce_block(block, now, pipelined=True)

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
        asked = self._blocks_in_flight.get(block_hash, (None,))[0] == peer.id
        relayed = self._relayed_push(peer, bool(msg.pipelined), asked)
        if chain.has_block(block_hash):
            return
        self._compact_tried.add(block_hash)
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
            peer.pending_compact[block_hash] = PartialBlock(
                msg.header, txs, missing, now, relayed
            )
            self._send(peer, GetBlockTxn(block_hash, tuple(missing)))
            return
        self._finish_compact(peer, msg.header, txs, now, relayed)

    def _mempool_short_ids(self, salt: int) -> MempoolShortIds:
        """The mempool by short id under `salt`, hashed on the first lookup (p2p/shortids.py)."""
        return MempoolShortIds(self.node.mempool, salt)

    def _finish_compact(
        self,
        peer: Peer,
        raw_header: bytes,
        txs: list[Transaction | bytes | None],
        now: float,
        relayed: bool = False,
    ) -> None:
        """`relayed`: pushed flagged by a peer we asked to push (see `_on_compact_block`)."""
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
        self._pipeline(block, now)
        self._process_block(peer, block, now, pushed=True, relayed=relayed)

    def _on_getblocktxn(self, peer: Peer, msg: GetBlockTxn, now: float) -> None:
        block = self._servable_block(msg.block_hash)
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
        self._finish_compact(peer, partial.header, partial.txs, now, partial.relayed)

    def _servable(self, block_hash: bytes) -> bool:
        """Whether we may hand a block to peers (getdata, getblocktxn): stored in the index
        and not known to be invalid. A block passed on before validation that failed is never
        served; nor is an orphan, which nothing has checked yet."""
        entry = self.node.chain.index.get(block_hash)
        return entry is not None and not entry.failed and bool(
            entry.status & BlockStatus.HAVE_DATA
        )

    def _servable_block(self, block_hash: bytes) -> Block | None:
        return self.node.chain.get_block(block_hash) if self._servable(block_hash) else None

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
