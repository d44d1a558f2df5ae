"""``== Network ==``: peers, bans and P2P activity.

``setlinkfault`` is powlab-only: it injects delay, jitter, bandwidth caps and loss on
outgoing P2P traffic for experiments, so it sits with the other P2P controls.
"""

from __future__ import annotations

from typing import Any

from node.config import parse_host_port, parse_peer
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_CLIENT_INVALID_IP_OR_SUBNET,
    RPC_CLIENT_NODE_ALREADY_ADDED,
    RPC_CLIENT_NODE_NOT_ADDED,
    RPC_CLIENT_NODE_NOT_CONNECTED,
    RPC_INVALID_PARAMETER,
    RPCError,
)
from node.rpc.registry import rpc_method
from p2p.config import PROTOCOL_VERSION, USER_AGENT
from p2p.transport import LinkFault


def _peer_address(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, f"invalid address {text!r}: {exc}") from None


@rpc_method
def getpeerinfo(node: NodeAPI) -> list[dict[str, Any]]:
    """Peers: id, address, direction, node id, height, latency, misbehaviour score and
    penalties, bytes sent and received."""
    return node.protocol.peer_info()


@rpc_method
def getconnectioncount(node: NodeAPI) -> int:
    """Number of established peers."""
    return node.protocol.established_count()


@rpc_method
def addnode(node: NodeAPI, node_addr: str, command: str) -> None:
    """add (keep connected), remove, or onetry a peer at [NODEID@]HOST:PORT; a node id
    pins the identity the peer must prove."""
    try:
        pin, addr = parse_peer(node_addr)
    except ValueError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, f"invalid address {node_addr!r}: {exc}") from None
    now = node.clock()
    if command == "add":
        if addr in node.protocol.persistent_addresses():
            raise RPCError(RPC_CLIENT_NODE_ALREADY_ADDED, "Node already added")
        node.protocol.connect(addr, now, persistent=True, node_id=pin)
    elif command == "remove":
        if not node.protocol.forget_persistent(addr):
            raise RPCError(RPC_CLIENT_NODE_NOT_ADDED, "Node has not been added")
    elif command == "onetry":
        node.protocol.connect(addr, now, node_id=pin)
    else:
        raise RPCError(RPC_INVALID_PARAMETER, "command must be add, remove or onetry")
    node.p2p_flush()


@rpc_method
def getaddednodeinfo(node: NodeAPI) -> list[dict[str, Any]]:
    """Peers added with addnode or --connect/--addnode, and whether connected."""
    connected = {p["addr"] for p in node.protocol.peer_info() if p["status"] == "established"}
    return [
        {"addednode": f"{h}:{p}", "connected": f"{h}:{p}" in connected}
        for h, p in node.protocol.persistent_addresses()
    ]


@rpc_method
def getnodeaddresses(node: NodeAPI, count: int = 1) -> list[dict[str, Any]]:
    """Up to `count` (0 = all) addresses from the address book, oldest first: address, port,
    node id, last seen (unix seconds), as Bitcoin Core's (which samples at random)."""
    if count < 0:
        raise RPCError(RPC_INVALID_PARAMETER, "count must be 0 or more")
    records = node.protocol.book.records()
    if count:
        records = records[:count]
    return [
        {"time": r["last_seen"], "address": r["host"], "port": r["port"],
         "node_id": r["node_id"]}
        for r in records
    ]


@rpc_method
def disconnectnode(node: NodeAPI, address: str = "", nodeid: int | None = None) -> None:
    """Disconnect a peer by address (HOST:PORT) or by id."""
    peers = node.protocol.peer_info()
    match = [p for p in peers if (nodeid is not None and p["id"] == nodeid)
             or (address and p["addr"] == address)]
    if not match:
        raise RPCError(RPC_CLIENT_NODE_NOT_CONNECTED, "Node not found in connected nodes")
    for peer in match:
        node.protocol.disconnect(peer["id"], node.clock(), "disconnectnode")
    node.p2p_flush()


@rpc_method
def setban(node: NodeAPI, subnet: str, command: str, bantime: int = 86400) -> None:
    """Ban (add) or unban (remove) a host (IP) for `bantime` seconds."""
    host = subnet.rsplit(":", 1)[0] if subnet.count(":") == 1 else subnet
    if command == "add":
        if bantime <= 0:
            raise RPCError(RPC_INVALID_PARAMETER, "bantime must be positive")
        node.protocol.ban(host, bantime, node.clock())
    elif command == "remove":
        if not node.protocol.book.unban(host):
            raise RPCError(RPC_CLIENT_INVALID_IP_OR_SUBNET, f"{host} is not banned")
    else:
        raise RPCError(RPC_INVALID_PARAMETER, "command must be add or remove")
    node.p2p_flush()


@rpc_method
def listbanned(node: NodeAPI) -> list[dict[str, Any]]:
    """Banned and discouraged (misbehaving) hosts, and until when."""
    return [
        {"address": key, "banned_until": int(until)}
        for key, until in sorted(node.protocol.book.list_banned(node.clock()).items())
    ]


@rpc_method
def clearbanned(node: NodeAPI) -> None:
    """Lift every ban and discouragement."""
    node.protocol.book.clear()


@rpc_method
def setnetworkactive(node: NodeAPI, state: bool) -> bool:
    """Switch all P2P activity on or off; returns the new state."""
    node.protocol.set_network_active(state, node.clock())
    node.p2p_flush()
    return state


@rpc_method
def setlinkfault(node: NodeAPI, fault: dict[str, Any], peer: str | None = None) -> None:
    """Inject delay_ms, jitter_ms, bandwidth_kbps (a cap; bytes queue behind each other)
    and loss (0..1, datagrams only) on outgoing P2P traffic, for all peers or one peer
    (HOST:PORT), for experiments. {} clears it."""
    unknown = set(fault) - {"delay_ms", "jitter_ms", "loss", "bandwidth_kbps"}
    if unknown:
        raise RPCError(RPC_INVALID_PARAMETER, f"unknown fault keys: {sorted(unknown)}")
    try:
        link = LinkFault(**{k: float(v) for k, v in fault.items()})
        link.validate()
    except (TypeError, ValueError) as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
    assert node.p2p is not None
    if peer is None:
        node.p2p.fault = link
    else:
        _peer_address(peer)
        node.p2p.peer_faults[peer] = link


@rpc_method
def getnetworkinfo(node: NodeAPI) -> dict[str, Any]:
    """Version, protocol, whether networking is active, connections, relay fee."""
    return {
        "version": PROTOCOL_VERSION,
        "subversion": USER_AGENT,
        "protocolversion": PROTOCOL_VERSION,
        "networkactive": node.protocol.network_active,
        "connections": node.protocol.established_count(),
        "p2p": node.p2p_addr,
        "node_id": node.protocol.node_id.hex(),
        "relayfee": node.mempool.min_fee_rate,
        "localaddresses": [],
    }
