"""Penalties: what each kind of misbehaviour costs a peer, and the budgets it is held to.

A penalty adds to the peer's score in the address book (per host); past the threshold (default
100) every peer at that host is disconnected and discouraged. Rejections an honest peer can
cause (races, early or mangled blocks, policy differences) cost nothing.
"""

from __future__ import annotations

import structlog

from consensus.mempool import NON_FINAL, TX_SIZE
from p2p.actions import PeerPenalised
from p2p.config import Address
from p2p.core import ProtocolCore
from p2p.messages import BlockMsg, BlockTxn, Headers, Message
from p2p.peer import Peer

log = structlog.get_logger("powlab.p2p")

# Penalty scores: the threshold (default 100) disconnects and discourages the peer.
PENALTY = {
    "malformed": 10,
    "truncated": 10,
    "bad-magic": 10,
    "bad-checksum": 10,
    "oversize": 50,
    "unknown-type": 10,
    "bad-field": 20,
    "rate-limit": 10,
    "invalid-block": 100,
    "invalid-header": 100,
    "invalid-tx": 10,
    "malformed-tx": 20,
    "malformed-block": 50,
    "wrong-network": 100,
    "unrequested-block-flood": 20,
    "unconnecting-headers": 10,
    "stream-overflow": 50,
    "inv-flood": 20,
    "getdata-flood": 20,
    "headers-flood": 20,
    "low-work-headers": 20,
    # A little for each replacement our rules refused (consensus.replacement's
    # REFUSED_REPLACEMENT_REASONS): an honest peer with another view of the mempool sends few, a
    # flood (cycling or pinning) is cut off after `threshold` of them, each having cost us at
    # most the rule 5 bound of work and no signature check. A conflict our policy does not
    # replace at all (`txn-mempool-conflict`) costs nothing: the peer may run another policy;
    # nor does one paying no higher a fee rate than what it conflicts with (`NoBetterFeeRate`,
    # the loser of a race that an honest peer saw first).
    "replacement-rejected": 1,
}
# Block rejections that say nothing bad about the sender: the body may have been mangled in
# transit, or the block is only early.
HARMLESS_BLOCK_REASONS = frozenset(
    {"bad-merkle-root", "bad-txns-duplicate", "time-too-new", "duplicate", "prev-blk-not-found"}
)
# Transaction rejections that an honest peer can cause (races, policy differences).
HARMLESS_TX_REASONS = frozenset(
    {
        "txn-mempool-conflict",
        "txn-already-in-mempool",
        "txn-already-known",
        "bad-txns-inputs-missingorspent",
        "bad-txns-premature-spend-of-coinbase",
        "min-relay-fee-not-met",
        "mempool-full",
        "mempool-min-fee-not-met",
        "too-long-mempool-chain",
        # Final soon, perhaps at the next block; Bitcoin Core does not punish it either.
        NON_FINAL,
        # Policy, not a rule: a block may hold it (Bitcoin Core does not punish it either).
        TX_SIZE,
    }
)


class Penalties(ProtocolCore):
    """Charging peers: penalties, the per-peer rate budget, floods of unrequested blocks."""

    def _penalise(self, addr: Address, reason: str, now: float, score: int | None = None) -> None:
        score = PENALTY.get(reason, 10) if score is None else score
        discouraged = self.book.penalise(addr, reason, score, now)
        log.info(
            "peer_penalised",
            peer=f"{addr[0]}:{addr[1]}",
            reason=reason,
            score=score,
            total=self.book.score(addr),
            discouraged=discouraged,
        )
        self._events.append(PeerPenalised(addr, reason, score, discouraged))
        if discouraged:
            self.bans += 1
            # Discouragement is per host (as in Bitcoin Core): every peer there goes.
            for peer in [p for p in self.peers.values() if p.addr[0] == addr[0]]:
                self._disconnect(peer, f"misbehaving: {reason}", now)

    def _within_budget(self, peer: Peer, msg: Message, size: int, now: float) -> bool:
        peer.last_recv = now
        peer.bytes_recv += size
        if self._answers_our_request(peer, msg):
            # We set that volume (blocks in flight per peer, headers per request): a sync at
            # thousands of blocks a second must not look like a flood from the peer serving it.
            return True
        if peer.msg_bucket.take(1, now) and peer.byte_bucket.take(size, now):
            return True
        self._penalise(peer.addr, "rate-limit", now)
        return False

    @staticmethod
    def _answers_our_request(peer: Peer, msg: Message) -> bool:
        kind = type(msg)
        if kind is BlockMsg:
            return peer.blocks_in_flight > 0
        if kind is Headers:
            return peer.headers_requested_at is not None
        if kind is BlockTxn:
            return bool(peer.pending_compact)
        return False

    def _count_unhelpful(self, peer: Peer, now: float) -> None:
        """Unrequested blocks that do not extend our best chain: a flood costs the sender."""
        window = peer.unhelpful_blocks
        window.append(now)
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) > self.config.max_unrequested_blocks_per_minute:
            self._penalise(peer.addr, "unrequested-block-flood", now)
