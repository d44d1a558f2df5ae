"""Peer-control settings the RPC exposes (added nodes, bans, network switch, link faults).

Until the P2P layer runs, a node has no connections; these settings are still kept, validated
and reported, so scripts written against the RPC behave the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.config import parse_host_port


class PeerControlError(ValueError):
    pass


@dataclass
class LinkFault:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def validate(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise PeerControlError("delay_ms and jitter_ms must not be negative")
        if not 0.0 <= self.loss <= 1.0:
            raise PeerControlError("loss is a probability between 0 and 1")


@dataclass
class PeerControl:
    added: list[str] = field(default_factory=list)
    banned: dict[str, float] = field(default_factory=dict)  # address -> until (unix time)
    network_active: bool = True
    fault: LinkFault = field(default_factory=LinkFault)
    peer_faults: dict[str, LinkFault] = field(default_factory=dict)

    def connection_count(self) -> int:
        return 0

    def add_node(self, addr: str, command: str) -> None:
        try:
            parse_host_port(addr)
        except ValueError as exc:
            raise PeerControlError(f"invalid address {addr!r}: {exc}") from None
        if command == "add":
            if addr in self.added:
                raise PeerControlError(f"node {addr} already added")
            self.added.append(addr)
        elif command == "remove":
            if addr not in self.added:
                raise PeerControlError(f"node {addr} has not been added")
            self.added.remove(addr)
        elif command != "onetry":
            raise PeerControlError("command must be one of add, remove, onetry")

    def set_ban(self, addr: str, command: str, seconds: int, now: float) -> None:
        host = addr.split(":")[0] if addr.count(":") == 1 else addr
        if command == "add":
            if seconds <= 0:
                raise PeerControlError("ban time must be positive")
            self.banned[host] = now + seconds
        elif command == "remove":
            if host not in self.banned:
                raise PeerControlError(f"{host} is not banned")
            del self.banned[host]
        else:
            raise PeerControlError("command must be add or remove")

    def list_banned(self, now: float) -> list[dict[str, object]]:
        self.banned = {h: t for h, t in self.banned.items() if t > now}
        return [{"address": h, "banned_until": int(t)} for h, t in sorted(self.banned.items())]
