"""Relay of transactions, and serving what peers ask for (`getdata`, `notfound`).

Transactions are announced (`inv`, queued per peer and sent a datagram's worth at a time by the
timer), asked for (`getdata`, within per-peer and global in-flight limits) and sent (`tx`), all
over lossy datagrams: an announcement the peer never asked about is repeated, and a request that
went unanswered is retried, with another announcer if there is one. Everything a peer made us
track goes when it disconnects. A double-spend alert (`dsalert`) goes to every peer, and one
that arrives is reported to the node as an event.
"""

from __future__ import annotations

from typing import Any

from consensus.errors import ConsensusError, DecodeError
from consensus.mempool import NON_FINAL
from consensus.replacement import REFUSED_REPLACEMENT_REASONS, NoBetterFeeRate
from consensus.tx import Transaction, decode_transaction
from p2p.actions import DoubleSpendSeen
from p2p.core import ProtocolCore
from p2p.messages import (
    INV_CMPCT_BLOCK,
    INV_TX,
    BlockMsg,
    DoubleSpendAlert,
    GetData,
    Inv,
    InvItem,
    Message,
    NotFound,
    TxMsg,
)
from p2p.peer import BoundedSet, Peer, PeerStatus
from p2p.penalties import HARMLESS_TX_REASONS
from p2p.ratelimit import TokenBucket
from p2p.wire import MAX_DATAGRAM_SIZE

# Transaction relay runs over lossy datagrams: an Inv the peer never asked about is repeated,
# and a GetData that went unanswered is retried (with the same announcer if it is the only one).
TX_ANNOUNCE_RETRIES = 3
INV_PER_DATAGRAM = 35  # 36-byte items: an Inv of 35 stays inside one datagram
TX_REQUEST_ATTEMPTS = 16  # at tx_request_timeout each: ~80 s before a lossy link gives up
REPLY_OVERHEAD = 64  # envelope and frame around a block or transaction, at most


class Relay(ProtocolCore):
    """Transaction announcements, requests and retries; serving getdata; double-spend alerts."""

    # ----------------------------------------------------------------- announcements

    def _on_inv(self, peer: Peer, msg: Inv, now: float) -> None:
        cap = self.config.max_peer_tx_announcements
        announced = peer.tx_announced
        if len(announced) < cap // 2:
            peer.inv_overflow = 0  # we caught up with it: a past burst is forgiven
        overflow = 0
        unknown_block = False
        for item in msg.items:
            peer.known.add(item.hash)
            if item.kind == INV_TX:
                txid = item.hash
                self._tx_unrequested.pop((peer.id, txid), None)
                if txid in announced or txid in self.node.mempool or txid in self._seen_txs:
                    continue
                if len(announced) >= cap:
                    overflow += 1  # not tracked: an honest peer announces it again later
                    continue
                announced[txid] = None
                self._tx_announcers.setdefault(txid, []).append(peer.id)
            elif not self.node.chain.has_block(item.hash):
                unknown_block = True
        if unknown_block:
            # One getheaders for the whole message, however many blocks it names.
            if peer.headers_requested_at:
                self._maybe_request_headers(peer, now)
            else:
                self._send_getheaders(peer, self.node.chain.best_header, now)
        if overflow:
            # Ids past the cap are dropped (an honest peer announces them again later). A burst
            # of up to another cap's worth is free; each further cap's worth, before we catch
            # up, costs the sender: a flood of unknown ids never lets us catch up.
            peer.inv_overflow += overflow
            while peer.inv_overflow >= 2 * cap and peer.status is not PeerStatus.CLOSED:
                peer.inv_overflow -= cap
                self._penalise(peer.addr, "inv-flood", now)
        self._request_txs(peer, now)

    def announce_tx(self, tx: Transaction, now: float) -> None:
        txid = tx.txid
        self._seen_txs.add(txid)
        for peer in self.peers.values():
            if peer.established and txid not in peer.known:
                peer.known.add(txid)
                # Queued, not sent: the timer sends each peer one Inv of many ids (a burst of
                # single-id datagrams overflows receive buffers and loses announcements).
                peer.inv_queue.append(InvItem(INV_TX, txid))
                if len(self._tx_unrequested) < self.config.max_seen:
                    self._tx_unrequested.pop((peer.id, txid), None)  # keep oldest-first order
                    self._tx_unrequested[(peer.id, txid)] = (now, 0)

    def flush_announcements(self) -> None:
        """Send every peer its queued transaction ids, as few datagrams as fit them."""
        for peer in self.peers.values():
            items, peer.inv_queue = peer.inv_queue, []
            for i in range(0, len(items), INV_PER_DATAGRAM):
                self._send(peer, Inv(tuple(items[i : i + INV_PER_DATAGRAM])))

    def _reannounce_txs(self, now: float) -> None:
        # Oldest first (entries are re-inserted when renewed): stop at the first recent one.
        pending = self._tx_unrequested
        resend: dict[int, list[InvItem]] = {}
        renewed = []
        while pending:
            key = next(iter(pending))
            at, tries = pending[key]
            if now - at <= self.config.tx_request_timeout:
                break
            del pending[key]
            peer_id, txid = key
            if peer_id in self.peers and tries < TX_ANNOUNCE_RETRIES and txid in self.node.mempool:
                renewed.append((key, tries + 1))
                resend.setdefault(peer_id, []).append(InvItem(INV_TX, txid))
        for key, tries in renewed:
            pending[key] = (now, tries)
        for peer_id, items in resend.items():
            self.peers[peer_id].inv_queue.extend(items)

    # ----------------------------------------------------------------- requests

    def _tx_slots(self, peer: Peer) -> int:
        """How many more transactions we may ask `peer` for now."""
        cfg = self.config
        return min(
            cfg.max_peer_txs_in_flight - len(peer.txs_in_flight),
            cfg.max_txs_in_flight - len(self._txs_in_flight),
        )

    def _request_txs(self, peer: Peer, now: float) -> None:
        """Ask `peer` for what it announced that nobody is fetching, oldest first, within the
        in-flight limits; the rest waits for a free slot (an answer, a notfound, a timeout)."""
        if not peer.established or len(peer.tx_announced) <= len(peer.txs_in_flight):
            return
        free = self._tx_slots(peer)
        if free <= 0:
            return
        in_flight, mempool, seen = self._txs_in_flight, self.node.mempool, self._seen_txs
        items, stale = [], []
        for txid in peer.tx_announced:
            if txid in in_flight:
                continue
            if txid in mempool or txid in seen:
                stale.append(txid)  # arrived some other way meanwhile
                continue
            items.append(InvItem(INV_TX, txid))
            if len(items) >= free:
                break
        for txid in stale:
            self._forget_tx(txid)
        self._send_tx_requests(peer, items, now)

    def _send_tx_requests(self, peer: Peer, items: list[InvItem], now: float) -> None:
        for item in items:
            self._txs_in_flight[item.hash] = (peer.id, now)
            peer.txs_in_flight.add(item.hash)
            self._tx_attempts[item.hash] = self._tx_attempts.get(item.hash, 0) + 1
        for i in range(0, len(items), 30):
            self._send(peer, GetData(tuple(items[i : i + 30])))

    def _retry_txs(self, now: float) -> None:
        retries: dict[int, list[InvItem]] = {}
        for txid, (peer_id, at) in list(self._txs_in_flight.items()):
            if now - at <= self.config.tx_request_timeout:
                continue
            self._tx_landed(txid)
            announcers = [p for p in self._tx_announcers.get(txid, []) if p in self.peers]
            if not announcers or self._tx_attempts.get(txid, 0) >= (
                TX_REQUEST_ATTEMPTS + len(announcers)
            ):
                self._forget_tx(txid)
                continue
            # Another announcer if there is one; else the same again: a datagram got lost.
            others = [p for p in announcers if p != peer_id] or announcers
            for candidate in others:
                peer = self.peers[candidate]
                if self._tx_slots(peer) > len(retries.get(candidate, ())):
                    retries.setdefault(candidate, []).append(InvItem(INV_TX, txid))
                    break
            # else it stays announced, and is asked for when one of them has a free slot
        for peer_id, items in retries.items():
            self._send_tx_requests(self.peers[peer_id], items, now)
        for peer in list(self.peers.values()):
            self._request_txs(peer, now)
        self._reannounce_txs(now)
        self.flush_announcements()

    def _tx_landed(self, txid: bytes) -> Peer | None:
        """Forget the request for `txid`; returns the peer it was asked of, if still here."""
        request = self._txs_in_flight.pop(txid, None)
        if request is None:
            return None
        peer = self.peers.get(request[0])
        if peer is not None:
            peer.txs_in_flight.discard(txid)
        return peer

    def _forget_tx(self, txid: bytes) -> Peer | None:
        """Stop tracking `txid` (received, or given up on); returns whom we had asked for it."""
        asked = self._tx_landed(txid)
        for peer_id in self._tx_announcers.pop(txid, ()):
            announcer = self.peers.get(peer_id)
            if announcer is not None:
                announcer.tx_announced.pop(txid, None)
        self._tx_attempts.pop(txid, None)
        return asked

    def _drop_announcement(self, peer: Peer, txid: bytes) -> None:
        """`peer` does not have `txid` after all; forget the tx if nobody else announced it."""
        if txid not in peer.tx_announced:
            return
        del peer.tx_announced[txid]
        announcers = self._tx_announcers.get(txid)
        if announcers is not None and peer.id in announcers:
            announcers.remove(peer.id)
            if not announcers:
                self._forget_tx(txid)

    def _forget_peer_txs(self, peer: Peer) -> None:
        """A peer is gone: drop its announcements, requests and pending re-announcements."""
        for txid in peer.txs_in_flight:
            if self._txs_in_flight.get(txid, (None,))[0] == peer.id:
                del self._txs_in_flight[txid]
        peer.txs_in_flight.clear()
        for txid in list(peer.tx_announced):
            self._drop_announcement(peer, txid)
        peer.tx_announced.clear()
        for key in [k for k in self._tx_unrequested if k[0] == peer.id]:
            del self._tx_unrequested[key]

    # ----------------------------------------------------------------- serving

    def _on_getdata(self, peer: Peer, msg: GetData, now: float) -> None:
        cfg = self.config
        items = list(dict.fromkeys(msg.items))  # each thing served once per request
        if sum(1 for item in items if item.kind != INV_TX) > cfg.max_getdata_blocks:
            # We never ask a peer for more than max_blocks_in_flight_per_peer at once.
            self._penalise(peer.addr, "getdata-flood", now)
            return
        missing = []
        for item in items:
            reply: Message | None = None
            if item.kind == INV_TX:
                self._tx_unrequested.pop((peer.id, item.hash), None)
                entry = self.node.mempool.get(item.hash)
                raw = None if entry is None else entry.tx.encode()
            elif item.kind == INV_CMPCT_BLOCK:
                block = self._servable_block(item.hash)
                reply = None if block is None else self._compact_reply(peer, block)
                raw = None if reply is None else self._encode(reply)
            else:
                servable = self._servable(item.hash)
                raw = self.node.chain.get_block_bytes(item.hash) if servable else None
            if raw is None:
                missing.append(item)
                continue
            if not self._reply_fits(peer, len(raw), item.kind != INV_TX):
                # Its stream is not up and the queue is full: refuse rather than hold more.
                self._penalise(peer.addr, "stream-overflow", now)
                return
            peer.known.add(item.hash)
            if item.kind == INV_TX:
                self._send(peer, TxMsg(raw))
            elif reply is not None:  # INV_CMPCT_BLOCK
                self._send(peer, reply, stream=True)
            else:
                self._send(peer, BlockMsg(raw), stream=True)
        if not missing:
            return
        if peer.getdata_misses is None:
            allowance = cfg.max_getdata_misses_per_minute
            peer.getdata_misses = TokenBucket(allowance / 60, allowance, now)
        if not peer.getdata_misses.take(len(missing), now):
            # An honest peer asks for what we announced: a few misses (mined or evicted since).
            self._penalise(peer.addr, "getdata-flood", now)
            return
        for i in range(0, len(missing), INV_PER_DATAGRAM):
            self._send(peer, NotFound(tuple(missing[i : i + INV_PER_DATAGRAM])))

    def _reply_fits(self, peer: Peer, size: int, stream: bool) -> bool:
        """Can a reply of `size` bytes go out, or be queued within max_pending_stream_bytes
        while the peer's stream is not up?"""
        size += REPLY_OVERHEAD
        if peer.stream_id is not None or (not stream and size <= MAX_DATAGRAM_SIZE):
            return True
        return peer.pending_stream_bytes + size <= self.config.max_pending_stream_bytes

    def _on_notfound(self, peer: Peer, msg: NotFound, now: float) -> None:
        for item in msg.items:
            if item.kind == INV_TX:
                if self._txs_in_flight.get(item.hash, (None,))[0] == peer.id:
                    self._tx_landed(item.hash)
                    self._drop_announcement(peer, item.hash)  # others may still have it
            elif self._blocks_in_flight.get(item.hash, (None,))[0] == peer.id:
                self._block_landed(item.hash)
                # Enough work is no proof it has this branch: do not ask it again (it was
                # asked every tick, and now a peer charges misses past an allowance).
                if peer.blocks_lacking is None:
                    peer.blocks_lacking = BoundedSet(self.config.block_download_window)
                peer.blocks_lacking.add(item.hash)
        self._request_txs(peer, now)

    # ----------------------------------------------------------------- transactions and alerts

    def _on_tx(self, peer: Peer, msg: TxMsg, now: float) -> None:
        try:
            tx = decode_transaction(msg.tx, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        txid = tx.txid
        asked = self._forget_tx(txid)
        self._tx_unrequested.pop((peer.id, txid), None)
        peer.known.add(txid)
        if asked is not None:
            self._request_txs(asked, now)  # a slot is free: the next announced one
        if txid in self.node.mempool or txid in self._seen_txs:
            return
        self._seen_txs.add(txid)
        try:
            outcome = self.node.submit_transaction(tx)
        except ConsensusError as exc:
            if exc.reason == NON_FINAL:
                # It may be final at the next block: not remembered as rejected (Bitcoin Core
                # forgets its rejects at every new tip).
                self._seen_txs.discard(txid)
            if isinstance(exc, NoBetterFeeRate):
                pass  # the loser of a race: an honest peer relays what it saw first
            elif exc.reason in REFUSED_REPLACEMENT_REASONS:
                self._penalise(peer.addr, "replacement-rejected", now)
            elif exc.reason not in HARMLESS_TX_REASONS:
                self._penalise(peer.addr, "invalid-tx", now)
            return
        if getattr(outcome, "orphan", False):
            # Ask the sender for the parents (as if it had announced them: the same limits),
            # ahead of its other announcements; the orphan pool retries when they arrive.
            self._seen_txs.discard(txid)
            items = []
            for parent in outcome.missing_parents:
                if parent in self._txs_in_flight:
                    continue
                if parent not in peer.tx_announced:
                    if len(peer.tx_announced) >= self.config.max_peer_tx_announcements:
                        break
                    peer.tx_announced[parent] = None
                    self._tx_announcers.setdefault(parent, []).append(peer.id)
                if len(items) < self._tx_slots(peer):
                    items.append(InvItem(INV_TX, parent))
            self._send_tx_requests(peer, items, now)

    def _on_dsalert(self, peer: Peer, msg: DoubleSpendAlert, now: float) -> None:
        try:
            tx_a = decode_transaction(msg.tx_a, self.params.max_block_size)
            tx_b = decode_transaction(msg.tx_b, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        self._events.append(DoubleSpendSeen(tx_a, tx_b, peer.id))

    def broadcast_double_spend(self, tx_a: Transaction, tx_b: Transaction) -> None:
        msg = DoubleSpendAlert(tx_a.encode(), tx_b.encode())
        for peer in list(self.peers.values()):
            if peer.established:
                self._send(peer, msg)


#: The messages this part handles (`P2PProtocol._handlers` merges every part's table).
HANDLERS: dict[type, Any] = {
    Inv: Relay._on_inv,
    GetData: Relay._on_getdata,
    NotFound: Relay._on_notfound,
    TxMsg: Relay._on_tx,
    DoubleSpendAlert: Relay._on_dsalert,
}
