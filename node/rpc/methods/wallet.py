"""``== Wallet ==``: the node's wallet, and payment status with finality and reversal risk.

``validateaddress`` is under Util in bitcoind; powlab lists it here (its grouping, kept as it
was). ``gettransaction`` carries powlab's finality fields (status, reversal_risk, double-spend
alerts, zero-confirmation acceptance).
"""

from __future__ import annotations

from typing import Any

from consensus.errors import ConsensusError
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_INSUFFICIENT_FUNDS,
    RPCError,
)
from node.rpc.methods.common import address_encoder, address_pkh, hash_param
from node.rpc.registry import rpc_method
from node.wallet import InsufficientFunds, WalletError
from node.wallet_multisig import can_sign_alone, watched_coins


@rpc_method
def getnewaddress(node: NodeAPI) -> str:
    """A new address of this node's wallet."""
    return node.wallet.new_address()


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
def sendtoaddress(node: NodeAPI, address: str, amount: int) -> str:
    """Pay `amount` (smallest units) to `address`, with change and a fee."""
    pkh = address_pkh(node, address)
    try:
        tx = node.wallet.create_payment(node.chain, node.mempool, pkh, amount)
    except InsufficientFunds as exc:
        raise RPCError(RPC_WALLET_INSUFFICIENT_FUNDS, str(exc)) from None
    except WalletError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
    try:
        node.submit_transaction(tx)
    except ConsensusError as exc:
        raise RPCError(RPC_VERIFY_REJECTED, str(exc)) from None
    node.wallet.remember(tx, node.now())
    node.watch(tx.txid)
    return tx.txid.hex()


@rpc_method
def gettransaction(node: NodeAPI, txid: str) -> dict[str, Any]:
    """Status (mempool, confirmed, final, conflicted, unknown), confirmations (negative
    when conflicted), block, conflicting txids and the finality depth; `finality_conflict`
    names a heavier branch this node refused beyond finality that holds or would revert it."""
    raw_txid = hash_param(txid, "txid")
    node.watch(raw_txid)
    status = node.tx_status(raw_txid)
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
