"""Where a transaction stands: mempool, confirmed, final, conflicted, replaced or unknown.

`confirmations` follows bitcoind: positive in the active chain, 0 in the mempool, and negative
when a conflicting transaction is confirmed instead (minus that transaction's confirmations).
`replaced` is an unconfirmed transaction our mempool let a replacement push out (replace-by-fee),
while that replacement (or one of its own replacements) is still in the mempool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from consensus.attack_theory import reversal_risk
from consensus.chainstate import ChainState
from consensus.tx import Transaction


class MempoolView(Protocol):
    def __contains__(self, txid: object) -> bool: ...

    def conflicts_of(self, tx: Transaction) -> list[bytes]: ...


@dataclass
class TxStatus:
    txid: bytes
    status: str  # mempool, confirmed, final, conflicted, replaced, unknown
    confirmations: int = 0
    blockhash: bytes | None = None
    blockheight: int | None = None
    conflicts: list[bytes] = field(default_factory=list)
    finality_depth: int = 0
    replaced_by: bytes | None = None  # the transaction that replaced it in our mempool

    def reversal_risk(self, attacker_share: float) -> float:
        """Chance an attacker of this share could still reverse it (catch-up model)."""
        if self.status in ("confirmed", "final"):
            return reversal_risk(self.confirmations, attacker_share)
        return 1.0

    def risk_summary(self, attacker_share: float) -> str:
        pct = self.reversal_risk(attacker_share) * 100
        shown = f"{pct:.0f}" if pct >= 10 else f"{pct:.2g}"  # "100", "16", "0.059"
        return (
            f"{self.confirmations} confirmation{'s' if self.confirmations != 1 else ''} — "
            f"reversal risk {shown}% at q = {attacker_share * 100:g}%"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid.hex(),
            "status": self.status,
            "confirmations": self.confirmations,
            "blockhash": self.blockhash.hex() if self.blockhash else None,
            "blockheight": self.blockheight,
            "conflicts": [c.hex() for c in self.conflicts],
            "finality_depth": self.finality_depth,
            # bitcoind's field, present only for a replaced transaction.
            **({"replaced_by_txid": self.replaced_by.hex()} if self.replaced_by else {}),
        }


def transaction_status(
    txid: bytes,
    tx: Transaction | None,
    chain: ChainState,
    mempool: MempoolView,
    finality_depth: int,
    known_conflicts: Iterable[bytes] = (),
    replaced_by: tuple[bytes, bytes | None] | None = None,
) -> TxStatus:
    """`tx` is the transaction's body when known (wallet, recent mempool), needed to see
    conflicts; `known_conflicts` are txids the node saw double-spending it (alerts);
    `replaced_by` (the replacing txid, and the one of its line of replacements that still holds
    the slot, or None) when our mempool replaced it."""
    entry = chain.tx_block(txid)
    if entry is not None:
        confirmations = chain.confirmations(entry)
        return TxStatus(
            txid,
            "final" if confirmations >= finality_depth else "confirmed",
            confirmations,
            entry.hash,
            entry.height,
            finality_depth=finality_depth,
        )
    if txid in mempool:
        # Proof of a double spend (an alert) marks an unconfirmed payment before any block.
        conflicts = list(known_conflicts)
        return TxStatus(
            txid, "conflicted" if conflicts else "mempool", 0, conflicts=conflicts,
            finality_depth=finality_depth,
        )
    by, holder = replaced_by if replaced_by is not None else (None, None)
    if holder is not None:
        block = chain.tx_block(holder)
        if block is not None:
            # The replacement confirmed: the replaced one (a descendant too) can never be.
            return TxStatus(txid, "conflicted", -chain.confirmations(block), conflicts=[holder],
                            finality_depth=finality_depth, replaced_by=by)
        if holder in mempool:
            return TxStatus(txid, "replaced", 0, conflicts=[holder],
                            finality_depth=finality_depth, replaced_by=by)
    if tx is None:
        return TxStatus(txid, "unknown", 0, finality_depth=finality_depth, replaced_by=by)
    confirmed_conflicts: dict[bytes, int] = {}
    for txin in tx.inputs:
        spender = chain.spender(txin.outpoint)
        if spender is not None and spender != txid:
            block = chain.tx_block(spender)
            confirmed_conflicts[spender] = chain.confirmations(block) if block else 0
    if confirmed_conflicts:
        return TxStatus(
            txid,
            "conflicted",
            -max(confirmed_conflicts.values()),
            conflicts=list(confirmed_conflicts),
            finality_depth=finality_depth,
            replaced_by=by,
        )
    mempool_conflicts = mempool.conflicts_of(tx)
    if mempool_conflicts:
        # Not confirmed either way yet: the conflicting spend holds the mempool slot.
        return TxStatus(txid, "conflicted", 0, conflicts=mempool_conflicts,
                        finality_depth=finality_depth, replaced_by=by)
    return TxStatus(txid, "unknown", 0, finality_depth=finality_depth, replaced_by=by)
