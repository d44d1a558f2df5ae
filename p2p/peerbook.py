"""What the node knows about other nodes: addresses heard of, bans, misbehaviour scores."""

from __future__ import annotations

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
    failures: int = 0


@dataclass
class Penalty:
    reason: str
    score: int
    at: float


class PeerBook:
    def __init__(self, max_addresses: int, threshold: int, ban_seconds: float) -> None:
        self.max_addresses = max_addresses
        self.threshold = threshold
        self.ban_seconds = ban_seconds
        self.addresses: OrderedDict[Address, KnownAddress] = OrderedDict()
        self.banned: dict[str, float] = {}  # host -> until
        self.scores: dict[str, int] = {}  # host -> misbehaviour score
        self.penalties: dict[str, list[Penalty]] = {}

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

    def sample(self, rng: random.Random, count: int) -> list[KnownAddress]:
        pool = list(self.addresses.values())
        return rng.sample(pool, min(count, len(pool)))

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
        return self.banned.pop(host, None) is not None

    def is_banned(self, addr: Address, now: float) -> bool:
        """Banned by host (setban, as in bitcoind) or discouraged by address (misbehaviour:
        several nodes of a local testnet often share one host)."""
        return any(self._active_ban(key, now) for key in (addr[0], address_key(addr)))

    def _active_ban(self, key: str, now: float) -> bool:
        until = self.banned.get(key)
        if until is None:
            return False
        if until <= now:
            del self.banned[key]
            self.scores.pop(key, None)
            return False
        return True

    def list_banned(self, now: float) -> dict[str, float]:
        for host in [h for h, until in self.banned.items() if until <= now]:
            del self.banned[host]
        return dict(self.banned)

    def penalise(self, addr: Address, reason: str, score: int, now: float) -> bool:
        """Record misbehaviour; True when the address crossed the threshold and is now
        discouraged (refused) for `ban_seconds`."""
        key = address_key(addr)
        self.penalties.setdefault(key, []).append(Penalty(reason, score, now))
        del self.penalties[key][:-20]  # the recent ones are what a user wants to see
        self.scores[key] = self.scores.get(key, 0) + score
        if self.scores[key] >= self.threshold:
            self.ban(key, self.ban_seconds, now)
            return True
        return False

    def score(self, addr: Address) -> int:
        return self.scores.get(address_key(addr), 0)

    def recent_penalties(self, addr: Address) -> list[Penalty]:
        return list(self.penalties.get(address_key(addr), ()))


def address_key(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"
