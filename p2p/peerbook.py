"""What the node knows about other nodes: addresses heard of, bans, misbehaviour scores."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass

from p2p.config import Address


@dataclass
class KnownAddress:
    addr: Address
    node_id: bytes
    last_seen: int
    last_attempt: float = 0.0
    failures: int = 0  # dials in a row that never completed a handshake
    connected_once: bool = False
    last_success: float = 0.0  # when a handshake with it last completed (0: never)


# When an address is not worth keeping, after Bitcoin Core's addrman `IsTerrible`: one that
# never answered is dropped after a few failed dials, one that once did after many, and only
# once its last success is old. Without this, an address that died (a node gone, a container
# moved off a network) is redialled for ever, and each dial shows as a peer stuck in its
# handshake. Failures count only while the node itself is well connected (the caller checks,
# as Core counts them only with enough outbound peers): a node that lost its own link must not
# forget everyone it knew and refill its book from whoever reaches it first (an eclipse).
RETRIES_NEVER_CONNECTED = 3
RETRIES_ONCE_CONNECTED = 10
# Core waits 7 days; a lab testnet lives for minutes or hours, so a shorter age.
ONCE_CONNECTED_MIN_AGE = 10 * 60.0


@dataclass
class Penalty:
    reason: str
    score: int
    at: float


class PeerBook:
    """Addresses (bounded), and per host (IP, as in Bitcoin Core): bans, discouragement and
    misbehaviour scores. Every table is bounded: scores and penalties of at most `max_records`
    hosts (the least recently penalised go first), discouragement of at most `max_discouraged`
    hosts (the soonest to expire go first); expired entries are dropped as we go, and a score is
    dropped with its host's discouragement or `penalty_expiry` seconds after its last penalty.
    Bans set by the operator (`setban`) are kept until they expire."""

    def __init__(
        self,
        max_addresses: int,
        threshold: int,
        ban_seconds: float,
        *,
        max_records: int = 10_000,
        max_discouraged: int = 10_000,
        penalty_expiry: float = 24 * 60 * 60,
    ) -> None:
        self.max_addresses = max_addresses
        self.threshold = threshold
        self.ban_seconds = ban_seconds
        self.max_records = max_records
        self.max_discouraged = max_discouraged
        self.penalty_expiry = penalty_expiry
        self.addresses: OrderedDict[Address, KnownAddress] = OrderedDict()
        self.banned: dict[str, float] = {}  # host -> until: setban
        self.discouraged: OrderedDict[str, float] = OrderedDict()  # host -> until, soonest first
        self.scores: OrderedDict[str, int] = OrderedDict()  # host -> score, least recent first
        self.penalties: dict[str, list[Penalty]] = {}  # host -> its recent penalties

    # ----------------------------------------------------------------- addresses

    def add_address(self, addr: Address, node_id: bytes, last_seen: int) -> None:
        known = self.addresses.get(addr)
        if known is not None:
            known.last_seen = max(known.last_seen, last_seen)
            if node_id != bytes(32):
                known.node_id = node_id
            return
        self.addresses[addr] = KnownAddress(addr, node_id, last_seen)
        while len(self.addresses) > self.max_addresses:
            self.addresses.popitem(last=False)

    def note_failure(self, addr: Address, now: float) -> bool:
        """A dial to `addr` gave up before its handshake completed (count it only while this
        node is well connected). True when the address was forgotten because of it."""
        known = self.addresses.get(addr)
        if known is None:
            return False
        known.failures = min(known.failures + 1, RETRIES_ONCE_CONNECTED)
        if known.connected_once:
            terrible = (known.failures >= RETRIES_ONCE_CONNECTED
                        and now - known.last_success >= ONCE_CONNECTED_MIN_AGE)
        else:
            terrible = known.failures >= RETRIES_NEVER_CONNECTED
        if terrible:
            del self.addresses[addr]
        return terrible

    def note_success(self, addr: Address, now: float) -> None:
        """A handshake with `addr` completed: its failures are forgiven."""
        known = self.addresses.get(addr)
        if known is not None:
            known.failures = 0
            known.connected_once = True
            known.last_success = now

    def sample(self, rng: random.Random, count: int) -> list[KnownAddress]:
        pool = list(self.addresses.values())
        return rng.sample(pool, min(count, len(pool)))

    def records(self) -> list[dict[str, object]]:
        """The address table as plain records (oldest first), for `peers.json`."""
        return [
            {"host": k.addr[0], "port": k.addr[1], "node_id": k.node_id.hex(),
             "last_seen": k.last_seen, "failures": k.failures,
             "connected_once": k.connected_once, "last_success": k.last_success}
            for k in self.addresses.values()
        ]

    def load_records(self, records: list[dict[str, object]]) -> int:
        """Add addresses saved by `records` (bad entries skipped); how many were added."""
        added = 0
        for record in records:
            try:
                host, port = str(record["host"]), int(record["port"])  # type: ignore[call-overload]
                node_id = bytes.fromhex(str(record["node_id"]))
                last_seen = int(record["last_seen"])  # type: ignore[call-overload]
                # Older files have neither field.
                failures = int(record.get("failures", 0))  # type: ignore[call-overload]
                connected_once = record.get("connected_once", False) is True
                last_success = float(record.get("last_success", 0.0))  # type: ignore[arg-type]
                if not math.isfinite(last_success):
                    raise ValueError(last_success)
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            if not host or not 0 < port < 65536 or len(node_id) != 32:
                continue
            self.add_address((host, port), node_id, last_seen)
            known = self.addresses.get((host, port))
            if known is not None:
                known.failures = max(0, min(failures, RETRIES_ONCE_CONNECTED - 1))
                known.connected_once = connected_once
                known.last_success = last_success if connected_once else 0.0
            added += 1
        return added

    def candidates(self, now: float, retry_after: float) -> list[KnownAddress]:
        """Addresses worth dialling now: not banned, not tried too recently."""
        return [
            k
            for k in self.addresses.values()
            if not self.is_banned(k.addr, now)
            and now - k.last_attempt >= retry_after * (1 + min(k.failures, 10))
        ]

    # ----------------------------------------------------------------- bans and scores

    def ban(self, host: str, seconds: float, now: float) -> None:
        self.banned[host] = now + seconds

    def unban(self, host: str) -> bool:
        """Lift a host's ban and discouragement (and forget its score)."""
        found = self.banned.pop(host, None) is not None
        found = self.discouraged.pop(host, None) is not None or found
        self._forget(host)
        return found

    def clear(self) -> None:
        """Lift every ban and discouragement and forget every score."""
        self.banned.clear()
        self.discouraged.clear()
        self.scores.clear()
        self.penalties.clear()

    def is_banned(self, addr: Address, now: float) -> bool:
        """Banned (setban) or discouraged (misbehaviour): both by host, whatever the port."""
        host = host_key(addr)
        return self._active(self.banned, host, now) or self._active(self.discouraged, host, now)

    def _active(self, table: dict[str, float], host: str, now: float) -> bool:
        until = table.get(host)
        if until is None:
            return False
        if until <= now:
            del table[host]
            self._forget(host)
            return False
        return True

    def list_banned(self, now: float) -> dict[str, float]:
        self._purge(now)
        for host in [h for h, until in self.banned.items() if until <= now]:
            del self.banned[host]
        merged = dict(self.discouraged)
        for host, until in self.banned.items():
            merged[host] = max(until, merged.get(host, until))
        return merged

    def penalise(self, addr: Address, reason: str, score: int, now: float) -> bool:
        """Record misbehaviour against the address's host; True when the host crossed the
        threshold and is now discouraged (refused, every port of it) for `ban_seconds`."""
        self._purge(now)
        host = host_key(addr)
        recent = self.penalties.setdefault(host, [])
        recent.append(Penalty(reason, score, now))
        del recent[:-20]  # the recent ones are what a user wants to see
        self.scores[host] = self.scores.get(host, 0) + score
        self.scores.move_to_end(host)
        while len(self.scores) > self.max_records:
            oldest, _ = self.scores.popitem(last=False)
            self.penalties.pop(oldest, None)
        if self.scores[host] >= self.threshold:
            self.discouraged[host] = now + self.ban_seconds
            self.discouraged.move_to_end(host)
            while len(self.discouraged) > self.max_discouraged:
                self.discouraged.popitem(last=False)
            return True
        return False

    def score(self, addr: Address) -> int:
        return self.scores.get(host_key(addr), 0)

    def recent_penalties(self, addr: Address) -> list[Penalty]:
        return list(self.penalties.get(host_key(addr), ()))

    def _forget(self, host: str) -> None:
        self.scores.pop(host, None)
        self.penalties.pop(host, None)

    def _purge(self, now: float) -> None:
        """Drop expired discouragements and stale scores (both tables are kept in time order:
        discouragement lasts `ban_seconds` for everyone, scores move to the end when charged)."""
        discouraged = self.discouraged
        while discouraged:
            host, until = next(iter(discouraged.items()))
            if until > now:
                break
            del discouraged[host]
            self._forget(host)
        scores = self.scores
        while scores:
            host = next(iter(scores))
            recent = self.penalties.get(host)
            if recent and now - recent[-1].at < self.penalty_expiry:
                break
            self._forget(host)


def host_key(addr: Address) -> str:
    """Bans, discouragement and scores are per host (IP), whatever the port: a peer cannot
    shed them by coming back from another source port."""
    return addr[0]
