"""Authenticated, encrypted sessions between peers: WireGuard's datagram design over Noise XX.

Sans-IO, like the protocol above it: `SessionTable` takes `(data, addr, now)` and returns the
plaintext of authenticated datagrams; what it wants sent collects in `outbox`, what happened in
`events`. Nothing here reads a clock or a socket.

The handshake is `Noise_XX_25519_ChaChaPoly_SHA256` (p2p.noise). Each node has a fresh X25519
static key per run, certified by its long-term Ed25519 identity (the node id) the way libp2p's
Noise handshake does it: the handshake payload carries the identity key and its signature over
`"powlab-noise-static-key:" ‖ static public key`. The prologue binds the genesis hash, so two
networks (or two sets of consensus parameters) cannot complete a handshake.

Datagrams (first byte = kind; integers big-endian except the Noise nonce):

    1 init      kind, magic (4), genesis hash (32), sender index (4), cookie (16, zero if
                none), e (32), zero padding to 256 bytes
    2 response  kind, sender index, receiver index, Noise message 2 (e, s, identity): 201
    3 finish    kind, receiver index, Noise message 3 (s, identity proof): 165
    4 cookie    kind, receiver index, cookie (16): 21
    5 data      kind, receiver index, counter (8), ChaCha20-Poly1305(payload) with the
                header as associated data: 29 + payload
    6 refusal   kind, receiver index, reason code (1): 6 (another network: magic, genesis)

As in WireGuard: indexes are random 32-bit numbers that route a datagram to its session; the
counter is the AEAD nonce and feeds a sliding replay window; a datagram that fails any check is
dropped silently and counted by reason, never answered, never charged to the source address
(which proves nothing). The init is padded to be the largest handshake datagram, so no
unauthenticated datagram is ever answered with more bytes than it carried. Under load (many
half-open handshakes) an init must echo a cookie, an HMAC of its source address under a secret
that rotates every two minutes (WireGuard's cookie reply, DTLS's HelloVerifyRequest): a spoofer
that cannot receive at the address it forges never gets past the cookie, so it holds no state.
The initiator retransmits init and finish until answered; the responder keeps nothing but the
half-open handshake and never retransmits on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from consensus.keys import PrivateKey, verify_signature
from p2p.config import Address, P2PConfig
from p2p.noise import PROTOCOL_NAME, CipherState, HandshakeState, NoiseError
from p2p.ratelimit import TokenBucket
from p2p.replay import ReplayWindow

KIND_INIT = 1
KIND_RESPONSE = 2
KIND_FINISH = 3
KIND_COOKIE = 4
KIND_DATA = 5
KIND_REFUSAL = 6
REFUSAL_REASONS = {1: "wrong network (magic)", 2: "wrong network (genesis differs)"}

COOKIE_SIZE = 16
KEY_SIZE = 32
TAG_SIZE = 16
IDENTITY_PROOF_SIZE = 32 + 64  # Ed25519 public key, signature
INIT_HEADER = struct.Struct(">B4s32sI16s")
RESPONSE_HEADER = struct.Struct(">BII")
FINISH_HEADER = struct.Struct(">BI")
COOKIE_REPLY = struct.Struct(">BI16s")
DATA_HEADER = struct.Struct(">BIQ")
REFUSAL = struct.Struct(">BIB")
MSG1_SIZE = KEY_SIZE
MSG2_SIZE = KEY_SIZE + (KEY_SIZE + TAG_SIZE) + (IDENTITY_PROOF_SIZE + TAG_SIZE)
MSG3_SIZE = (KEY_SIZE + TAG_SIZE) + (IDENTITY_PROOF_SIZE + TAG_SIZE)
RESPONSE_SIZE = RESPONSE_HEADER.size + MSG2_SIZE
FINISH_SIZE = FINISH_HEADER.size + MSG3_SIZE
INIT_SIZE = 256
#: Bytes a data datagram adds to its payload: the header and the AEAD tag.
SESSION_OVERHEAD = DATA_HEADER.size + TAG_SIZE
CIPHER_SUITE = PROTOCOL_NAME.decode()
PROLOGUE_LABEL = b"powlab-noise-v1"
STATIC_KEY_CONTEXT = b"powlab-noise-static-key:"
COOKIE_SECRET_LIFETIME = 120.0  # seconds a cookie secret is current (then one more as previous)
REKEY_GRACE = 10.0  # the responder of a session rekeys only this much after the initiator would
CONFIRM_INTERVAL = 1.0  # at most one confirmation per second for a repeated finish
MAX_INDEX_TRIES = 16
REFUSAL_LOG_INTERVAL = 60.0  # one refusal event per host per minute, however many inits
REFUSAL_EVENTS_PER_SECOND = 5.0  # all hosts together: spoofed sources cannot flood the log
MAX_REFUSAL_RECORDS = 1_000  # hosts remembered by each per-host table (least recent go first)
MAX_RETIRED_PER_ADDRESS = 2  # superseded sessions still decrypting what was in flight
# Ed25519 points of small order: a signature "verifies" under them for any message, so such a
# key proves nothing (libsodium refuses them the same way). Found by multiplying by 8.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P

if INIT_HEADER.size + MSG1_SIZE > INIT_SIZE or max(RESPONSE_SIZE, FINISH_SIZE) > INIT_SIZE:
    raise AssertionError("the init must be the largest handshake datagram (amplification ≤ 1)")
if max(COOKIE_REPLY.size, REFUSAL.size) > INIT_SIZE:
    raise AssertionError("a cookie reply must not be larger than the init it answers")


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SessionUp:
    """A handshake completed: `addr` proved it holds the identity key `node_id`."""

    addr: Address
    node_id: bytes
    initiator: bool


@dataclass(frozen=True)
class HandshakeRefused:
    """We would not (or could not) complete a handshake with `addr`, for `reason`."""

    addr: Address
    reason: str


SessionEvent = SessionUp | HandshakeRefused


# ----------------------------------------------------------------------------- state


def _prologue(genesis_hash: bytes) -> bytes:
    return PROLOGUE_LABEL + genesis_hash


def _kdf(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


@dataclass(eq=False)
class Session:
    """One completed handshake: transport keys both ways, counters, replay window."""

    addr: Address
    node_id: bytes
    our_index: int
    their_index: int
    initiator: bool
    send: CipherState
    recv: CipherState
    stream_secret: bytes  # stream keys derive from it (p2p.secure_stream)
    created: float
    confirmed: bool  # the responder has shown it holds the keys (initiator side)
    finish: bytes = b""  # initiator: the finish datagram, repeated until confirmed
    finish_digest: bytes = b""  # responder: which finish completed it (repeats get a confirm)
    last_finish_sent: float = 0.0
    last_confirm_sent: float = 0.0
    last_recv: float = 0.0
    send_counter: int = 0
    received: int = 0
    rekey_due: bool = False
    retired_at: float | None = None  # superseded by a newer session at this time
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    stream_nonces: set[bytes] = field(default_factory=set)

    def seal(self, plaintext: bytes, rekey_after_messages: int) -> bytes:
        counter = self.send_counter
        self.send_counter = counter + 1
        if self.send_counter >= rekey_after_messages:
            self.rekey_due = True
        header = DATA_HEADER.pack(KIND_DATA, self.their_index, counter)
        return header + self.send.encrypt_at(counter, header, plaintext)


@dataclass(eq=False)
class _Initiating:
    addr: Address
    index: int
    handshake: HandshakeState
    msg1: bytes
    expected_id: bytes | None
    created: float
    last_sent: float
    cookie: bytes = bytes(COOKIE_SIZE)

    def datagram(self, magic: bytes, genesis_hash: bytes) -> bytes:
        head = INIT_HEADER.pack(KIND_INIT, magic, genesis_hash, self.index, self.cookie)
        head += self.msg1
        return head + bytes(INIT_SIZE - len(head))


@dataclass(eq=False)
class _HalfOpen:
    addr: Address
    index: int
    their_index: int
    handshake: HandshakeState
    response: bytes
    created: float
    proven: bool  # its init echoed a valid cookie: it receives at the address it claims


class SessionTable:
    """Every session and handshake of one node, by address and by index."""

    def __init__(
        self,
        magic: bytes,
        genesis_hash: bytes,
        identity: PrivateKey,
        config: P2PConfig,
        now: float,
        static_private: bytes | None = None,
    ) -> None:
        self.magic = bytes(magic)
        self.genesis_hash = genesis_hash
        self.prologue = _prologue(genesis_hash)
        self.identity = identity
        self.config = config
        self.static_private = static_private or secrets.token_bytes(KEY_SIZE)
        self.static_public = (
            X25519PrivateKey.from_private_bytes(self.static_private).public_key().public_bytes_raw()
        )
        signature = identity.sign(STATIC_KEY_CONTEXT + self.static_public)
        self.identity_proof = identity.public_key + signature
        self.outbox: list[tuple[Address, bytes]] = []
        self.events: list[SessionEvent] = []
        self.current: dict[Address, Session] = {}  # the session we send on
        # A rekey we initiated: we switch to it once the responder shows it has the keys.
        self._pending: dict[Address, Session] = {}
        self.by_index: dict[int, Session] = {}  # every session we still accept data on
        self.initiating: dict[Address, _Initiating] = {}
        self._initiating_by_index: dict[int, _Initiating] = {}
        self.half_open: dict[int, _HalfOpen] = {}
        self._half_open_by_key: dict[tuple[Address, int], _HalfOpen] = {}
        self._cookie_secret = secrets.token_bytes(KEY_SIZE)
        self._previous_cookie_secret = self._cookie_secret
        self._cookie_rotated = now
        self._refused_at: OrderedDict[str, float] = OrderedDict()  # by host
        self._refusal_budget = TokenBucket(
            REFUSAL_EVENTS_PER_SECOND, REFUSAL_EVENTS_PER_SECOND, now
        )
        self._init_budgets: OrderedDict[str, TokenBucket] = OrderedDict()  # by host
        self.drops: Counter[str] = Counter()  # datagrams dropped, by reason
        # by host, least recently failed first: datagrams that failed the AEAD
        self.auth_failures: OrderedDict[str, int] = OrderedDict()
        self.cookie_replies = 0
        self.rekeys: Counter[Address] = Counter()
        self.handshakes_completed = 0

    # ------------------------------------------------------------------ public interface

    def take_events(self) -> list[SessionEvent]:
        events, self.events = self.events, []
        return events

    def take_outbox(self) -> list[tuple[Address, bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def has_session(self, addr: Address) -> bool:
        return addr in self.current

    def session(self, addr: Address) -> Session | None:
        return self.current.get(addr)

    def initiate(self, addr: Address, now: float, expected_id: bytes | None = None) -> None:
        """Start (or keep going) a handshake to `addr`; `expected_id` pins its identity."""
        if addr in self.initiating:
            return
        handshake = HandshakeState(True, self.prologue, self.static_private)
        index = self._new_index()
        pending = _Initiating(
            addr, index, handshake, handshake.write_message(b""), expected_id, now, now
        )
        self.initiating[addr] = pending
        self._initiating_by_index[index] = pending
        self.outbox.append((addr, pending.datagram(self.magic, self.genesis_hash)))

    def seal(self, addr: Address, plaintext: bytes) -> bytes | None:
        """The data datagram carrying `plaintext` to `addr`, or None without a session."""
        session = self.current.get(addr)
        if session is None:
            return None
        return session.seal(plaintext, self.config.rekey_after_messages)

    def close(self, addr: Address) -> None:
        """Forget every session and handshake with `addr`."""
        self.current.pop(addr, None)
        self._pending.pop(addr, None)
        self.rekeys.pop(addr, None)
        for index in [i for i, s in self.by_index.items() if s.addr == addr]:
            del self.by_index[index]
        pending = self.initiating.pop(addr, None)
        if pending is not None:
            self._initiating_by_index.pop(pending.index, None)
        for half in [h for h in self.half_open.values() if h.addr == addr]:
            self._drop_half_open(half)

    def receive(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """Handle one datagram from `addr`: the plaintext of an authenticated data datagram,
        else None (a handshake step, or something dropped and counted)."""
        if not data:
            self.drops["empty"] += 1
            return None
        kind = data[0]
        if kind == KIND_DATA:
            return self._on_data(data, addr, now)
        if kind == KIND_INIT:
            self._on_init(data, addr, now)
        elif kind == KIND_RESPONSE:
            self._on_response(data, addr, now)
        elif kind == KIND_FINISH:
            self._on_finish(data, addr, now)
        elif kind == KIND_COOKIE:
            self._on_cookie(data, addr, now)
        elif kind == KIND_REFUSAL:
            self._on_refusal(data, addr, now)
        else:
            self.drops["unknown-kind"] += 1
        return None

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if now - self._cookie_rotated >= COOKIE_SECRET_LIFETIME:
            self._previous_cookie_secret = self._cookie_secret
            self._cookie_secret = secrets.token_bytes(KEY_SIZE)
            self._cookie_rotated = now
        for pending in list(self.initiating.values()):
            if now - pending.created > cfg.handshake_timeout:
                self._drop_initiating(pending)
            elif now - pending.last_sent >= cfg.hello_retry_interval:
                pending.last_sent = now
                self.outbox.append((pending.addr, pending.datagram(self.magic, self.genesis_hash)))
        for half in list(self.half_open.values()):
            if now - half.created > cfg.half_open_timeout:
                self._drop_half_open(half)
        for session in list(self.by_index.values()):
            self._session_timer(session, now)

    def info(self, addr: Address) -> dict[str, object]:
        """What `getpeerinfo` shows of the session with `addr`."""
        session = self.current.get(addr)
        return {
            "cipher": CIPHER_SUITE if session is not None else None,
            "state": self._state(addr),
            "rekeys": self.rekeys.get(addr, 0),
            "auth_failures": self.auth_failures.get(addr[0], 0),
            "messages_sent": session.send_counter if session else 0,
            "messages_received": session.received if session else 0,
        }

    # ------------------------------------------------------------------ initiator side

    def _on_cookie(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != COOKIE_REPLY.size:
            self.drops["malformed"] += 1
            return
        _, index, cookie = COOKIE_REPLY.unpack(data)
        pending = self._initiating_by_index.get(index)
        if pending is None or pending.addr != addr:
            self.drops["unknown-index"] += 1
            return
        # Kept for the next retransmission rather than answered at once: a stream of forged
        # cookie replies (whoever saw our init knows its index) gets one init per retry
        # interval, not one init per reply.
        pending.cookie = cookie

    def _on_refusal(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != REFUSAL.size:
            self.drops["malformed"] += 1
            return
        _, index, code = REFUSAL.unpack(data)
        pending = self._initiating_by_index.get(index)
        if pending is None or pending.addr != addr or code not in REFUSAL_REASONS:
            self.drops["unknown-index"] += 1
            return
        # Unauthenticated, but only whoever saw our init knows its index.
        self._drop_initiating(pending)
        self._refuse(addr, REFUSAL_REASONS[code], now)

    def _on_response(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != RESPONSE_SIZE:
            self.drops["malformed"] += 1
            return
        _, their_index, index = RESPONSE_HEADER.unpack_from(data)
        pending = self._initiating_by_index.get(index)
        if pending is None or pending.addr != addr:
            self.drops["unknown-index"] += 1
            return
        try:
            payload = pending.handshake.read_message(data[RESPONSE_HEADER.size :])
        except NoiseError:
            # A failed read leaves the handshake as it was: the genuine response still works.
            self._auth_failed(addr)
            return
        node_id = self._verify_proof(pending.handshake, payload)
        if node_id is None:
            self._auth_failed(addr)
            self._drop_initiating(pending)
            return
        if pending.expected_id is not None and node_id != pending.expected_id:
            self._drop_initiating(pending)
            self._refuse(addr, "node id is not the one pinned with --connect", now)
            return
        message3 = pending.handshake.write_message(self.identity_proof)
        finish = FINISH_HEADER.pack(KIND_FINISH, their_index) + message3
        self._drop_initiating(pending)
        session = self._install(pending.handshake, addr, node_id, pending.index, their_index, now)
        session.finish = finish
        session.last_finish_sent = now
        self.outbox.append((addr, finish))

    # ------------------------------------------------------------------ responder side

    def _on_init(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != INIT_SIZE:
            self.drops["malformed"] += 1
            return
        _, magic, genesis_hash, their_index, cookie = INIT_HEADER.unpack_from(data)
        code = 1 if magic != self.magic else 2 if genesis_hash != self.genesis_hash else 0
        if code:
            # Not misbehaviour, another network: say so (in fewer bytes than the init).
            self.drops["wrong-network"] += 1
            if addr not in self.current and addr not in self.initiating:
                # Unauthenticated: from an address that proved it is on our network (or that
                # we are dialling, whose own answer will tell) it is a spoof, not news.
                self._refuse(addr, REFUSAL_REASONS[code], now)
            self.outbox.append((addr, REFUSAL.pack(KIND_REFUSAL, their_index, code)))
            return
        repeat = self._half_open_by_key.get((addr, their_index))
        if repeat is not None:
            # A retransmitted init: our response was lost. The same bytes again, no new state.
            self.outbox.append((addr, repeat.response))
            return
        done = self.current.get(addr)
        if done is not None and not done.initiator and done.their_index == their_index:
            # A copy of the init of the session we already have, arriving late: no new state.
            self.drops["duplicate"] += 1
            return
        if not self._admit_init(cookie, addr, their_index, now):
            return
        handshake = HandshakeState(False, self.prologue, self.static_private)
        start = INIT_HEADER.size
        try:
            handshake.read_message(data[start : start + MSG1_SIZE])
            message2 = handshake.write_message(self.identity_proof)
        except NoiseError:
            self.drops["malformed"] += 1
            return
        index = self._new_index()
        response = RESPONSE_HEADER.pack(KIND_RESPONSE, index, their_index) + message2
        half = _HalfOpen(addr, index, their_index, handshake, response, now,
                         self._cookie_valid(cookie, addr))
        self.half_open[index] = half
        self._half_open_by_key[(addr, their_index)] = half
        self.outbox.append((addr, response))

    def _admit_init(self, cookie: bytes, addr: Address, their_index: int, now: float) -> bool:
        """Whether a (new) init may have a half-open handshake, making room if it proved
        its address with a cookie. Under load, or once its host holds its share of half-open
        handshakes, an init must echo a cookie: a spoofer forging a victim's address never
        gets one, so it can neither fill the table nor lock that victim out."""
        cfg = self.config
        host = addr[0]
        mine = [h for h in self.half_open.values() if h.addr[0] == host]
        host_full = len(mine) >= cfg.max_half_open_per_host
        proven = self._cookie_valid(cookie, addr)
        if (host_full or len(self.half_open) >= cfg.cookie_threshold) and not proven:
            self.cookie_replies += 1
            cookie_now = self._cookie(addr, self._cookie_secret)
            self.outbox.append((addr, COOKIE_REPLY.pack(KIND_COOKIE, their_index, cookie_now)))
            return False
        if not self._init_budget(host, now).take(1, now):
            self.drops["handshake-rate"] += 1
            return False
        if host_full:
            self._drop_half_open(min(mine, key=lambda h: (h.proven, h.created)))
        if len(self.half_open) >= cfg.max_half_open:
            # Full of handshakes that proved their addresses: a random one makes room, so
            # whoever holds the table cannot keep a newcomer out.
            unproven = [h for h in self.half_open.values() if not h.proven]
            self._drop_half_open(secrets.choice(unproven or list(self.half_open.values())))
            self.drops["handshake-evicted"] += 1
        return True

    def _init_budget(self, host: str, now: float) -> TokenBucket:
        """How many handshakes a host may start: each costs us two X25519 operations."""
        budgets = self._init_budgets
        bucket = budgets.get(host)
        if bucket is None:
            cfg = self.config
            bucket = TokenBucket(cfg.handshake_rate_per_host, cfg.handshake_burst_per_host, now)
            budgets[host] = bucket
            while len(budgets) > MAX_REFUSAL_RECORDS:
                budgets.popitem(last=False)
        budgets.move_to_end(host)
        return bucket

    def _on_finish(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != FINISH_SIZE:
            self.drops["malformed"] += 1
            return
        _, index = FINISH_HEADER.unpack_from(data)
        half = self.half_open.get(index)
        if half is None:
            self._repeated_finish(index, data, addr, now)
            return
        if half.addr != addr:
            self.drops["address-mismatch"] += 1
            return
        try:
            payload = half.handshake.read_message(data[FINISH_HEADER.size :])
        except NoiseError:
            self._auth_failed(addr)  # the handshake is unchanged: the genuine finish still works
            return
        self._drop_half_open(half)
        node_id = self._verify_proof(half.handshake, payload)
        if node_id is None:
            self._auth_failed(addr)
            return
        session = self._install(half.handshake, addr, node_id, index, half.their_index, now)
        session.finish_digest = hashlib.sha256(data).digest()
        self._confirm(session, now)

    def _repeated_finish(self, index: int, data: bytes, addr: Address, now: float) -> None:
        """The initiator did not see our confirmation: confirm again (a keepalive under the
        session, smaller than the finish), at most once a second."""
        session = self.by_index.get(index)
        if (
            session is None
            or session.initiator
            or session.addr != addr
            or session.finish_digest != hashlib.sha256(data).digest()
        ):
            self.drops["unknown-index"] += 1
            return
        if now - session.last_confirm_sent >= CONFIRM_INTERVAL:
            self._confirm(session, now)

    def _confirm(self, session: Session, now: float) -> None:
        session.last_confirm_sent = now
        self.outbox.append((session.addr, session.seal(b"", self.config.rekey_after_messages)))

    # ------------------------------------------------------------------ data

    def _on_data(self, data: bytes, addr: Address, now: float) -> bytes | None:
        if len(data) < SESSION_OVERHEAD:
            self.drops["malformed"] += 1
            return None
        _, index, counter = DATA_HEADER.unpack_from(data)
        session = self.by_index.get(index)
        if session is None:
            self.drops["unknown-session"] += 1
            return None
        if session.addr != addr:
            self.drops["address-mismatch"] += 1
            return None
        if not session.replay.check(counter):
            self.drops["replay"] += 1
            return None
        header = data[: DATA_HEADER.size]
        try:
            plaintext = session.recv.decrypt_at(counter, header, data[DATA_HEADER.size :])
        except NoiseError:
            self._auth_failed(addr)
            return None
        session.replay.mark(counter)
        session.last_recv = now
        session.received += 1
        if not session.confirmed:
            session.confirmed = True
            session.finish = b""
            if self._pending.get(addr) is session:
                del self._pending[addr]
                self._supersede(session, now)
        return plaintext or None  # an empty payload is a keepalive / confirmation

    # ------------------------------------------------------------------ timers

    def _session_timer(self, session: Session, now: float) -> None:
        cfg = self.config
        if session.retired_at is not None:
            if now - session.retired_at > cfg.handshake_timeout:
                self.by_index.pop(session.our_index, None)
            return
        idle_since = max(session.last_recv, session.created)
        if (
            now - idle_since > 2 * cfg.peer_timeout
            or (not session.confirmed and now - session.created > cfg.handshake_timeout)
            or now - session.created > cfg.reject_after_seconds  # WireGuard's REJECT_AFTER_TIME
        ):
            self._retire(session, now)
            self.by_index.pop(session.our_index, None)
            if self._pending.get(session.addr) is session:
                del self._pending[session.addr]
            return
        if session.finish and now - session.last_finish_sent >= cfg.hello_retry_interval:
            session.last_finish_sent = now
            self.outbox.append((session.addr, session.finish))
        age = now - session.created
        rekey_at = cfg.rekey_after_seconds + (0.0 if session.initiator else REKEY_GRACE)
        if (
            (session.rekey_due or age >= rekey_at)
            and session.confirmed
            # The peer takes our rekey of a session it initiated less than handshake_timeout
            # ago for a simultaneous open, and keeps its own if its id is the smaller: wait.
            and (
                session.initiator
                or age >= cfg.handshake_timeout
                or self.identity.public_key < session.node_id
            )
            and self.current.get(session.addr) is session
            and session.addr not in self._pending
        ):
            self.initiate(session.addr, now, expected_id=session.node_id)

    # ------------------------------------------------------------------ helpers

    def _install(
        self,
        handshake: HandshakeState,
        addr: Address,
        node_id: bytes,
        our_index: int,
        their_index: int,
        now: float,
    ) -> Session:
        i2r, r2i = handshake.split()
        initiator = handshake.initiator
        keys = (i2r.key or b"") + (r2i.key or b"")
        session = Session(
            addr=addr,
            node_id=node_id,
            our_index=our_index,
            their_index=their_index,
            initiator=initiator,
            send=i2r if initiator else r2i,
            recv=r2i if initiator else i2r,
            stream_secret=_kdf(keys, b"powlab-stream" + handshake.handshake_hash),
            created=now,
            confirmed=not initiator,
            last_recv=now,
        )
        self.by_index[our_index] = session
        self.handshakes_completed += 1
        old = self.current.get(addr)
        if old is None or old.node_id != node_id:
            # A first session, or another node now answers at this address (a restart with
            # a new identity): the new session is the one to use.
            if old is not None:
                self._retire(old, now)
            self.current[addr] = session
        elif initiator and not session.confirmed:
            # A rekey (or the second of a simultaneous open) we initiated: it replaces the
            # current session once the responder has shown it holds the keys.
            self._pending[addr] = session
        else:
            self._supersede(session, now)
        self.events.append(SessionUp(addr, node_id, initiator))
        return session

    def _supersede(self, session: Session, now: float) -> None:
        """Make `session` current, unless the current one is its twin: both sides dialled (or
        rekeyed) at once, making one session each way. Both ends keep the one whose initiator
        has the smaller node id, so they agree without another message."""
        old = self.current.get(session.addr)
        if (
            old is not None
            and old is not session
            and old.initiator != session.initiator
            and now - old.created < self.config.handshake_timeout
            and old.initiator == (self.identity.public_key < session.node_id)
        ):
            self._retire(session, now)
            return
        self._switch_to(session, now)

    def _switch_to(self, session: Session, now: float) -> None:
        old = self.current.get(session.addr)
        if old is not None and old is not session:
            self._retire(old, now)
            self.rekeys[session.addr] += 1
        self.current[session.addr] = session

    def _retire(self, session: Session, now: float) -> None:
        """Stop sending on `session`; it still decrypts what was already in flight for a
        while (WireGuard keeps its previous keypair the same way)."""
        if session.retired_at is None:
            session.retired_at = now
        if self.current.get(session.addr) is session:
            del self.current[session.addr]
        retired = sorted(
            (s for s in self.by_index.values() if s.addr == session.addr and s.retired_at),
            key=lambda s: s.retired_at or 0.0,
        )
        for old in retired[:-MAX_RETIRED_PER_ADDRESS]:
            del self.by_index[old.our_index]

    def _verify_proof(self, handshake: HandshakeState, payload: bytes) -> bytes | None:
        remote_static = handshake.remote_static
        if len(payload) != IDENTITY_PROOF_SIZE or remote_static is None:
            return None
        node_id, signature = payload[:32], payload[32:]
        if _small_order(node_id):
            return None
        if not verify_signature(node_id, signature, STATIC_KEY_CONTEXT + remote_static):
            return None
        return node_id

    def _cookie(self, addr: Address, secret: bytes) -> bytes:
        return hmac.new(secret, f"{addr[0]}|{addr[1]}".encode(), hashlib.sha256).digest()[
            :COOKIE_SIZE
        ]

    def _cookie_valid(self, cookie: bytes, addr: Address) -> bool:
        return any(
            hmac.compare_digest(cookie, self._cookie(addr, secret))
            for secret in (self._cookie_secret, self._previous_cookie_secret)
        )

    def _new_index(self) -> int:
        for _ in range(MAX_INDEX_TRIES):
            index = secrets.randbits(32)
            if (
                index not in self.by_index
                and index not in self.half_open
                and index not in self._initiating_by_index
            ):
                return index
        raise RuntimeError("no free session index")  # 2^32 indexes, a few hundred in use

    def _drop_initiating(self, pending: _Initiating) -> None:
        if self.initiating.get(pending.addr) is pending:
            del self.initiating[pending.addr]
        self._initiating_by_index.pop(pending.index, None)

    def _drop_half_open(self, half: _HalfOpen) -> None:
        self.half_open.pop(half.index, None)
        self._half_open_by_key.pop((half.addr, half.their_index), None)

    def _auth_failed(self, addr: Address) -> None:
        self.drops["auth-failed"] += 1
        failures = self.auth_failures
        host = addr[0]
        failures[host] = failures.get(host, 0) + 1
        failures.move_to_end(host)
        while len(failures) > MAX_REFUSAL_RECORDS:
            failures.popitem(last=False)

    def _refuse(self, addr: Address, reason: str, now: float) -> None:
        host = addr[0]
        last = self._refused_at.get(host)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        if not self._refusal_budget.take(1, now):
            self.drops["refusal-unlogged"] += 1
            return
        self._refused_at[host] = now
        self._refused_at.move_to_end(host)
        while len(self._refused_at) > MAX_REFUSAL_RECORDS:
            self._refused_at.popitem(last=False)
        self.events.append(HandshakeRefused(addr, reason))

    def _state(self, addr: Address) -> str:
        session = self.current.get(addr)
        if session is not None:
            return "established" if session.confirmed else "confirming"
        if addr in self.initiating:
            return "initiating"
        return "none"


def _small_order(public_key: bytes) -> bool:
    """Whether an Ed25519 public key encodes a point of small order (or no point at all)."""
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _P:
        return True  # not canonical
    x_squared = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x_squared, (_P + 3) // 8, _P)
    if (x * x - x_squared) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if (x * x - x_squared) % _P:
        return True  # not on the curve
    if x & 1 != public_key[31] >> 7:
        x = _P - x
    for _ in range(3):  # [8]P by doubling
        xx, yy = x * x % _P, y * y % _P
        dxy = _D * xx * yy % _P
        x, y = (2 * x * y * pow(1 + dxy, _P - 2, _P) % _P,
                (yy + xx) * pow(1 - dxy, _P - 2, _P) % _P)
    return x == 0 and y == 1
