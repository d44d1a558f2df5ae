"""Every P2P limit and timer, named, with its default: the one place to change them.

The node builds a `P2PConfig` from its own configuration; tests and the simulator build one
directly (often with shorter timers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Address = tuple[str, int]

PROTOCOL_VERSION = 1
USER_AGENT = "/powlab:0.1.0/"


@dataclass(frozen=True)
class P2PConfig:
    listen: bool = True  # accept inbound peers (--no-listen turns it off)
    listen_port: int = 0  # advertised to peers; 0 = not listening
    connect: tuple[Address, ...] = ()  # --connect: ONLY these peers
    connect_only: bool = False  # set with --connect even while its names are being resolved
    addnode: tuple[Address, ...] = ()  # --addnode: these plus whatever gossip finds
    max_inbound: int = 32
    max_outbound: int = 8
    allow_peers: frozenset[bytes] = field(default_factory=frozenset)  # node ids; empty = all
    peer_ids: tuple[tuple[Address, bytes], ...] = ()  # --connect NODEID@HOST:PORT pins
    ban_seconds: float = 24 * 60 * 60
    misbehavior_threshold: int = 100

    ping_interval: float = 5.0  # also how fast a missed announcement is noticed
    peer_timeout: float = 30.0  # silence after which a peer is dropped
    handshake_timeout: float = 10.0
    hello_retry_interval: float = 0.5  # datagrams get lost: resend handshake steps and hellos
    reconnect_interval: float = 5.0
    stream_hello_timeout: float = 3.0  # an inbound stream must authenticate within this

    # sessions (p2p.session): WireGuard-style limits on what a stranger can make us hold
    half_open_timeout: float = 5.0  # a responder's handshake state lives this long
    max_half_open: int = 64  # handshakes awaiting their third message, all sources together
    max_half_open_per_host: int = 4
    cookie_threshold: int = 8  # half-open handshakes from which an init must echo a cookie
    max_unauthenticated_streams: int = 16  # inbound TCP connections not yet authenticated
    max_unauthenticated_streams_per_host: int = 2
    rekey_after_seconds: float = 120.0  # WireGuard's REKEY_AFTER_TIME
    rekey_after_messages: int = 1 << 20  # datagrams sent under one session before a new one
    reject_after_seconds: float = 180.0  # WireGuard's REJECT_AFTER_TIME: no session lives longer
    handshake_rate_per_host: float = 4.0  # handshakes a host may start per second...
    handshake_burst_per_host: float = 16.0  # ...after a burst of this many

    max_blocks_in_flight_per_peer: int = 32
    block_download_window: int = 1024  # blocks ahead of the tip we fetch at once
    block_stall_timeout: float = 10.0
    headers_timeout: float = 10.0
    tx_request_timeout: float = 5.0
    max_unrequested_blocks_per_minute: int = 60

    msg_rate: float = 2_000.0  # messages per second per peer (token bucket)
    msg_burst: float = 4_000.0
    byte_rate: float = 50_000_000.0  # bytes per second per peer
    byte_burst: float = 100_000_000.0

    max_addr_book: int = 1_000
    max_known_inventory: int = 50_000  # per peer: what it has or we sent it
    max_seen: int = 100_000  # hashes we fetched or rejected recently
    # Replies queued for a peer before its stream is up: max_blocks_in_flight_per_peer blocks of
    # a typical size fit (32 x 250 kB); a getdata that would go past it is not served.
    max_pending_stream_bytes: int = 8_000_000
    user_agent: str = USER_AGENT

    # resource bounds (issue 10)
    max_peer_tx_announcements: int = 5_000  # tx ids one peer announced that we track (as Core)
    max_peer_txs_in_flight: int = 100  # tx getdata items outstanding per peer (as Core)
    max_txs_in_flight: int = 5_000  # tx getdata items outstanding in all
    max_getdata_blocks: int = 128  # blocks one getdata may ask for (we ask for up to 32)
    max_getdata_misses_per_minute: int = 2_000  # getdata items we lack, per peer
    antidos_work_blocks: int = 144  # new headers must reach tip work minus this many blocks' work
    min_chain_work: int = 0  # ... and at least this much work (Core's nMinimumChainWork)
    max_peer_headers_only: int = 10_000  # headers a peer gave us we have no block for (>= 2000)
    max_penalty_records: int = 10_000  # hosts with a misbehaviour score remembered
    max_discouraged: int = 10_000  # discouraged hosts remembered (setban bans are not counted)
    # A host's score and penalties are dropped this long after its last penalty.
    penalty_expiry_seconds: float = 24 * 60 * 60
    # Peers whose request to have blocks pushed to them unannounced (sendcmpct high-bandwidth)
    # we honour; a request past it is served low-bandwidth (header, then getdata) instead.
    max_high_bandwidth_to: int = 16
