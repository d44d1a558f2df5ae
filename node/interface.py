"""What the RPC methods and the miner use of the node, as `typing.Protocol`s.

`node.daemon.Node` implements `NodeAPI` structurally (it does not inherit from it), and
`node.miner.miner.Miner` implements `MinerAPI`. The RPC methods (`node.rpc.methods`) and the
miner import these protocols, never `node.daemon`, so the daemon can import them without an
import cycle. A method that needs something of the node not listed here adds it here first.

This module imports only data and component types (consensus, p2p, node.config, node.wallet,
node.miner.pool), none of which import it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from consensus.block import Block
from consensus.chainstate import AcceptResult, ChainState
from consensus.mempool import AcceptOutcome, Mempool
from consensus.params import ChainParams
from consensus.tx import Transaction
from consensus.txstatus import TxStatus
from consensus.update import AddressIndexReader
from node.config import NodeConfig
from node.miner.pool import MinerPool
from node.wallet import Wallet
from p2p.protocol import P2PProtocol
from p2p.transport import P2PService


class MiningHost(Protocol):
    """What the miner needs of the node: the chain and mempool to build templates from, the
    time, and the way in for the blocks it finds."""

    @property
    def params(self) -> ChainParams: ...

    @property
    def chain(self) -> ChainState: ...

    @property
    def mempool(self) -> Mempool: ...

    def now(self) -> int: ...

    def submit_block(self, block: Block) -> AcceptResult: ...

    async def committed(self) -> None:
        """Until every change accepted so far is written to the store (StorageError if a
        commit failed): the store commits off the event loop."""


class MinerAPI(Protocol):
    """What the RPC methods (and metrics) use of the miner."""

    @property
    def hashrate(self) -> float | None:
        """The configured cap in hashes per second (None: unlimited)."""

    @property
    def enabled(self) -> bool:
        """Whether continuous mining is on."""

    @property
    def blocks_found(self) -> int: ...

    @property
    def pool(self) -> MinerPool | None: ...

    def hashrate_measured(self) -> float: ...

    async def set_mining(self, enabled: bool, hashrate: float | None = None) -> None: ...

    async def generate(
        self, count: int, payout_pkh: bytes, txs: Sequence[Transaction] | None = None
    ) -> list[bytes]: ...

    async def solve(self, payout_pkh: bytes, txs: Sequence[Transaction] | None) -> Block: ...


class NodeAPI(MiningHost, Protocol):
    """What the RPC methods use of the node."""

    # -- components and settings
    @property
    def config(self) -> NodeConfig: ...

    @property
    def wallet(self) -> Wallet: ...

    @property
    def miner(self) -> MinerAPI: ...

    @property
    def finality_depth(self) -> int: ...

    @property
    def address_index(self) -> AddressIndexReader | None:
        """The on-disk address index when the node runs with --addressindex, else None."""

    # -- time
    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def started_at(self) -> float: ...

    def set_mock_time(self, timestamp: int | None) -> None: ...

    # -- peer-to-peer
    @property
    def p2p(self) -> P2PService | None: ...

    @property
    def p2p_addr(self) -> str: ...

    @property
    def protocol(self) -> P2PProtocol: ...

    def p2p_flush(self) -> None: ...

    # -- chain changes
    def invalidate_block(self, block_hash: bytes) -> AcceptResult: ...

    def reconsider_block(self, block_hash: bytes) -> AcceptResult: ...

    # -- transactions
    def submit_transaction(self, tx: Transaction) -> AcceptOutcome: ...

    def find_transaction(self, txid: bytes) -> Transaction | None: ...

    def tx_status(self, txid: bytes) -> TxStatus: ...

    def watch(self, txid: bytes) -> None: ...

    def double_spends_of(self, txid: bytes) -> set[bytes]: ...

    def finality_conflicts_of(self, txid: bytes, status: TxStatus) -> list[dict[str, Any]]: ...

    def accepted_zero_conf(self, status: TxStatus) -> bool: ...

    # -- storage faults (a full disk)
    def note_save_failure(self, what: str, error: str) -> None: ...

    def storage_warnings(self) -> list[str]: ...

    # -- control
    def request_stop(self) -> None: ...
