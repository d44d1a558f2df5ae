"""bumpfee: a wallet payment still in the mempool made again at a higher fee (bitcoind's
feebumper), so that it replaces the original under the node's replacement policy.

The replacement keeps the original's inputs and payee outputs; the extra fee comes out of the
change output, and when the change cannot carry it the wallet's largest spendable confirmed
coins are added (their value goes to the change). It pays BIP125 rules 3 and 4 (the new fee
at least the old plus the incremental relay fee rate times the new size) and a higher fee rate
than the original. Only the wallet's own one-key inputs, all confirmed, are handled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.chainstate import ChainState
from consensus.keys import PrivateKey
from consensus.replacement import FIRST_SEEN, MAX_BIP125_RBF_SEQUENCE, OPT_IN
from consensus.tx import SEQUENCE_FINAL, Transaction, TxIn, TxOut, sign_transaction
from node.wallet import DEFAULT_WALLET_FEE_RATE, Wallet
from node.wallet_errors import WalletError

# How often the size/fee fixpoint is iterated (signatures are fixed-size; only the widths of the
# change amount and of added inputs move the size), as Wallet._build.
_FIXPOINT_ROUNDS = 6
# The most coins a bump adds to pay its fee: each one re-signs the whole transaction, so the
# work is quadratic in what is added (a wallet of many small coins); past this it gives up.
MAX_ADDED_INPUTS = 100
# The highest fee rate bumpfee takes (smallest units per byte), so that a typo cannot spend
# a fortune in fees: bitcoind's -maxtxfee guard in spirit.
MAX_FEE_RATE = 5_000 * DEFAULT_WALLET_FEE_RATE


class BumpError(WalletError):
    """Why a transaction cannot be bumped; `kind` chooses the JSON-RPC code as bitcoind's
    feebumper results do: "invalid_key" (not a wallet transaction), "parameter" (a bad
    fee_rate) or "wallet" (its state or the node's policy forbids it)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Bump:
    tx: Transaction
    origfee: int
    fee: int


def sequence_for(replaceable: bool) -> int:
    """bitcoind's input sequence: MAX_BIP125_RBF_SEQUENCE to signal, else final."""
    return MAX_BIP125_RBF_SEQUENCE if replaceable else SEQUENCE_FINAL


def build_bump(
    wallet: Wallet,
    chain: ChainState,
    mempool: Any,
    txid: bytes,
    fee_rate: int | None,
    replaceable: bool,
) -> Bump:
    """The signed replacement of the wallet's payment `txid`, or BumpError saying why not."""
    original = _check_bumpable(wallet, chain, mempool, txid)
    entry = mempool.get(txid)
    origfee, origsize = entry.fee, entry.size
    incremental = mempool.incremental_fee_rate

    coins = []
    for txin in original.inputs:
        coin = chain.coin(txin.outpoint)
        if coin is None or txin.multisig is not None:
            raise BumpError(
                "wallet",
                "Transaction spends unconfirmed or multisig outputs; bumpfee handles payments "
                "of the wallet's own confirmed one-key coins only",
            )
        if coin.pkh not in wallet.keys:
            raise BumpError(
                "wallet", "Transaction contains inputs that don't belong to this wallet"
            )
        coins.append(coin)
    change_index = _change_index(wallet, original)
    payee_outputs = [o for n, o in enumerate(original.outputs) if n != change_index]
    change_pkh = (
        original.outputs[change_index].pkh if change_index is not None else wallet.default_pkh()
    )
    in_total = sum(c.amount for c in coins)
    payee_total = sum(o.amount for o in payee_outputs)
    sequence = sequence_for(replaceable)
    inputs = [i._replace(sequence=sequence) for i in original.inputs]
    keys = [wallet.keys[c.pkh] for c in coins]

    def required(size: int) -> int:
        # Rule 4 (old fee + incremental × new size), a fee rate above the original's (Core's
        # PaysMoreThanConflicts), and the requested rate.
        floor = max(origfee + incremental * size, origfee * size // origsize + 1)
        return max(floor, (fee_rate or wallet.fee_rate) * size)

    spare = _spare_coins(wallet, chain, mempool, {i.outpoint for i in original.inputs})
    while True:
        tx = _fixpoint(
            Transaction(inputs, payee_outputs, locktime=original.locktime),
            change_pkh,
            in_total - payee_total,
            keys,
            wallet,
            required,
        )
        if tx is not None:
            break
        if not spare:
            raise BumpError(
                "wallet",
                "Insufficient funds: the change and the wallet's spendable confirmed coins "
                "cannot pay the higher fee",
            )
        if len(inputs) - len(original.inputs) >= MAX_ADDED_INPUTS:
            raise BumpError(
                "wallet",
                f"Paying the higher fee would take more than {MAX_ADDED_INPUTS} added coins "
                "(MAX_ADDED_INPUTS); consolidate the wallet's coins first",
            )
        extra = spare.pop(0)
        inputs.append(TxIn(extra.outpoint.txid, extra.outpoint.index, b"", b"", sequence))
        keys.append(wallet.keys[extra.coin.pkh])
        in_total += extra.coin.amount
    fee = in_total - tx.total_out()
    if fee_rate is not None and fee_rate * tx.size < origfee + incremental * tx.size:
        raise BumpError(
            "parameter",
            f"Insufficient total fee {fee_rate * tx.size}, must be at least "
            f"{origfee + incremental * tx.size} (oldFee {origfee} + incrementalFee "
            f"{incremental * tx.size})",
        )
    return Bump(tx, origfee, fee)


def _fixpoint(
    unsigned: Transaction,
    change_pkh: bytes,
    available: int,
    keys: list[PrivateKey],
    wallet: Wallet,
    required: Callable[[int], int],
) -> Transaction | None:
    """The signed transaction paying `required(size)` with the rest as change (dropped when
    nothing is left), or None when `available` cannot pay it."""
    fee = 0
    for _ in range(_FIXPOINT_ROUNDS):
        change = available - fee
        if change < 0:
            return None
        outputs = list(unsigned.outputs)
        if change > 0:
            outputs.append(TxOut(change, change_pkh))
        tx = sign_transaction(
            Transaction(unsigned.inputs, outputs, locktime=unsigned.locktime),
            keys,
            wallet.params.genesis_hash,
        )
        needed = required(tx.size)
        if fee >= needed:
            return tx
        fee = needed
    return None


def _check_bumpable(wallet: Wallet, chain: ChainState, mempool: Any, txid: bytes) -> Transaction:
    record = wallet.history.get(txid)
    if record is None:
        raise BumpError("invalid_key", "Invalid or non-wallet transaction id")
    if chain.tx_block(txid) is not None:
        raise BumpError(
            "wallet", "Transaction has been mined, or is conflicted with a mined transaction"
        )
    if wallet.replaced(txid):
        raise BumpError("wallet", f"Cannot bump transaction {txid.hex()}: it was already replaced")
    entry = mempool.get(txid)
    if entry is None:
        raise BumpError(
            "wallet",
            "Transaction is not in the mempool (conflicted, abandoned or not yet accepted)",
        )
    if not record.sent:
        raise BumpError("wallet", "Transaction was not sent by this wallet")
    if entry.children:
        raise BumpError("wallet", "Transaction has descendants in the mempool")
    policy = mempool.replacement_policy
    if policy == FIRST_SEEN:
        raise BumpError(
            "wallet",
            "This node's mempool replacement policy is first-seen: it replaces no transaction "
            "(start it with --mempool-replacement opt-in or full)",
        )
    if policy == OPT_IN and not mempool.signals_replaceable(txid):
        raise BumpError(
            "wallet",
            "Transaction is not BIP 125 replaceable, and this node's mempool replacement policy "
            "is opt-in",
        )
    return record.tx


def _change_index(wallet: Wallet, tx: Transaction) -> int | None:
    """The change output: the one sendtoaddress puts second, to a wallet key."""
    record = wallet.history.get(tx.txid)
    index = record.change_vout if record is not None else None
    if index is not None and index < len(tx.outputs) and tx.outputs[index].pkh in wallet.keys:
        return index
    return None


def _spare_coins(wallet: Wallet, chain: ChainState, mempool: Any, taken: set[Any]) -> list[Any]:
    """Spendable confirmed coins of the wallet beyond the original's inputs, largest first."""
    return sorted(
        (
            c
            for c in wallet.coins(chain, mempool)
            if c.spendable and c.confirmations >= 1 and c.outpoint not in taken
        ),
        key=lambda c: -c.coin.amount,
    )
