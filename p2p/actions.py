"""What the protocol state machine tells its shell, and what it needs from the node.

`P2PProtocol.take_actions()` returns actions (bytes to send, streams to open or close) and
`take_events()` events (peers come and gone, penalties, double spends); the shells
(`p2p/transport.py`, `p2p/memory.py`) carry them out. `NodeInterface` is the node's side:
read access to the chain and mempool plus validated, committed writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from consensus.block import Block
from consensus.chainstate import AcceptResult, BlockIndex, ChainState
from consensus.tx import Transaction
from p2p.config import Address


class NodeInterface(Protocol):
    """What the protocol needs from the node: read access plus validated, committed writes."""

    chain: ChainState
    mempool: Any

    def submit_block(self, block: Block) -> AcceptResult:
        """Validate and store `block`. Carry out the actions the protocol queued first: a
        block passed on before validation (p2p.compact `_pipeline`) must leave before the
        node spends its time validating it."""
        ...

    def submit_transaction(self, tx: Transaction) -> Any: ...

    def accept_header(self, header: Any) -> BlockIndex: ...


# ----------------------------------------------------------------- actions and events


@dataclass(frozen=True)
class SendDatagram:
    addr: Address
    data: bytes


@dataclass(frozen=True)
class SendStream:
    stream_id: int
    data: bytes  # already framed


@dataclass(frozen=True)
class OpenStream:
    addr: Address


@dataclass(frozen=True)
class CloseStream:
    stream_id: int


Action = SendDatagram | SendStream | OpenStream | CloseStream


@dataclass(frozen=True)
class PeerConnected:
    peer_id: int
    addr: Address
    inbound: bool
    node_id: bytes


@dataclass(frozen=True)
class PeerDisconnected:
    peer_id: int
    addr: Address
    reason: str


@dataclass(frozen=True)
class PeerRefused:
    addr: Address
    reason: str


@dataclass(frozen=True)
class PeerPenalised:
    addr: Address
    reason: str
    score: int
    discouraged: bool


@dataclass(frozen=True)
class DoubleSpendSeen:
    tx_a: Transaction
    tx_b: Transaction
    peer_id: int | None


Event = PeerConnected | PeerDisconnected | PeerRefused | PeerPenalised | DoubleSpendSeen
