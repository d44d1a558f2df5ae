"""``== Rawtransactions ==``: the mempool and raw transactions.

bitcoind lists the mempool methods (``getrawmempool``, ``getmempoolentry``,
``getmempoolinfo``) under Blockchain and ``signrawtransactionwithwallet`` under Wallet;
powlab keeps them here (its grouping, kept as it was).
"""

from __future__ import annotations

from typing import Any

from consensus.errors import ConsensusError
from consensus.mempool import MempoolConflict
from consensus.replacement import FULL, MAX_BIP125_RBF_SEQUENCE
from consensus.tx import SEQUENCE_FINAL, U32_MAX, Transaction, TxIn, TxOut
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    RPCError,
)
from node.rpc.methods.common import address_encoder, address_pkh, decode_tx, hash_param
from node.rpc.registry import rpc_method
from node.wallet_multisig import coin_lookup, sign_with_wallet

# bitcoind's default sequence for inputs of a time-locked transaction: not final, so the lock
# time applies.
MAX_SEQUENCE_NONFINAL = SEQUENCE_FINAL - 1


def _mempool_entry(node: NodeAPI, txid: bytes) -> dict[str, Any]:
    entry = node.mempool.get(txid)
    if entry is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    return {
        "fee": entry.fee,
        "size": entry.size,
        "feerate": entry.fee_rate,
        "time": entry.time,
        "depends": [p.hex() for p in entry.parents],
        "spentby": [c.hex() for c in entry.children],
        # BIP125 signalling, by itself or an unconfirmed ancestor, as bitcoind reports it
        # whatever the policy (under full RBF every entry is replaceable anyway).
        "bip125-replaceable": node.mempool.signals_replaceable(txid),
    }


@rpc_method
def getrawmempool(node: NodeAPI, verbose: bool = False) -> Any:
    """Txids in the mempool (or entries with fee, size and time when verbose)."""
    if not verbose:
        return [t.hex() for t in node.mempool.txids()]
    return {t.hex(): _mempool_entry(node, t) for t in node.mempool.txids()}


@rpc_method
def getmempoolentry(node: NodeAPI, txid: str) -> dict[str, Any]:
    """One mempool entry."""
    return _mempool_entry(node, hash_param(txid, "txid"))


@rpc_method
def getmempoolinfo(node: NodeAPI) -> dict[str, Any]:
    """Mempool size, bytes, memory usage, limit, current minimum fee rate and replacement
    policy (`mempoolfullrbf` as bitcoind; `replacement_policy` first-seen, opt-in or full)."""
    mp = node.mempool
    return {
        "size": len(mp),
        "bytes": mp.bytes,
        "usage": mp.usage,
        "maxmempool": node.config.max_mempool_bytes,
        "minfee": mp.min_fee_rate,
        "orphans": mp.orphan_count(),
        "incrementalrelayfee": mp.incremental_fee_rate,
        "mempoolfullrbf": mp.replacement_policy == FULL,
        "replacement_policy": mp.replacement_policy,
    }


@rpc_method
def sendrawtransaction(node: NodeAPI, hexstring: str) -> str:
    """Validate a signed transaction and add it to the mempool; error says why not."""
    tx = decode_tx(node, hexstring)
    try:
        outcome = node.submit_transaction(tx)
    except MempoolConflict as exc:
        raise RPCError(RPC_VERIFY_REJECTED, str(exc)) from None
    except ConsensusError as exc:
        code = RPC_VERIFY_ALREADY_IN_CHAIN if exc.reason == "txn-already-known" else (
            RPC_VERIFY_REJECTED
        )
        raise RPCError(code, str(exc)) from None
    node.watch(tx.txid)
    if outcome.orphan:
        missing = ", ".join(p.hex() for p in outcome.missing_parents)
        raise RPCError(RPC_VERIFY_ERROR, f"bad-txns-inputs-missingorspent: orphan, "
                       f"waiting for {missing}")
    return tx.txid.hex()


@rpc_method
def getrawtransaction(node: NodeAPI, txid: str, verbose: bool = False) -> Any:
    """A transaction the node knows (mempool, active chain, wallet, recently seen)."""
    raw_txid = hash_param(txid, "txid")
    tx = node.find_transaction(raw_txid)
    if tx is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction")
    if not verbose:
        return tx.encode().hex()
    info = tx.to_json(address_encoder(node))
    info["hex"] = tx.encode().hex()
    status = node.tx_status(raw_txid)
    info.update(
        confirmations=status.confirmations,
        blockhash=status.blockhash.hex() if status.blockhash else None,
    )
    return info


@rpc_method
def decoderawtransaction(node: NodeAPI, hexstring: str) -> dict[str, Any]:
    """A raw transaction as JSON."""
    return decode_tx(node, hexstring).to_json(address_encoder(node))


@rpc_method
def createrawtransaction(
    node: NodeAPI,
    inputs: list[dict[str, Any]],
    outputs: dict[str, Any],
    locktime: int = 0,
    replaceable: bool = False,
) -> str:
    """An unsigned transaction spending `inputs` [{txid, vout, sequence?}] to {address: amount}
    with `locktime` (a height below 500000000, else a Unix time; 0: none). An input without a
    sequence gets 4294967293 when `replaceable` (BIP125 signalling, as bitcoind), else
    4294967295, or 4294967294 when locktime is set so that the lock applies."""
    if not 0 <= locktime <= U32_MAX:
        raise RPCError(
            RPC_INVALID_PARAMETER, f"Invalid parameter, locktime out of range (0 to {U32_MAX})"
        )
    if replaceable:
        default_sequence = MAX_BIP125_RBF_SEQUENCE
    else:
        default_sequence = MAX_SEQUENCE_NONFINAL if locktime else SEQUENCE_FINAL
    txins = []
    for item in inputs:
        if not isinstance(item, dict) or "txid" not in item or "vout" not in item:
            raise RPCError(RPC_INVALID_PARAMETER, "each input is {\"txid\": …, \"vout\": n}")
        vout = item["vout"]
        if type(vout) is not int or vout < 0:
            raise RPCError(RPC_INVALID_PARAMETER, "vout must be a non-negative integer")
        sequence = item.get("sequence", default_sequence)
        if type(sequence) is not int or not 0 <= sequence <= U32_MAX:
            raise RPCError(
                RPC_INVALID_PARAMETER,
                f"Invalid parameter, sequence number is out of range (an integer 0 to {U32_MAX})",
            )
        txins.append(TxIn(hash_param(item["txid"], "txid"), vout, b"", b"", sequence))
    txouts = []
    for address, amount in outputs.items():
        if type(amount) is not int or amount <= 0:
            raise RPCError(
                RPC_INVALID_PARAMETER,
                f"amount for {address} must be a positive integer (smallest units)",
            )
        txouts.append(TxOut(amount, address_pkh(node, address)))
    return Transaction(txins, txouts, locktime=locktime).encode().hex()


@rpc_method
def signrawtransactionwithwallet(node: NodeAPI, hexstring: str) -> dict[str, Any]:
    """Sign the inputs the wallet can: one-key inputs it holds the key for, and inputs of
    watched multisig scripts (its own keys' slots, at most m in total). {hex, complete, errors}:
    complete is false while any input still lacks signatures, which stay in hex for the other
    signers; errors says why, per input."""
    tx = decode_tx(node, hexstring)
    result = sign_with_wallet(node.wallet, tx, coin_lookup(node.chain, node.mempool))
    return {"hex": result.tx.encode().hex(), "complete": result.complete, "errors": result.errors}
