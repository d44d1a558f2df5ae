"""Mempool replacement policies: first-seen, BIP125 opt-in replace-by-fee, and full RBF.

Pure rules over numbers the mempool hands in; the mempool (`consensus.mempool`) decides what
conflicts with what and applies the outcome. The names and reject reasons are Bitcoin Core's
(`src/policy/rbf.cpp`, `validation.cpp`), so that its documentation reads across:

* first-seen: a conflicting transaction is refused (`txn-mempool-conflict`); powlab's behaviour
  before replacement existed, and its default so that earlier results stay reproducible.
* opt-in (BIP125): a transaction may replace the ones it conflicts with if every one of them
  signals replaceability, itself or through an unconfirmed ancestor (an input sequence below
  0xFFFFFFFE).
* full (Bitcoin Core's `mempoolfullrbf`, its default since version 28): signalling is not needed.

Under both replacing policies the replacement must pay for it (BIP125 rules 2 to 5, plus Core's
fee rate check); see `check_replacement`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from consensus.errors import ConsensusError
from consensus.tx import Transaction

ReplacementPolicy = Literal["first-seen", "opt-in", "full"]
FIRST_SEEN: ReplacementPolicy = "first-seen"
OPT_IN: ReplacementPolicy = "opt-in"
FULL: ReplacementPolicy = "full"
REPLACEMENT_POLICIES: tuple[ReplacementPolicy, ...] = (FIRST_SEEN, OPT_IN, FULL)
DEFAULT_REPLACEMENT_POLICY: ReplacementPolicy = FIRST_SEEN

# BIP125: an input with a sequence up to this signals that its transaction may be replaced.
MAX_BIP125_RBF_SEQUENCE = 0xFFFFFFFD
# BIP125 rule 5 (Core's MAX_REPLACEMENT_CANDIDATES): the most pool transactions one replacement
# may evict, descendants included. It also bounds the work a replacement costs us.
MAX_REPLACEMENT_CANDIDATES = 100

# Core's reject reasons.
CONFLICT = "txn-mempool-conflict"
INSUFFICIENT_FEE = "insufficient fee"
TOO_MANY_REPLACEMENTS = "too many potential replacements"
ADDS_UNCONFIRMED = "replacement-adds-unconfirmed"
SPENDS_CONFLICTING = "bad-txns-spends-conflicting-tx"
# A replacement that the rules refused though it could be valid: still a double spend of the
# pool transactions it conflicts with (the node's alerts), and a peer relaying one is charged.
REFUSED_REPLACEMENT_REASONS = frozenset({INSUFFICIENT_FEE, TOO_MANY_REPLACEMENTS, ADDS_UNCONFIRMED})


def signals_opt_in(tx: Transaction) -> bool:
    """The transaction itself signals BIP125 replaceability."""
    return any(txin.sequence <= MAX_BIP125_RBF_SEQUENCE for txin in tx.inputs)


class NoBetterFeeRate(ConsensusError):
    """`insufficient fee` because the newcomer pays no higher a fee rate than a transaction it
    conflicts with (Core's PaysMoreThanConflicts). That is the loser of a race, which an honest
    peer holding it (first-seen, or the original reached it first) relays: not charged."""


def check_pays_more_than_conflicts(
    txid: bytes, fee: int, size: int, direct: Iterable[tuple[bytes, int, int]]
) -> None:
    """Raises `NoBetterFeeRate` unless `fee` for `size` bytes is a higher fee rate than each
    direct conflict's, given as (txid, fee, size). O(conflicts): Core checks it first."""
    for other, other_fee, other_size in direct:
        # Cross-multiplied: exact in integers, where fee / size would round.
        if fee * other_size <= other_fee * size:
            raise NoBetterFeeRate(
                INSUFFICIENT_FEE,
                f"rejecting replacement {txid.hex()}; new feerate {fee / size:.3f} <= old "
                f"feerate {other_fee / other_size:.3f} of {other.hex()}",
            )


def check_replacement(
    *,
    txid: bytes,
    fee: int,
    size: int,
    direct: Iterable[tuple[bytes, int, int]],
    replaced_fee: int,
    incremental_fee_rate: int,
) -> None:
    """Core's fee checks of a replacement paying `fee` for `size` bytes. `direct` gives
    (txid, fee, size) of each transaction it directly conflicts with; `replaced_fee` is the total
    fee of everything it would evict (those and their descendants).

    Raises `ConsensusError("insufficient fee")` if it pays no higher a fee rate than a direct
    conflict (Core's PaysMoreThanConflicts), less in total than what it evicts (BIP125 rule 3),
    or too little on top to pay for its own relay at the incremental rate (rule 4)."""
    check_pays_more_than_conflicts(txid, fee, size, direct)
    if fee < replaced_fee:
        raise ConsensusError(
            INSUFFICIENT_FEE,
            f"rejecting replacement {txid.hex()}, less fees than conflicting txs; "
            f"{fee} < {replaced_fee}",
        )
    additional = fee - replaced_fee
    if additional < incremental_fee_rate * size:
        raise ConsensusError(
            INSUFFICIENT_FEE,
            f"rejecting replacement {txid.hex()}, not enough additional fees to relay; "
            f"{additional} < {incremental_fee_rate * size}",
        )


def too_many_replacements(txid: bytes, count: int) -> ConsensusError:
    return ConsensusError(
        TOO_MANY_REPLACEMENTS,
        f"rejecting replacement {txid.hex()}; too many potential replacements "
        f"({count} > {MAX_REPLACEMENT_CANDIDATES})",
    )
