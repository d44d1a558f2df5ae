"""``== Multisig ==``: m-of-n addresses, address details, and merging partial signatures.

bitcoind lists ``createmultisig`` under Util, ``addmultisigaddress`` and ``getaddressinfo`` under
Wallet and ``combinerawtransaction`` under Rawtransactions; powlab keeps them together here.
``signrawtransactionwithwallet`` (Rawtransactions) signs multisig inputs too. See
docs/multisig.md.
"""

from __future__ import annotations

from typing import Any

from consensus.keys import PUBKEY_SIZE, is_weak_public_key
from consensus.multisig import MAX_MULTISIG_KEYS, MultisigError, MultisigScript
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_WALLET_ERROR,
    RPCError,
)
from node.rpc.methods.common import address_encoder, address_pkh, decode_tx
from node.rpc.registry import rpc_method
from node.wallet_errors import WalletWriteError
from node.wallet_multisig import (
    MAX_COMBINE_TRANSACTIONS,
    MultisigWalletError,
    can_sign_alone,
    coin_lookup,
    combine,
    descriptor,
    held_keys,
    watch,
)


def _pubkey(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise RPCError(
            RPC_INVALID_ADDRESS_OR_KEY, f"Invalid public key: {text[:80]!r} is not hex"
        ) from None
    if len(raw) != PUBKEY_SIZE:
        raise RPCError(
            RPC_INVALID_ADDRESS_OR_KEY,
            f"Invalid public key: {text[:80]!r} is {len(raw)} bytes, an Ed25519 key is"
            f" {PUBKEY_SIZE} (64 hex characters)",
        )
    if is_weak_public_key(raw):
        raise RPCError(
            RPC_INVALID_ADDRESS_OR_KEY,
            f"Invalid public key: {text[:80]!r} is a point of small order or a non-canonical"
            " encoding; a signature under it proves nothing",
        )
    return raw


def _script(nrequired: int, pubkeys: list[bytes]) -> MultisigScript:
    try:
        return MultisigScript.build(nrequired, pubkeys)
    except MultisigError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None


def _check_count(nrequired: int, keys: list[str]) -> None:
    # Before any key is parsed: a long list is refused by its length alone.
    if not 1 <= len(keys) <= MAX_MULTISIG_KEYS:
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f"a multisig address has 1 to {MAX_MULTISIG_KEYS} keys, got {len(keys)}",
        )
    if not 1 <= nrequired <= len(keys):
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f"nrequired must be between 1 and the number of keys ({len(keys)}), got {nrequired}",
        )


def _describe(node: NodeAPI, script: MultisigScript) -> dict[str, Any]:
    return {
        "address": address_encoder(node)(script.script_hash),
        "redeemScript": script.encode().hex(),
        "descriptor": descriptor(script),
    }


@rpc_method
def createmultisig(node: NodeAPI, nrequired: int, keys: list[str]) -> dict[str, Any]:
    """The m-of-n address of `nrequired` signatures among `keys` (32-byte Ed25519 public keys,
    hex, at most 16): {address, redeemScript, descriptor}. The wallet is not changed."""
    _check_count(nrequired, keys)
    return _describe(node, _script(nrequired, [_pubkey(k) for k in keys]))


@rpc_method
def addmultisigaddress(node: NodeAPI, nrequired: int, keys: list[str]) -> dict[str, Any]:
    """As createmultisig, and the wallet watches the address (saved in wallet.dat) and signs
    for it with the keys it holds. A key may be given as one of this wallet's own addresses."""
    _check_count(nrequired, keys)
    wallet = node.wallet
    pubkeys = []
    for key in keys:
        if isinstance(key, str) and len(key) == 2 * PUBKEY_SIZE:
            pubkeys.append(_pubkey(key))
            continue
        own = wallet.keys.get(address_pkh(node, key))
        if own is None:
            raise RPCError(
                RPC_WALLET_ERROR,
                f"{key} is not an address of this wallet: give its public key instead",
            )
        pubkeys.append(own.public_key)
    script = _script(nrequired, pubkeys)
    try:
        watch(wallet, script)
    except MultisigWalletError as exc:
        raise RPCError(RPC_WALLET_ERROR, str(exc)) from None
    except WalletWriteError as exc:
        raise RPCError(RPC_WALLET_ERROR, f"{exc}; the address is not watched") from None
    return _describe(node, script)


@rpc_method
def getaddressinfo(node: NodeAPI, address: str) -> dict[str, Any]:
    """What the wallet knows of `address`: ismine (it can spend alone: its own key, or at least
    m keys of a watched multisig), iswatchonly (a watched multisig it cannot spend alone),
    isscript, solvable, pubkey (own one-key addresses), and for watched multisig: pubkeys,
    sigsrequired, hex (the redeem script) and desc."""
    lock = address_pkh(node, address)
    wallet = node.wallet
    info: dict[str, Any] = {"address": address}
    key = wallet.keys.get(lock)
    script = wallet.multisig.get(lock)
    if key is not None:
        info.update(
            ismine=True, iswatchonly=False, isscript=False, solvable=True,
            pubkey=key.public_key.hex(),
        )  # fmt: skip
    elif script is not None:
        mine = can_sign_alone(wallet, script)
        info.update(
            ismine=mine,
            iswatchonly=not mine,
            isscript=True,
            solvable=True,
            script="multisig",
            hex=script.encode().hex(),
            pubkeys=[k.hex() for k in script.pubkeys],
            sigsrequired=script.required,
            keysheld=held_keys(wallet, script),
            desc=descriptor(script),
        )
    else:
        # A one-key and a multisig address look alike: an unknown one cannot be told apart.
        info.update(ismine=False, iswatchonly=False, isscript=False, solvable=False)
    return info


@rpc_method
def combinerawtransaction(node: NodeAPI, txs: list[str]) -> str:
    """Merge the signatures of copies of one transaction signed separately (e.g. by different
    wallets in parallel) into one hex; signatures that do not verify are dropped, and each
    multisig input keeps at most m. Copies of different transactions are refused."""
    if not 1 <= len(txs) <= MAX_COMBINE_TRANSACTIONS:
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f"give 1 to {MAX_COMBINE_TRANSACTIONS} transactions to combine, got {len(txs)}",
        )
    decoded = [decode_tx(node, tx) for tx in txs]
    try:
        merged = combine(decoded, node.params.genesis_hash, coin_lookup(node.chain, node.mempool))
    except MultisigWalletError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
    return merged.encode().hex()
