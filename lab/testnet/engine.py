"""What the lab needs from a container engine: the interface a testnet backend implements.

Two backends implement it: :class:`lab.testnet.docker.DockerTestnet` (a compose project) and
:class:`lab.testnet.swarm.SwarmTestnet` (a stack on a swarm, over one or several engines).
The process testnet is not a container engine and is driven by lab/testnet/control.py.
Every lab tool above this interface (``testnet status/partition/heal/mine/send/logs/down``,
``powlab rpc --node``, attacks, scenarios, the dashboard) reaches nodes through it, so a new
engine (Kubernetes, say) is one more module implementing :class:`ContainerEngine`:

* **finding nodes**: :meth:`~ContainerEngine.containers` lists one
  :class:`~lab.testnet.docker.NodeContainer` per node (its role, whether it runs, where its
  RPC is published), :meth:`~ContainerEngine.container` finds one by name;
* **talking to them**: :meth:`~ContainerEngine.endpoint` gives a node's RPC URL and its own
  credentials (each node has its own: a cookie, a secret), :meth:`~ContainerEngine.rpc`
  makes one call, through the engine when the node's port cannot be reached;
* **the network's life**: :meth:`~ContainerEngine.up`, :meth:`~ContainerEngine.down`,
  :meth:`~ContainerEngine.wait_ready`, :meth:`~ContainerEngine.fund`,
  :meth:`~ContainerEngine.logs`, :meth:`~ContainerEngine.status`;
* **shaping it**: :meth:`~ContainerEngine.partition` and :meth:`~ContainerEngine.heal`.
  The swarm does these with the nodes' own RPC controls (bans, disconnects), which any
  engine can reuse; compose moves containers between Docker networks.

Restarting a node with other options (``recreate``, extra nodes with ``run_extra``) is an
optional capability: the scenario API checks for it and says clearly when an engine lacks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lab.testnet.docker import NodeContainer

__all__ = ["ENGINE_METHODS", "ContainerEngine"]


@runtime_checkable
class ContainerEngine(Protocol):
    """A testnet whose nodes are containers run by some engine."""

    def up(self, build: bool = True, *, wait: float = 180.0, fund: bool = True) -> None:
        """Start every node (building its image if asked), wait for RPC, fund the wallets."""

    def down(self, purge: bool = False) -> None:
        """Stop every node; with ``purge`` also delete their data and credentials."""

    def containers(self) -> list[NodeContainer]:
        """One entry per node, running or not."""

    def container(self, name: str) -> NodeContainer:
        """The node called ``name`` (or its container's name or id)."""

    def endpoint(self, name: str) -> tuple[str, tuple[str, str]]:
        """The node's RPC URL and its (user, password)."""

    def rpc(self, name: str, method: str, *params: Any, timeout: float = 60.0) -> Any:
        """One RPC call to the node ``name``."""

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Return once every node answers RPC."""

    def fund(self, blocks_per_node: int = 1) -> None:
        """Give every wallet matured coins of its own."""

    def logs(self, node: str, lines: int = 100, follow: bool = False) -> None:
        """Print the node's log (the last ``lines``; keep following with ``follow``)."""

    def status(self) -> list[dict[str, Any]]:
        """One row per node: role, RPC, height, best hash, peers, mempool, hash rate, up."""

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Split the nodes into groups that cannot reach each other."""

    def heal(self, reconnect: bool = True) -> None:
        """Undo :meth:`partition`; with ``reconnect`` have the nodes redial each other."""


# The names above, for tests and for a backend's author to check against.
ENGINE_METHODS = tuple(
    name for name, value in vars(ContainerEngine).items()
    if callable(value) and not name.startswith("_")
)
