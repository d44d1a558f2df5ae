"""The wallet's m-of-n side: watched multisig scripts, signing inputs across wallets, and merging
partial signatures made in parallel (bitcoind's ``signrawtransactionwithwallet`` and
``combinerawtransaction``).

A watched script is one the wallet was told about with ``addmultisigaddress``; it is saved in
wallet.dat (the "multisig" list of encoded scripts). The wallet signs a multisig input with every
key of the script it holds, in key order, and never fills more than m slots in total: an input
with more than m signatures is invalid (`consensus.validation`). Every signature taken from a
transaction someone else made is verified against its slot's key first; one that does not verify
is dropped, so a bad co-signer cannot spoil the signatures of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.chainstate import ChainState
from consensus.coins import Coin
from consensus.keys import pubkey_hash, verify_signature
from consensus.multisig import MultisigScript
from consensus.tx import OutPoint, Transaction, TxIn
from node.wallet import Wallet, WalletCoin
from node.wallet_errors import WalletWriteError

# Scripts addmultisigaddress may make the wallet watch (each is saved in wallet.dat and checked
# against every coin of the UTXO set by listunspent).
MAX_WATCHED_SCRIPTS = 1_000
# Transactions one combinerawtransaction call may merge (each one is fully decoded and every
# signature in it verified).
MAX_COMBINE_TRANSACTIONS = 64

CoinLookup = Callable[[OutPoint], Coin | None]


class MultisigWalletError(ValueError):
    """Too many watched scripts, transactions that cannot be combined, ..."""


def descriptor(script: MultisigScript) -> str:
    """Output-descriptor notation of the script (bitcoind's ``multi(m,key,…)``, without the
    checksum suffix bitcoind appends)."""
    return f"multi({script.required},{','.join(key.hex() for key in script.pubkeys)})"


def watch(wallet: Wallet, script: MultisigScript) -> None:
    """Watch `script` (persisted); adding one already watched changes nothing."""
    lock = script.script_hash
    if lock in wallet.multisig:
        return
    if len(wallet.multisig) >= MAX_WATCHED_SCRIPTS:
        raise MultisigWalletError(
            f"the wallet already watches {MAX_WATCHED_SCRIPTS} multisig scripts (the limit)"
        )
    wallet.multisig[lock] = script
    try:
        wallet.save()
    except WalletWriteError:
        del wallet.multisig[lock]  # never watch in memory what a restart would forget
        raise


def held_keys(wallet: Wallet, script: MultisigScript) -> int:
    return sum(pubkey_hash(key) in wallet.keys for key in script.pubkeys)


def can_sign_alone(wallet: Wallet, script: MultisigScript) -> bool:
    return held_keys(wallet, script) >= script.required


def coin_lookup(chain: ChainState, mempool: Any) -> CoinLookup:
    """The coin an outpoint spends: from the UTXO set, or an output of a mempool transaction."""

    def lookup(outpoint: OutPoint) -> Coin | None:
        coin = chain.coin(outpoint)
        if coin is not None:
            return coin
        parent = mempool.get(outpoint.txid) if outpoint.txid in mempool else None
        if parent is not None and outpoint.index < len(parent.tx.outputs):
            out = parent.tx.outputs[outpoint.index]
            return Coin(out.amount, out.pkh, chain.height + 1, False)
        return None

    return lookup


def watched_coins(wallet: Wallet, chain: ChainState, mempool: Any) -> list[WalletCoin]:
    """Coins locked to a watched script, confirmed or in the mempool. `spendable` means the
    wallet could spend it alone: it holds m of the keys, and the coin is mature and not already
    spent by a mempool transaction."""
    if not wallet.multisig:
        return []
    result = []
    tip_height = chain.height
    maturity = wallet.params.coinbase_maturity
    for outpoint, coin in chain.iter_utxos():
        script = wallet.multisig.get(coin.pkh)
        if script is None:
            continue
        mature = not coin.is_coinbase or tip_height + 1 - coin.height >= maturity
        usable = mature and mempool.spender_of(outpoint) is None
        result.append(
            WalletCoin(
                outpoint,
                coin,
                tip_height - coin.height + 1,
                usable and can_sign_alone(wallet, script),
            )
        )
    for txid in mempool.txids():
        entry = mempool.get(txid)
        for n, out in enumerate(entry.tx.outputs):
            script = wallet.multisig.get(out.pkh)
            if script is None:
                continue
            outpoint = OutPoint(txid, n)
            usable = mempool.spender_of(outpoint) is None
            coin = Coin(out.amount, out.pkh, tip_height + 1, False)
            result.append(WalletCoin(outpoint, coin, 0, usable and can_sign_alone(wallet, script)))
    return result


# --------------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class SignResult:
    tx: Transaction
    complete: bool
    errors: list[dict[str, Any]]  # bitcoind's shape: {txid, vout, sequence, error}


def valid_slots(script: MultisigScript, slots: Sequence[bytes], digest: bytes) -> list[bytes]:
    """One entry per key: the slot's signature when it verifies against that key, else b""."""
    if len(slots) != script.size:
        return [b""] * script.size
    return [
        slot if slot and verify_signature(key, slot, digest) else b""
        for key, slot in zip(script.pubkeys, slots, strict=True)
    ]


def keep_required(script: MultisigScript, slots: Sequence[bytes]) -> tuple[bytes, ...]:
    """At most m filled slots, the first ones in key order."""
    kept: list[bytes] = []
    filled = 0
    for slot in slots:
        keep = bool(slot) and filled < script.required
        filled += keep
        kept.append(slot if keep else b"")
    return tuple(kept)


def sign_with_wallet(wallet: Wallet, tx: Transaction, lookup: CoinLookup) -> SignResult:
    """Sign every input the wallet can: one-key inputs whose key it holds, and multisig inputs
    of a watched script (script filled in, then its own keys' slots up to m in total). Inputs it
    cannot sign are kept as they are; `complete` says whether every input is now fully and
    validly signed, and `errors` says why not for each input that is not."""
    digest = tx.sighash(wallet.params.genesis_hash)
    inputs: list[TxIn] = []
    errors: list[dict[str, Any]] = []
    for txin in tx.inputs:
        coin = lookup(txin.outpoint)
        signed, problem = _sign_input(wallet, txin, coin, digest)
        inputs.append(signed)
        if problem is not None:
            errors.append(
                {
                    "txid": txin.prev_txid.hex(),
                    "vout": txin.prev_index,
                    "sequence": txin.sequence,
                    "error": problem,
                }
            )
    return SignResult(tx.with_inputs(inputs), not errors, errors)


def _sign_input(
    wallet: Wallet, txin: TxIn, coin: Coin | None, digest: bytes
) -> tuple[TxIn, str | None]:
    if coin is None:
        return txin, "Input not found or already spent"
    key = wallet.keys.get(coin.pkh)
    if key is not None:
        signed = txin._replace(
            pubkey=key.public_key, signature=key.sign(digest), multisig=None, signature_slots=()
        )
        return signed, None
    script = wallet.multisig.get(coin.pkh)
    if script is not None:
        return _sign_multisig(wallet, txin, script, digest)
    return txin, _unsigned_reason(txin, coin, digest)


def _sign_multisig(
    wallet: Wallet, txin: TxIn, script: MultisigScript, digest: bytes
) -> tuple[TxIn, str | None]:
    present = txin.signature_slots if txin.multisig == script else ()
    slots = list(keep_required(script, valid_slots(script, present, digest)))
    filled = sum(1 for slot in slots if slot)
    for n, pubkey in enumerate(script.pubkeys):
        if filled >= script.required:
            break
        key = wallet.keys.get(pubkey_hash(pubkey))
        if key is not None and not slots[n]:
            slots[n] = key.sign(digest)
            filled += 1
    signed = txin._replace(pubkey=b"", signature=b"", multisig=script, signature_slots=tuple(slots))
    if filled < script.required:
        return signed, (
            f"Signing incomplete: {filled} of the {script.required} signatures required"
            " (another holder of the script's keys must sign)"
        )
    return signed, None


def _unsigned_reason(txin: TxIn, coin: Coin, digest: bytes) -> str | None:
    """None when an input the wallet cannot sign is already fully signed by someone else."""
    if txin.multisig is not None:
        if txin.multisig.script_hash != coin.pkh:
            return "Multisig script does not match the coin's address"
        filled = sum(1 for s in valid_slots(txin.multisig, txin.signature_slots, digest) if s)
        if filled != sum(1 for s in txin.signature_slots if s):
            # Consensus checks every filled slot: one bad signature spoils the input.
            return "A signature slot holds a signature that does not verify for its key"
        if filled != txin.multisig.required:
            return (
                f"Signing incomplete: {filled} valid of the {txin.multisig.required}"
                " signatures required, and the wallet does not watch this script"
            )
        return None
    if txin.pubkey and pubkey_hash(txin.pubkey) == coin.pkh and txin.signature:
        if verify_signature(txin.pubkey, txin.signature, digest):
            return None
        return "Signature does not verify"
    return "Unable to sign input: the wallet holds no key or script for this coin"


# --------------------------------------------------------------------------------- combining


def combine(
    txs: Sequence[Transaction], genesis_hash: bytes, lookup: CoinLookup | None = None
) -> Transaction:
    """Merge the signatures of copies of one transaction signed separately.

    Every copy must have the same sighash (the same outpoints, sequences, outputs, version and
    lock time). Per input, a signature is kept only if it verifies; a multisig input gets, per
    key, a verified signature from any copy, at most m in key order. When `lookup` knows the
    coin, only unlocking data that matches the coin's lock is considered.
    """
    if not txs:
        raise MultisigWalletError("no transactions to combine")
    if len(txs) > MAX_COMBINE_TRANSACTIONS:
        raise MultisigWalletError(
            f"at most {MAX_COMBINE_TRANSACTIONS} transactions can be combined, got {len(txs)}"
        )
    digest = txs[0].sighash(genesis_hash)
    for n, other in enumerate(txs[1:], start=1):
        if other.sighash(genesis_hash) != digest:
            raise MultisigWalletError(
                f"transaction {n} is not the same transaction as transaction 0 (inputs, "
                "sequences, outputs, version or lock time differ): only signatures of one "
                "transaction can be combined"
            )
    inputs = []
    for n, first in enumerate(txs[0].inputs):
        copies = [tx.inputs[n] for tx in txs]
        coin = lookup(first.outpoint) if lookup is not None else None
        inputs.append(_combine_input(n, first, copies, coin, digest))
    return txs[0].with_inputs(inputs)


def _combine_input(
    n: int, first: TxIn, copies: Sequence[TxIn], coin: Coin | None, digest: bytes
) -> TxIn:
    scripts = {c.multisig for c in copies if c.multisig is not None}
    if coin is not None:
        scripts = {s for s in scripts if s.script_hash == coin.pkh}
    if len(scripts) > 1:
        raise MultisigWalletError(
            f"input {n} carries different multisig scripts in different copies"
        )
    if scripts:
        [script] = scripts
        merged = [b""] * script.size
        for copy in copies:
            if copy.multisig != script:
                continue
            for k, slot in enumerate(valid_slots(script, copy.signature_slots, digest)):
                merged[k] = merged[k] or slot
        return first._replace(
            pubkey=b"",
            signature=b"",
            multisig=script,
            signature_slots=keep_required(script, merged),
        )
    for copy in copies:
        if copy.multisig is not None or not copy.pubkey or not copy.signature:
            continue
        if coin is not None and pubkey_hash(copy.pubkey) != coin.pkh:
            continue
        if verify_signature(copy.pubkey, copy.signature, digest):
            return first._replace(
                pubkey=copy.pubkey, signature=copy.signature, multisig=None, signature_slots=()
            )
    return first._replace(pubkey=b"", signature=b"", multisig=None, signature_slots=())
