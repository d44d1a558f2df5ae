"""Compact-block bandwidth modes (BIP152), and who pays for a block relayed before validation.

A node asks at most MAX_HIGH_BANDWIDTH_PEERS peers to push new blocks to it as compact blocks
without announcing them first (`sendcmpct` 1, *high bandwidth*); it tells the others to
announce by header (`sendcmpct` 0, *low bandwidth*), and fetches the compact block with a
`getdata` (INV_CMPCT_BLOCK) when it wants it. As BIP152 suggests, the chosen peers are those
that most recently delivered a block that became our new tip, outbound peers first while
nobody has (a peer we reach by our own choice is harder for an attacker to hold).

To a high-bandwidth peer a node passes a new block on as soon as its header is checked and
the block rebuilt with a matching merkle root, before full validation (Bitcoin Core's
`NewPoWValidBlock`; p2p.compact `_pipeline`), flagged `pipelined` on the wire. If the block
turns out invalid, a peer that pushed it flagged, because we asked it to, only relayed it: it
is not penalised but loses its high-bandwidth slot until it next delivers a valid block (Core
does not punish a peer for an invalid block received as a compact block either). A block sent
unflagged, as a reply to our getdata, or by a peer we did not ask to push, carries its
sender's word that it was validated, and an invalid one costs `invalid-block` as before.

The other direction: a peer is pushed to from its establishment (every node of this network
says which mode it wants at once, so this only covers the moment before its `sendcmpct`
arrives) until it asks for low bandwidth. At most `max_high_bandwidth_to` peers are pushed to;
a request past that is served low bandwidth (the header announcement, then its getdata).
"""

from __future__ import annotations

from typing import Any

import structlog

from consensus.block import Block
from p2p.core import ProtocolCore
from p2p.messages import COMPACT_VERSION, SendCmpct
from p2p.peer import Peer

log = structlog.get_logger("powlab.p2p")

# BIP152: a node asks at most this many peers to push new blocks to it unannounced.
MAX_HIGH_BANDWIDTH_PEERS = 3


class HighBandwidth(ProtocolCore):
    """Choosing the peers that push blocks to us, honouring those that ask us to push, and
    what a peer that pushed an invalid block before validation loses."""

    refused_high_bandwidth = 0  # sendcmpct 1 requests past max_high_bandwidth_to

    # ----------------------------------------------------------------- the peers we ask

    def _hb_peer_established(self, peer: Peer, now: float) -> None:
        """A new peer: pushed to (within the bound) until it asks otherwise, and told at once
        whether we want pushes from it."""
        peer.hb_to = self._hb_to_count() < self.config.max_high_bandwidth_to
        # A host that lost its slot does not win it back by reconnecting, nor a fresh excuse.
        peer.hb_lost = _host(peer) in self._hb_lost_hosts
        self._select_high_bandwidth(now, tell=peer)
        if peer.hb_lost:
            peer.hb_excuse = False

    def _select_high_bandwidth(self, now: float, tell: Peer | None = None) -> None:
        """Ask the best MAX_HIGH_BANDWIDTH_PEERS peers to push, and the others not to; a
        message goes only to the peers whose mode changes (and to `tell`, a new peer)."""
        candidates = [p for p in self.peers.values() if p.established and not p.hb_lost]
        # Most recent deliverer first; before any delivery, outbound before inbound, then the
        # oldest connection (a stable order: no churn of sendcmpct while nothing happens).
        candidates.sort(key=lambda p: (-p.last_block_at, p.inbound, p.id))
        wanted = {p.id for p in candidates[:MAX_HIGH_BANDWIDTH_PEERS]}
        for peer in list(self.peers.values()):
            if not peer.established:
                continue
            want = peer.id in wanted
            if want != peer.hb_from or peer is tell:
                peer.hb_from = want
                # Until our `sendcmpct` 0 reaches it, it pushes as before.
                peer.hb_excuse = not want
                # On the stream: in order (a 0 then a 1 moments later, as deliveries re-rank
                # the peers, must not arrive the other way round) and never lost.
                self._send(peer, SendCmpct(int(want), COMPACT_VERSION), stream=True)

    def _hb_to_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.established and p.hb_to)

    def _block_delivered(self, peer: Peer, now: float) -> None:
        """`peer` handed us a block that became our new tip: it ranks first now."""
        peer.last_block_at = now
        peer.hb_lost = False
        self._hb_lost_hosts.discard(_host(peer))
        self._select_high_bandwidth(now)

    def _lose_high_bandwidth(self, peer: Peer, block: Block, reason: str, now: float) -> None:
        """`peer` pushed us, flagged as relayed before validation, a block that is invalid: it
        only relayed it (the author is whoever sent it unflagged), so no penalty, but it
        is not asked to push again until it delivers a valid block."""
        log.info(
            "pipelined_block_invalid",
            peer=peer.label,
            hash=block.hash.hex(),
            reason=reason,
        )
        peer.hb_lost = True
        self._hb_lost_hosts.add(_host(peer))
        peer.last_block_at = 0.0
        self._select_high_bandwidth(now)
        peer.hb_excuse = False  # used up: the next one costs `invalid-block`

    def _relayed_push(self, peer: Peer, flagged: bool, asked: bool) -> bool:
        """Whether a compact block from `peer` was only relayed (excused if invalid). The flag
        excuses it only when a peer we asked to push pushed it, or one we told to stop that
        may not have heard yet (`hb_excuse`, once): a reply to our getdata, or a push we never
        asked for, vouches for the block. A push from a peer we told to stop means it has not
        heard our `sendcmpct` 0 (a lost datagram): it is said again, the excuse not renewed."""
        if asked:
            return False
        if not peer.hb_from:
            self._send(peer, SendCmpct(0, COMPACT_VERSION), stream=True)
        return flagged and (peer.hb_from or peer.hb_excuse)

    # ----------------------------------------------------------------- the peers that ask us

    def _on_sendcmpct(self, peer: Peer, msg: SendCmpct, now: float) -> None:
        if msg.version != COMPACT_VERSION:
            return  # another version of the protocol: as BIP152, ignored
        if not msg.high_bandwidth:
            peer.hb_to = False
            return
        if peer.hb_to:
            return
        if self._hb_to_count() >= self.config.max_high_bandwidth_to:
            # Pushes cost us upload for blocks the peer may already have: past the bound it
            # is served low bandwidth (announced by header), which is all it needs.
            self.refused_high_bandwidth += 1
            return
        peer.hb_to = True


def _host(peer: Peer) -> bytes:
    """What a lost slot is remembered by: the host, as penalties are (any port, any key)."""
    return peer.addr[0].encode()


#: The messages this part handles (`P2PProtocol._handlers` merges every part's table).
HANDLERS: dict[type, Any] = {
    SendCmpct: HighBandwidth._on_sendcmpct,
}
