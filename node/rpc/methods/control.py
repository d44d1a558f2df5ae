"""``== Control ==``: the node process (``help`` itself is built into the registry)."""

from __future__ import annotations

from node.interface import NodeAPI
from node.rpc.registry import rpc_method


@rpc_method
def uptime(node: NodeAPI) -> int:
    """Seconds since the node started."""
    return int(node.clock() - node.started_at)


@rpc_method
def stop(node: NodeAPI) -> str:
    """Shut the node down cleanly."""
    node.request_stop()
    return "powlab node stopping"
