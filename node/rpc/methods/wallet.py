"""``== Wallet ==``: the node's wallet, and payment status with finality and reversal risk.

``validateaddress`` is under Util in bitcoind; powlab lists it here (its grouping, kept as it
was). ``gettransaction`` carries powlab's finality fields (status, reversal_risk, double-spend
alerts, zero-confirmation acceptance).
"""

from __future__ import annotations

from typing import Any

import structlog

from consensus.errors import ConsensusError
from consensus.tx import Transaction
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_ERROR,
    RPC_WALLET_INSUFFICIENT_FUNDS,
    RPCError,
)
from node.rpc.methods.common import address_encoder, address_pkh, hash_param
from node.rpc.registry import rpc_method
from node.wallet import InsufficientFunds, WalletError, WalletWriteError
from node.wallet_bumpfee import MAX_FEE_RATE, BumpError, build_bump, sequence_for
from node.wallet_listing import list_transactions
from node.wallet_multisig import can_sign_alone, watched_coins

log = structlog.get_logger("powlab.wallet")


@rpc_method
def getnewaddress(node: NodeAPI) -> str:
    """A new address of this node's wallet."""
    try:
        return node.wallet.new_address()
    except WalletWriteError as exc:
        raise RPCError(RPC_WALLET_ERROR, f"{exc}; no address was made") from None


@rpc_method
def getbalance(node: NodeAPI, minconf: int = 1) -> int:
    """Spendable balance with at least `minconf` confirmations (mature coinbase only)."""
    return node.wallet.balance(node.chain, node.mempool, minconf)


@rpc_method
def listunspent(node: NodeAPI, minconf: int = 1) -> list[dict[str, Any]]:
    """The wallet's unspent outputs with at least `minconf` confirmations, and those of watched
    multisig addresses (with redeemScript; spendable only if the wallet holds m keys)."""
    encode = address_encoder(node)
    wallet = node.wallet
    return [
        {
            "txid": c.outpoint.txid.hex(),
            "vout": c.outpoint.index,
            "address": encode(c.coin.pkh),
            "amount": c.coin.amount,
            "confirmations": c.confirmations,
            "coinbase": c.coin.is_coinbase,
            "spendable": c.spendable,
            "solvable": True,
            **(
                {"redeemScript": wallet.multisig[c.coin.pkh].encode().hex()}
                if c.coin.pkh in wallet.multisig
                else {}
            ),
        }
        for c in [
            *wallet.coins(node.chain, node.mempool),
            *watched_coins(wallet, node.chain, node.mempool),
        ]
        if c.confirmations >= minconf
    ]


@rpc_method
def sendtoaddress(
    node: NodeAPI,
    address: str,
    amount: int,
    comment: str = "",
    comment_to: str = "",
    subtractfeefromamount: bool = False,
    replaceable: bool | None = None,
) -> str:
    """Pay `amount` (smallest units) to `address`, with change and a fee. The payment is in
    the wallet's files (fsynced) before it is relayed; its inputs stay locked until it
    confirms or is abandoned. `replaceable` (bitcoind's sixth positional argument; default the
    node's `wallet_rbf`): its inputs signal BIP125 (sequence 0xFFFFFFFD), so that bumpfee can
    replace it under the opt-in policy. `comment`, `comment_to` and `subtractfeefromamount`
    hold bitcoind's positions; powlab's wallet stores no comments and cannot take the fee from
    the amount, so only their empty/false values are accepted."""
    if comment or comment_to:
        raise RPCError(RPC_INVALID_PARAMETER, "comment and comment_to are not supported (empty)")
    if subtractfeefromamount:
        raise RPCError(RPC_INVALID_PARAMETER, "subtractfeefromamount is not supported (false)")
    if replaceable is None:
        replaceable = node.config.wallet_rbf
    pkh = address_pkh(node, address)
    wallet = node.wallet
    try:
        tx = wallet.create_payment(
            node.chain, node.mempool, pkh, amount, sequence=sequence_for(replaceable)
        )
    except InsufficientFunds as exc:
        raise RPCError(RPC_WALLET_INSUFFICIENT_FUNDS, str(exc)) from None
    except WalletError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
    return _record_and_submit(node, tx)


def _record_and_submit(node: NodeAPI, tx: Transaction) -> str:
    """Journal our payment, then relay it; its txid, or the RPC error saying why it was not
    sent (then the wallet forgot it again)."""
    wallet = node.wallet
    try:
        # On disk before anyone can see it: a crash from here on leaves a record that the
        # next start resubmits, never a payment the wallet forgot and whose coins it reuses.
        wallet.record_payment(tx, node.now(), node.chain)
    except WalletWriteError as exc:
        raise RPCError(RPC_WALLET_ERROR, f"{exc}; nothing was sent") from None
    except WalletError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
    try:
        node.submit_transaction(tx)
    except ConsensusError as exc:
        _forget_refused(node, tx.txid)
        raise RPCError(RPC_VERIFY_REJECTED, str(exc)) from None
    except Exception as exc:
        if tx.txid not in node.mempool:
            _forget_refused(node, tx.txid)
            raise
        # Accepted, so it may have gone out: report the txid, never a failure that would
        # invite the caller to pay again.
        log.warning("payment_sent_with_error", txid=tx.txid.hex(), error=str(exc))
        node.note_save_failure("payment bookkeeping", f"{tx.txid.hex()}: {exc}")
    node.watch(tx.txid)
    return tx.txid.hex()


# bitcoind's bumpfee options powlab takes (conf_target and estimate_mode need a fee estimator).
BUMPFEE_OPTIONS = frozenset({"fee_rate", "replaceable"})
_BUMP_ERROR_CODES = {
    "invalid_key": RPC_INVALID_ADDRESS_OR_KEY,
    "parameter": RPC_INVALID_PARAMETER,
    "wallet": RPC_WALLET_ERROR,
}


@rpc_method
def bumpfee(node: NodeAPI, txid: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replace the wallet's unconfirmed payment `txid` (in the mempool, no descendants) with
    one paying a higher fee: {txid, origfee, fee, errors}. options: `fee_rate` (smallest units
    per byte; by default the least the replacement rules allow, at least the wallet's rate),
    `replaceable` (default true: the replacement signals BIP125 too). The fee comes out of the
    change, else from added coins. Refused (RPC_WALLET_ERROR) when the node's replacement
    policy would not take it: first-seen, or opt-in and the original does not signal."""
    raw_txid = hash_param(txid, "txid")
    options = options or {}
    unknown = sorted(set(options) - BUMPFEE_OPTIONS)
    if unknown:
        raise RPCError(RPC_INVALID_PARAMETER, f"Unexpected key {unknown[0]}")
    fee_rate = options.get("fee_rate")
    if fee_rate is not None and (type(fee_rate) is not int or not 0 < fee_rate <= MAX_FEE_RATE):
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f"fee_rate must be an integer from 1 to {MAX_FEE_RATE} (smallest units per byte)",
        )
    replaceable = options.get("replaceable")
    if replaceable is None:  # null is the default, as for a positional argument
        replaceable = True
    if type(replaceable) is not bool:
        raise RPCError(RPC_INVALID_PARAMETER, "replaceable must be true or false")
    wallet = node.wallet
    try:
        bump = build_bump(
            wallet,
            node.chain,
            node.mempool,
            raw_txid,
            fee_rate,
            replaceable,
        )
    except BumpError as exc:
        raise RPCError(_BUMP_ERROR_CODES[exc.kind], str(exc)) from None
    new_txid = _record_and_submit(node, bump.tx)
    log.info(
        "wallet_fee_bumped", txid=txid, replaced_by=new_txid, origfee=bump.origfee, fee=bump.fee
    )
    return {"txid": new_txid, "origfee": bump.origfee, "fee": bump.fee, "errors": []}


def _forget_refused(node: NodeAPI, txid: bytes) -> None:
    """The mempool refused our payment: it never went out, so free its inputs."""
    try:
        node.wallet.forget_refused(txid)
    except WalletWriteError as exc:
        # Still on disk: the next start offers it again, and the user can abandon it.
        node.note_save_failure("wallet", f"refused payment {txid.hex()} not dropped: {exc}")


@rpc_method
def abandontransaction(node: NodeAPI, txid: str) -> None:
    """Mark a wallet transaction that is neither confirmed nor in the mempool abandoned (and
    the wallet's transactions spending it): its inputs are free again and it is no longer
    resubmitted."""
    raw_txid = hash_param(txid, "txid")
    record = node.wallet.history.get(raw_txid)
    if record is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Invalid or non-wallet transaction id")
    if node.chain.tx_block(raw_txid) is not None:
        reason = "it is confirmed"
    elif raw_txid in node.mempool:
        reason = "it is in the mempool"
    elif record.abandoned:
        reason = "it is abandoned already"
    else:
        reason = ""
    if reason:
        raise RPCError(RPC_INVALID_PARAMETER, f"Transaction not eligible for abandonment: {reason}")
    try:
        marked = node.wallet.abandon(raw_txid)
    except WalletWriteError as exc:
        raise RPCError(RPC_WALLET_ERROR, f"{exc}; the transaction was not abandoned") from None
    log.info("wallet_tx_abandoned", txids=[t.hex() for t in marked])


@rpc_method
def listtransactions(
    node: NodeAPI, label: str = "*", count: int = 10, skip: int = 0
) -> list[dict[str, Any]]:
    """The wallet's most recent transactions, sent and received, newest last: `count` entries
    after skipping the `skip` most recent. powlab has no labels: "*" and "" (every
    address's label) list all, any other label nothing."""
    if count < 0:
        raise RPCError(RPC_INVALID_PARAMETER, "Negative count")
    if skip < 0:
        raise RPCError(RPC_INVALID_PARAMETER, "Negative from")
    if label not in ("*", ""):
        return []
    return list_transactions(
        node.wallet,
        node.tx_status,
        address_encoder(node),
        node.params.coinbase_maturity,
        count,
        skip,
    )


@rpc_method
def gettransaction(node: NodeAPI, txid: str) -> dict[str, Any]:
    """Status (mempool, confirmed, final, conflicted, unknown), confirmations (negative
    when conflicted), block, conflicting txids and the finality depth; `finality_conflict`
    names a heavier branch this node refused beyond finality that holds or would revert it."""
    raw_txid = hash_param(txid, "txid")
    node.watch(raw_txid)
    status = node.tx_status(raw_txid)
    record = node.wallet.history.get(raw_txid)
    q = node.config.assumed_attacker_share
    seen = node.double_spends_of(raw_txid)
    conflicts = node.finality_conflicts_of(raw_txid, status)
    return {
        **status.to_json(),
        "reversal_risk": status.reversal_risk(q),
        "assumed_attacker_share": q,
        "risk_summary": status.risk_summary(q),
        "double_spend_alert": bool(seen) and node.config.double_spend_alerts,
        "seen_double_spends": sorted(t.hex() for t in seen),
        "accepted_zero_conf": node.accepted_zero_conf(status),
        "listening_period": node.config.listening_period,
        # A heavier branch refused beyond finality that would revert this payment, or that
        # holds it: "final" here is only this node's view of a split network.
        "finality_conflict": conflicts[0] if conflicts else None,
        "warnings": " ".join(c["warning"] for c in conflicts),
        # bitcoind's flag; an abandoned payment that confirmed anyway is just confirmed.
        "abandoned": record is not None
        and record.abandoned
        and status.status not in ("confirmed", "final"),
    }


@rpc_method
def validateaddress(node: NodeAPI, address: str) -> dict[str, Any]:
    """Whether `address` is valid on this network, and why not."""
    try:
        pkh = node.wallet.decode(address)
    except WalletError as exc:
        return {"isvalid": False, "error": str(exc)}
    script = node.wallet.multisig.get(pkh)
    # As getaddressinfo: a watched multisig address is mine when the wallet can spend it alone.
    mine = node.wallet.is_mine(pkh) or (script is not None and can_sign_alone(node.wallet, script))
    return {"isvalid": True, "address": address, "ismine": mine}
