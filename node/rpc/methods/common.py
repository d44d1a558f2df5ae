"""Parameter parsing shared by the method modules (not RPC methods themselves)."""

from __future__ import annotations

from collections.abc import Callable

from consensus.errors import DecodeError
from consensus.keys import encode_address
from consensus.tx import Transaction, decode_transaction
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPCError,
)
from node.wallet import WalletError


def hash_param(value: str, what: str = "hash") -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise RPCError(RPC_INVALID_PARAMETER, f"{what} must be 64 hex characters, got {value!r}")
    return raw


def hex_param(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RPCError(RPC_DESERIALIZATION_ERROR, f"{what} is not valid hex") from None


def address_pkh(node: NodeAPI, address: str) -> bytes:
    try:
        return node.wallet.decode(address)
    except WalletError as exc:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address: {exc}") from None


def address_encoder(node: NodeAPI) -> Callable[[bytes], str]:
    """pubkey hash → address on the node's network."""
    prefix = node.params.address_prefix
    return lambda pkh: encode_address(prefix, pkh)


def decode_tx(node: NodeAPI, hexstring: str) -> Transaction:
    try:
        return decode_transaction(hex_param(hexstring, "transaction"), node.params.max_block_size)
    except DecodeError as exc:
        raise RPCError(RPC_DESERIALIZATION_ERROR, f"TX decode failed: {exc}") from None
