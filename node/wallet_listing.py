"""`listtransactions` entries, shaped as bitcoind's: one entry per output that pays us
(receive, generate, immature, orphan) and per output our spend paid away (send, amount and
fee negative), with powlab's `status` beside bitcoind's fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.txstatus import TxStatus
from node.wallet import Wallet
from node.wallet_history import WalletTx

StatusOf = Callable[[bytes], TxStatus]
Encode = Callable[[bytes], str]


def list_transactions(
    wallet: Wallet,
    status_of: StatusOf,
    encode: Encode,
    maturity: int,
    count: int,
    skip: int,
) -> list[dict[str, Any]]:
    """The most recent `count` entries after skipping the `skip` most recent, oldest first
    (bitcoind's order: newest last)."""
    wanted = count + skip
    collected: list[dict[str, Any]] = []
    for record in wallet.history.newest_first():
        if len(collected) >= wanted:
            break
        entries = _entries(wallet, record, status_of(record.tx.txid), encode, maturity)
        collected.extend(reversed(entries))
    chosen = collected[skip:wanted]
    chosen.reverse()
    return chosen


def _from_me(wallet: Wallet, record: WalletTx) -> bool:
    if record.sent:
        return True
    for txin in record.tx.inputs:
        prev = wallet.history.get(txin.prev_txid)
        if (
            prev is not None
            and txin.prev_index < len(prev.tx.outputs)
            and wallet.is_mine(prev.tx.outputs[txin.prev_index].pkh)
        ):
            return True
    return False


def _entries(
    wallet: Wallet, record: WalletTx, status: TxStatus, encode: Encode, maturity: int
) -> list[dict[str, Any]]:
    tx = record.tx
    common: dict[str, Any] = {
        "confirmations": status.confirmations,
        "txid": tx.txid.hex(),
        "time": record.time,
        "timereceived": record.time,
        "status": status.status,
        "abandoned": record.abandoned and status.status not in ("confirmed", "final"),
    }
    if status.blockhash is not None:
        common["blockhash"] = status.blockhash.hex()
        common["blockheight"] = status.blockheight
    if status.conflicts:
        common["walletconflicts"] = [t.hex() for t in status.conflicts]
    entries: list[dict[str, Any]] = []
    from_me = _from_me(wallet, record)
    if from_me:
        for n, out in enumerate(tx.outputs):
            # Change is ours and not a payment: bitcoind leaves it out too. An output to our
            # own address that we paid on purpose is both a send and a receive.
            if n == record.change_vout or (not record.sent and wallet.is_mine(out.pkh)):
                continue
            entry = {
                "address": encode(out.pkh),
                "category": "send",
                "amount": -out.amount,
                "vout": n,
                **common,
            }
            if record.fee is not None:
                entry["fee"] = -record.fee
            entries.append(entry)
    for n, out in enumerate(tx.outputs):
        if not wallet.is_mine(out.pkh) or (from_me and n == record.change_vout):
            continue
        if from_me and not record.sent:
            continue  # a spend of ours built elsewhere: outputs back to us are change
        entries.append(
            {
                "address": encode(out.pkh),
                "category": _receive_category(tx.is_coinbase, status.confirmations, maturity),
                "amount": out.amount,
                "vout": n,
                **common,
            }
        )
    return entries


def _receive_category(coinbase: bool, confirmations: int, maturity: int) -> str:
    if not coinbase:
        return "receive"
    if confirmations <= 0:
        return "orphan"  # a block reward whose block left the active chain
    return "immature" if confirmations < maturity else "generate"
