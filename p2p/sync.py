"""Header sync and block download.

Headers first: a peer with more work than our best header is asked for headers (`getheaders`
with a locator), and what it sends is stored only if it leads to at least the anti-DoS work
threshold (Bitcoin Core's headers pre-sync, simplified: a full batch below it is held, unstored,
while we ask for the rest of that chain) and within the peer's budget of headers we have no
block for (`max_peer_headers_only`). Blocks on the best header chain are then downloaded from
the peers that have them, a window ahead of our tip, a few in flight per peer; a peer that sits
on a request past `block_stall_timeout` loses it, and three stalls cost the connection.
"""

from __future__ import annotations

from typing import Any

from consensus.block import Block, BlockHeader, decode_block, decode_header
from consensus.chainstate import AcceptResult, BlockIndex, BlockStatus
from consensus.errors import ConsensusError, DecodeError
from consensus.hashing import ZERO_HASH
from consensus.pow import bits_to_target, work_from_target
from consensus.validation import check_header_pow
from p2p.core import ProtocolCore
from p2p.messages import (
    INV_BLOCK,
    INV_CMPCT_BLOCK,
    MAX_HEADERS,
    MAX_LOCATOR,
    BlockMsg,
    GetData,
    GetHeaders,
    Headers,
    InvItem,
)
from p2p.peer import Peer
from p2p.penalties import HARMLESS_BLOCK_REASONS


class HeaderSync(ProtocolCore):
    """Headers (asked for, served, gated), the download queue, block requests and stalls."""

    # ----------------------------------------------------------------- headers

    def _maybe_request_headers(self, peer: Peer, now: float) -> None:
        best = self.node.chain.best_header
        if peer.chainwork <= best.chainwork and peer.best_header_work <= best.chainwork:
            self._request_blocks(now)
            return
        if peer.headers_requested_at is not None and (
            now - peer.headers_requested_at < self.config.headers_timeout
        ):
            return
        self._send_getheaders(peer, best, now)

    def _send_getheaders(self, peer: Peer, start: BlockIndex, now: float) -> None:
        if self._headers_room(peer) < MAX_HEADERS:
            # Its headers we have no block for are at max_peer_headers_only: the timer asks
            # again once downloads make room for a full batch.
            peer.headers_waiting = True
            return
        peer.headers_waiting = False
        peer.headers_requested_at = now
        self._send(peer, GetHeaders(tuple(self.node.chain.locator(start)[:64]), ZERO_HASH))

    def _on_getheaders(self, peer: Peer, msg: GetHeaders, now: float) -> None:
        chain = self.node.chain
        fork = chain.fork_from_locator(list(msg.locator))
        headers = []
        height = fork.height + 1
        while len(headers) < MAX_HEADERS:
            entry = chain.at_height(height)
            if entry is None:
                break
            headers.append(entry.header.encode())
            if entry.hash == msg.stop:
                break
            height += 1
        self._send(peer, Headers(tuple(headers)))

    def _on_headers(self, peer: Peer, msg: Headers, now: float) -> None:
        """Headers are stored only if they lead to at least the anti-DoS work threshold
        (Bitcoin Core's headers pre-sync, simplified: a full batch below it is held, not stored,
        while we ask for the rest of that chain), and only within the peer's budget of headers
        we have no block for (max_peer_headers_only)."""
        requested = peer.headers_requested_at is not None
        peer.headers_requested_at = None
        raws = list(msg.headers)
        headers = [decode_header(raw) for raw in raws]
        if not headers:
            self._request_blocks(now)
            return
        start = self._headers_start(peer, headers[0].prev_hash, now)
        if start is None:
            return
        held, base = start
        full = len(raws) == MAX_HEADERS
        work, new, whole = self._claimed_work(headers, raws, base, len(held))
        full = full and whole
        room = self._headers_room(peer)
        if new and work < self._antidos_work():
            if full:  # else a chain that ends with too little work: nothing to store (as Core)
                self._hold_headers(peer, held, headers, raws, work, new, room, now)
            return
        if new > room:
            if requested:
                peer.headers_waiting = True  # asked again once downloads make room
            else:
                self._penalise(peer.addr, "headers-flood", now)
            return
        self._store_headers(peer, [*held, *raws], full, now)

    def _headers_start(
        self, peer: Peer, prev_hash: bytes, now: float
    ) -> tuple[list[bytes], int] | None:
        """Where a batch of headers starting on `prev_hash` connects: the headers held before
        it (the rest of a low-work run) and the work up to it. None (and the peer charged) if
        it connects nowhere."""
        chain = self.node.chain
        parent = chain.index.get(prev_hash)
        held: list[bytes] = []
        base = 0
        if parent is not None:
            base = parent.chainwork
        elif peer.presync and prev_hash == peer.presync_tail:
            held, base = peer.presync, peer.presync_work  # the rest of a low-work run
        else:
            self._clear_presync(peer)
            self._penalise(peer.addr, "unconnecting-headers", now)
            self._send_getheaders(peer, chain.best_header, now)
            return None
        self._clear_presync(peer)
        return held, base

    def _claimed_work(
        self, headers: list[BlockHeader], raws: list[bytes], work: int, new: int
    ) -> tuple[int, int, bool]:
        """The work the run claims on top of `work` (each header is checked for real when it is
        accepted), and how many headers are new on top of `new`. A run that is not a chain is
        cut (in place) at the first header that does not follow; the flag says it was whole."""
        index = self.node.chain.index
        prev_hash = headers[0].prev_hash
        for n, header in enumerate(headers):
            if header.prev_hash != prev_hash:
                del headers[n:], raws[n:]  # not a chain: the rest is dropped (as before)
                return work, new, False
            prev_hash = header.hash
            work += self._header_work(header.bits)
            new += prev_hash not in index
        return work, new, True

    def _hold_headers(
        self,
        peer: Peer,
        held: list[bytes],
        headers: list[BlockHeader],
        raws: list[bytes],
        work: int,
        new: int,
        room: int,
        now: float,
    ) -> None:
        """A full batch below the anti-DoS threshold, maybe the start of a long fork: hold the
        run, unstored, and ask for the rest."""
        chain = self.node.chain
        if new + MAX_HEADERS > room:
            self._penalise(peer.addr, "low-work-headers", now)
            return
        if chain.check_pow:
            try:
                for header in headers:
                    check_header_pow(header, self.params)
            except ConsensusError:
                self._penalise(peer.addr, "invalid-header", now)
                return
        tail = headers[-1].hash
        peer.presync, peer.presync_tail, peer.presync_work = held + raws, tail, work
        peer.headers_requested_at = now
        locator = (tail, *chain.locator(chain.best_header)[: MAX_LOCATOR - 1])
        self._send(peer, GetHeaders(locator, ZERO_HASH))

    def _store_headers(self, peer: Peer, raws: list[bytes], full: bool, now: float) -> None:
        """Accept a run of headers (the held ones first) and ask for what follows."""
        chain = self.node.chain
        last: BlockIndex | None = None
        for n, raw in enumerate(raws):
            header = decode_header(raw)
            header_hash = header.hash
            known = header_hash in chain.index
            try:
                last = self.node.accept_header(header)
            except ConsensusError as exc:
                if exc.reason == "prev-blk-not-found" and n == 0:
                    self._penalise(peer.addr, "unconnecting-headers", now)
                    self._send_getheaders(peer, chain.best_header, now)
                    return
                if exc.reason in HARMLESS_BLOCK_REASONS:
                    break
                self._penalise(peer.addr, "invalid-header", now)
                return
            peer.known.add(header_hash)
            if peer.blocks_lacking:
                peer.blocks_lacking.discard(header_hash)  # it has it now
            if not known and not last.status & BlockStatus.HAVE_DATA:
                peer.headers_only.add(header_hash)
        if last is not None:
            peer.best_header_work = max(peer.best_header_work, last.chainwork)
            if full:
                self._send_getheaders(peer, last, now)
        self._request_blocks(now)

    def _clear_presync(self, peer: Peer) -> None:
        peer.presync, peer.presync_tail, peer.presync_work = [], b"", 0

    def _header_work(self, bits: int) -> int:
        """The work a header claims by its `bits` (0 if they are out of range)."""
        try:
            target = bits_to_target(bits)
        except ConsensusError:
            return 0
        if target <= 0 or target > self.params.pow_limit:
            return 0
        return work_from_target(target)

    def _antidos_work(self) -> int:
        """Bitcoin Core's GetAntiDoSWorkThreshold: new headers must lead to at least our tip's
        work minus antidos_work_blocks blocks' worth (and min_chain_work): a fork off our chain
        deeper than that costs its sender about as much work as it makes us store."""
        tip = self.node.chain.tip
        behind = self.config.antidos_work_blocks * self._header_work(tip.header.bits)
        return max(self.config.min_chain_work, tip.chainwork - behind)

    def _headers_room(self, peer: Peer) -> int:
        """How many more headers we have no block for `peer` may give us (held ones count)."""
        index = self.node.chain.index
        done = [
            h
            for h in peer.headers_only
            if (entry := index.get(h)) is None or entry.status & BlockStatus.HAVE_DATA
        ]
        peer.headers_only.difference_update(done)
        return self.config.max_peer_headers_only - len(peer.headers_only) - len(peer.presync)

    # ----------------------------------------------------------------- block download

    def _refresh_download_queue(self) -> None:
        chain = self.node.chain
        best = chain.best_header
        if self._download_for == best.hash:
            # Blocks mostly arrive in order: drop the delivered front, not the whole queue.
            queue = self._download_queue
            start = 0
            while start < len(queue) and queue[start].status & BlockStatus.HAVE_DATA:
                start += 1
            if start:
                del queue[:start]
            return
        self._download_for = best.hash
        queue = []
        cursor: BlockIndex | None = best
        while cursor is not None and not chain.is_active(cursor):
            if not cursor.status & BlockStatus.HAVE_DATA:
                queue.append(cursor)
            cursor = cursor.prev
        queue.reverse()
        self._download_queue = queue

    def _request_due_blocks(self, now: float) -> None:
        if self._block_requests_due:
            self._block_requests_due = False
            self._request_blocks(now)

    def _request_blocks(self, now: float) -> None:
        self._refresh_download_queue()
        if not self._download_queue:
            return
        chain = self.node.chain
        limit_height = chain.height + self.config.block_download_window
        per_peer = self.config.max_blocks_in_flight_per_peer
        load = {p.id: p.blocks_in_flight for p in self.peers.values() if p.established}
        free = sum(max(0, per_peer - n) for n in load.values())
        in_flight_now = len(self._blocks_in_flight)
        still_wanted = len(self._download_queue) - in_flight_now
        if not free or (in_flight_now and free < min(per_peer // 2, still_wanted)):
            # Refill in batches while the pipe is still full: one getdata for many blocks
            # instead of a message (and a wakeup on both sides) per block.
            return
        requests: dict[int, list[InvItem]] = {}
        # The one block on our tip that a low-bandwidth peer announced: fetch it compact
        # (BIP152), which costs a few bytes per transaction we already have.
        # Only once: a retry (after a stall, or a compact block that could not be completed)
        # fetches the full block, which needs no further round trip.
        queue = self._download_queue
        compact = (
            not in_flight_now
            and len(queue) == 1
            and queue[0].prev is chain.tip
            and queue[0].hash not in self._compact_tried
        )
        peers = [p for p in self.peers.values() if p.established]
        self.rng.shuffle(peers)
        in_flight = self._blocks_in_flight
        for entry in self._download_queue:
            if entry.height > limit_height or not free:
                break
            if entry.hash in in_flight or entry.status & BlockStatus.HAVE_DATA:
                continue
            candidates = [
                p
                for p in peers
                if max(p.chainwork, p.best_header_work) >= entry.chainwork
                and load[p.id] < self.config.max_blocks_in_flight_per_peer
                and not (p.blocks_lacking and entry.hash in p.blocks_lacking)
            ]
            if not candidates:
                continue
            peer = min(candidates, key=lambda p: load[p.id])
            load[peer.id] += 1
            free -= 1
            self._block_requested(entry.hash, peer, now)
            kind = INV_CMPCT_BLOCK if compact else INV_BLOCK
            requests.setdefault(peer.id, []).append(InvItem(kind, entry.hash))
        for peer_id, items in requests.items():
            self._send(self.peers[peer_id], GetData(tuple(items)))

    def _block_requested(self, block_hash: bytes, peer: Peer, now: float) -> None:
        self._block_landed(block_hash)  # it may be re-requested from another peer
        self._blocks_in_flight[block_hash] = (peer.id, now)
        peer.blocks_in_flight += 1

    def _block_landed(self, block_hash: bytes) -> tuple[int, float] | None:
        """Forget the request for `block_hash` (answered, refused or given up on)."""
        request = self._blocks_in_flight.pop(block_hash, None)
        if request is not None:
            peer = self.peers.get(request[0])
            if peer is not None:
                peer.blocks_in_flight -= 1
        return request

    def _on_block(self, peer: Peer, msg: BlockMsg, now: float) -> None:
        try:
            block = decode_block(msg.block, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-block", now)
            return
        self._process_block(peer, block, now)

    def _process_block(
        self, peer: Peer, block: Block, now: float, pushed: bool = False, relayed: bool = False
    ) -> None:
        """`pushed`: a compact block (in flight only while we fetched its transactions), so
        as unrequested as a full block nobody asked for. `relayed`: pushed before the sender
        validated it, at our request (p2p/bandwidth.py): if invalid, the sender only relayed
        it and loses its high-bandwidth slot instead of being penalised."""
        block_hash = block.hash
        requested = self._block_landed(block_hash)
        peer.known.add(block_hash)
        peer.pending_compact.pop(block_hash, None)
        if requested is None and self.node.chain.has_block(block_hash):
            self._count_unhelpful(peer, now)
            return
        tip = self.node.chain.tip
        result = self.node.submit_block(block)
        if result.status == "invalid":
            if result.reason in HARMLESS_BLOCK_REASONS:
                return
            if relayed:
                self._lose_high_bandwidth(peer, block, result.reason or "", now)
            else:
                self._penalise(peer.addr, "invalid-block", now)
            return
        if result.status == "orphan":
            self._send_getheaders(peer, self.node.chain.best_header, now)
        if (requested is None or pushed) and not self._helps(result):
            self._count_unhelpful(peer, now)
        if result.status == "connected":
            entry = self.node.chain.get(block_hash)
            if entry is not None:
                peer.best_header_work = max(peer.best_header_work, entry.chainwork)
            if entry is not None and entry.prev is tip and pushed:
                # It brought us a new tip first: a high-bandwidth candidate (BIP152).
                self._block_delivered(peer, now)
        self._block_requests_due = True

    def _helps(self, result: AcceptResult) -> bool:
        """A block we wanted: it connected, or it was stored ahead of its parent's data on a
        header chain with more work than our tip (a node catching up gets pushed the new
        tips before it has downloaded what lies between; such a block is reported as a side
        branch until the blocks below it arrive)."""
        if result.status == "connected":
            return True
        if result.status not in ("stored", "side-branch"):
            return False
        entry = self.node.chain.get(result.block_hash)
        return entry is not None and entry.chainwork > self.node.chain.tip.chainwork

    def _resume_headers(self, peer: Peer, now: float) -> None:
        """Ask again for the headers we held off on once downloads made room for a batch."""
        if peer.headers_waiting and self._headers_room(peer) >= MAX_HEADERS:
            peer.headers_waiting = False
            self._maybe_request_headers(peer, now)

    def _check_stalls(self, now: float) -> None:
        """Take back block requests past block_stall_timeout; three stalls cost the peer."""
        for block_hash, (peer_id, at) in list(self._blocks_in_flight.items()):
            # Disconnecting a staller below already dropped the rest of its requests.
            if now - at > self.config.block_stall_timeout and block_hash in self._blocks_in_flight:
                self._block_landed(block_hash)
                stalled = self.peers.get(peer_id)
                if stalled is not None:
                    stalled.stalls += 1
                    if stalled.stalls >= 3:
                        self._disconnect(stalled, "stalling", now)


#: The messages this part handles (`P2PProtocol._handlers` merges every part's table).
HANDLERS: dict[type, Any] = {
    GetHeaders: HeaderSync._on_getheaders,
    Headers: HeaderSync._on_headers,
    BlockMsg: HeaderSync._on_block,
}
