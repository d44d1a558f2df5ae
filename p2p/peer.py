"""One peer's state: handshake progress, what it has, what we asked it for, its budget."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from p2p.config import Address, P2PConfig
from p2p.ratelimit import TokenBucket


class PeerStatus(Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class BoundedSet:
    """Insertion-ordered set that forgets its oldest members past `limit`."""

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[bytes, None] = OrderedDict()

    def add(self, item: bytes) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        if len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def discard(self, item: bytes) -> None:
        self._items.pop(item, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class PartialBlock:
    """A compact block waiting for the transactions we could not find in our mempool."""

    header: bytes
    txs: list[Any]  # Transaction from our mempool, bytes from the wire, None while missing
    missing: list[int]
    requested_at: float
    relayed: bool = False  # pushed flagged pipelined by a peer we asked to push


@dataclass(eq=False)
class Peer:
    id: int
    addr: Address  # where its datagrams come from and go to (its listening socket)
    inbound: bool
    created: float
    config: P2PConfig
    status: PeerStatus = PeerStatus.HANDSHAKE
    node_id: bytes | None = None  # the identity its session proved (p2p.session)
    hello_received: bool = False
    version: int = 0
    user_agent: str = ""
    listen_port: int = 0
    height: int = 0
    chainwork: int = 0
    tip: bytes = b""
    last_recv: float = 0.0
    last_hello_sent: float = 0.0
    last_ping_sent: float = 0.0
    ping_nonce: int | None = None
    latency_ms: float | None = None
    bytes_sent: int = 0
    bytes_recv: int = 0
    connected_at: float = 0.0
    headers_requested_at: float | None = None
    best_header_work: int = 0  # most work of any header it sent us
    stalls: int = 0
    blocks_in_flight: int = 0  # block requests to it not yet answered
    stream_id: int | None = None
    stream_requested: bool = False
    stream_reopen_at: float | None = None  # a lost stream is redialled then (see p2p.streams)
    pending_stream: list[bytes] = field(default_factory=list)  # envelopes until the stream is up
    pending_stream_bytes: int = 0
    pending_compact: dict[bytes, PartialBlock] = field(default_factory=dict)
    inv_queue: list[Any] = field(default_factory=list)  # InvItems to announce at the next tick
    unhelpful_blocks: deque[float] = field(default_factory=deque)
    known: BoundedSet = field(init=False)
    msg_bucket: TokenBucket = field(init=False)
    byte_bucket: TokenBucket = field(init=False)
    # Resource bounds (issue 10): what this peer makes us track, each with a limit in P2PConfig.
    tx_announced: dict[bytes, None] = field(default_factory=dict)  # tx ids it announced, in order
    txs_in_flight: set[bytes] = field(default_factory=set)  # tx ids we asked it for
    inv_overflow: int = 0  # tx ids announced past max_peer_tx_announcements, not yet charged
    getdata_misses: TokenBucket | None = None  # max_getdata_misses_per_minute (made when needed)
    blocks_lacking: BoundedSet | None = None  # blocks it answered notfound (made when needed)
    headers_only: set[bytes] = field(default_factory=set)  # its headers we have no block for
    headers_waiting: bool = False  # a getheaders held back until downloads make room
    presync: list[bytes] = field(default_factory=list)  # low-work headers held, not yet stored
    presync_tail: bytes = b""  # the last of them
    presync_work: int = 0  # the chainwork they claim to reach
    # Compact-block bandwidth modes (BIP152, p2p/bandwidth.py).
    hb_to: bool = False  # it asked us to push new blocks to it unannounced (we honour it)
    hb_from: bool = False  # we asked it to push new blocks to us unannounced
    hb_lost: bool = False  # it pushed us an invalid pipelined block: not re-selected until it
    # delivers a valid new block
    # We told it `sendcmpct` 0, which may be lost or cross a push of its own: it may still
    # push to us in good faith, so one flagged invalid push from it is excused all the same.
    hb_excuse: bool = False
    last_block_at: float = 0.0  # when it last delivered a block that became our new tip

    def __post_init__(self) -> None:
        self.known = BoundedSet(self.config.max_known_inventory)
        self.msg_bucket = TokenBucket(self.config.msg_rate, self.config.msg_burst, self.created)
        self.byte_bucket = TokenBucket(self.config.byte_rate, self.config.byte_burst, self.created)
        self.last_recv = self.created

    @property
    def established(self) -> bool:
        return self.status is PeerStatus.ESTABLISHED

    @property
    def label(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def advertised_address(self) -> Address | None:
        return (self.addr[0], self.listen_port) if self.listen_port else None
