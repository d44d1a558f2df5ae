"""``== Control ==``: the node process (``help`` itself is built into the registry)."""

from __future__ import annotations

from node.interface import NodeAPI
from node.rpc.errors import RPC_INVALID_PARAMETER, RPCError
from node.rpc.registry import rpc_method

MAX_MOCK_TIME = 2**32 - 1  # a header's timestamp is a u32


@rpc_method
def uptime(node: NodeAPI) -> int:
    """Seconds since the node started."""
    return int(node.clock() - node.started_at)


@rpc_method
def stop(node: NodeAPI) -> str:
    """Shut the node down cleanly."""
    node.request_stop()
    return "powlab node stopping"


@rpc_method
def setmocktime(node: NodeAPI, timestamp: int) -> None:
    """Fix this node's clock for block templates and the future limit at `timestamp` (Unix
    seconds); 0 gives it back to the system clock. For test networks (powlab has no other);
    peers keep their own clocks."""
    if timestamp < 0 or timestamp > MAX_MOCK_TIME:
        raise RPCError(RPC_INVALID_PARAMETER, f"timestamp must be between 0 and {MAX_MOCK_TIME}")
    node.set_mock_time(timestamp or None)
