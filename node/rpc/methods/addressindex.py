"""``== Addressindex ==``: an address's history, balance and coins (``--addressindex``).

Named, parameterised and shaped as the addressindex RPCs of Bitcore/Insight, Dash and Zcash:
the first parameter is ``{"addresses": [...], "start": h, "end": h}`` or a single address string;
amounts are integers in the smallest unit under their key ``satoshis``. Confirmed rows come from
the index on disk, never loaded whole; ``getaddressmempool`` scans the mempool.
"""

from __future__ import annotations

from typing import Any

from consensus.addressindex import AddressIndexEntry
from consensus.tx import OutPoint
from consensus.update import AddressIndexReader
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPCError,
)
from node.rpc.registry import rpc_method
from node.storewriter import WrittenAddressIndex
from node.wallet import WalletError

# Addresses one request may name: each is a separate range of the index to read.
MAX_ADDRESSES_PER_REQUEST = 100
# Rows one answer may hold (deltas, txids, coins or mempool entries); past it the caller is told
# to narrow the heights with start/end. Far above the 10,000-entry address the benchmark reads.
MAX_ADDRESS_RESULTS = 50_000
NOT_ENABLED = "address index is not enabled: restart the node with --addressindex"
_NO_END = (1 << 63) - 1

Request = dict[str, Any] | str


def _index(node: NodeAPI) -> AddressIndexReader:
    index = node.address_index
    if index is None:
        raise RPCError(RPC_MISC_ERROR, NOT_ENABLED)
    return index


async def _written_index(node: NodeAPI) -> AddressIndexReader:
    """The index once the store writer has written every block the chain connected, waited
    for without holding the event loop (a commit can take long, or hang on a sick disk)."""
    index = _index(node)
    if isinstance(index, WrittenAddressIndex):
        return await index.settled()
    return index


_ADDRESSES_ONLY = frozenset({"addresses"})
_WITH_RANGE = frozenset({"addresses", "start", "end"})


def _addresses(
    node: NodeAPI, request: Request, keys: frozenset[str] = _ADDRESSES_ONLY
) -> tuple[list[bytes], dict[bytes, str]]:
    """The distinct pubkey hashes the request names, in its order, and their address text;
    `keys` are the request keys the method takes (anything else is refused, not ignored)."""
    raw: object = request
    if not isinstance(request, dict | str):
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f'expected {{"addresses": [...]}} or an address string, got {type(request).__name__}',
        )
    if isinstance(request, dict):
        unknown = sorted(str(k)[:40] for k in set(request) - keys)
        if unknown:
            raise RPCError(
                RPC_INVALID_PARAMETER, f"unknown keys {unknown}: this method takes {sorted(keys)}"
            )
        if "addresses" not in request:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Addresses is expected to be an array")
        raw = request["addresses"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Addresses is expected to be an array")
    if not items:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "No addresses given")
    if len(items) > MAX_ADDRESSES_PER_REQUEST:
        raise RPCError(
            RPC_INVALID_PARAMETER,
            f"too many addresses: {len(items)} > {MAX_ADDRESSES_PER_REQUEST} per request",
        )
    pkhs: list[bytes] = []
    names: dict[bytes, str] = {}
    for item in items:
        if not isinstance(item, str):
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address: {str(item)[:80]!r}")
        try:
            pkh = node.wallet.decode(item)
        except WalletError as exc:
            # Cut, as above: the message quotes the input, and the reply is logged.
            message = f"Invalid address: {str(exc)[:200]}"
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, message) from None
        if pkh not in names:
            pkhs.append(pkh)
            names[pkh] = item
    return pkhs, names


def _height_range(node: NodeAPI, request: Request) -> tuple[int, int]:
    if not isinstance(request, dict):
        return 0, _NO_END
    bounds = []
    for key, default in (("start", 0), ("end", _NO_END)):
        value = request.get(key, default)
        if type(value) is not int or not 0 <= value <= _NO_END:
            raise RPCError(
                RPC_INVALID_PARAMETER, f"{key} must be a non-negative block height, got {value!r}"
            )
        bounds.append(value)
    start, end = bounds
    # Bitcore treats 0 as "not given" for both.
    if end == 0:
        end = _NO_END
    if end < start:
        raise RPCError(RPC_INVALID_PARAMETER, f"End value {end} is below start value {start}")
    return start, end


def _too_many(what: str) -> RPCError:
    return RPCError(
        RPC_INVALID_PARAMETER,
        f"more than {MAX_ADDRESS_RESULTS} {what}: ask for fewer addresses or a narrower"
        " height range with start/end",
    )


async def _deltas(
    node: NodeAPI, request: Request
) -> tuple[list[AddressIndexEntry], dict[bytes, str]]:
    _index(node)
    pkhs, names = _addresses(node, request, _WITH_RANGE)
    start, end = _height_range(node, request)
    index = await _written_index(node)
    rows = index.address_deltas(pkhs, start, end, MAX_ADDRESS_RESULTS + 1)
    if len(rows) > MAX_ADDRESS_RESULTS:
        raise _too_many("entries")
    return rows, names


@rpc_method
async def getaddresstxids(node: NodeAPI, request: Request) -> list[str]:
    """Txids of the confirmed transactions paying to or spending from the addresses, in chain
    order. request: {"addresses": [...], "start": h, "end": h} (heights inclusive) or an
    address."""
    rows, _ = await _deltas(node, request)
    seen: dict[bytes, None] = {}
    for row in rows:
        seen.setdefault(row.delta.txid, None)
    return [txid.hex() for txid in seen]


@rpc_method
async def getaddressdeltas(node: NodeAPI, request: Request) -> list[dict[str, Any]]:
    """Every confirmed change to the addresses' balances, in chain order: {satoshis (negative
    when spending), txid, index (output or input), blockindex, height, address}."""
    rows, names = await _deltas(node, request)
    return [
        {
            "satoshis": row.delta.satoshis,
            "txid": row.delta.txid.hex(),
            "index": row.key.index,
            "blockindex": row.key.blockindex,
            "height": row.key.height,
            "address": names[row.key.pkh],
        }
        for row in rows
    ]


@rpc_method
async def getaddressbalance(node: NodeAPI, request: Request) -> dict[str, int]:
    """The addresses' confirmed balance and everything they ever received (change included)."""
    _index(node)
    pkhs, _ = _addresses(node, request)
    index = await _written_index(node)
    balance = received = 0
    for pkh in pkhs:
        b, r = index.address_balance(pkh)
        balance, received = balance + b, received + r
    return {"balance": balance, "received": received}


@rpc_method
async def getaddressutxos(node: NodeAPI, request: Request) -> list[dict[str, Any]]:
    """The addresses' confirmed unspent outputs, oldest first: {address, txid, outputIndex,
    satoshis, height}."""
    _index(node)
    pkhs, names = _addresses(node, request)
    index = await _written_index(node)
    rows = index.address_utxos(pkhs, MAX_ADDRESS_RESULTS + 1)
    if len(rows) > MAX_ADDRESS_RESULTS:
        raise _too_many("unspent outputs")
    return [
        {
            "address": names[row.pkh],
            "txid": row.outpoint.txid.hex(),
            "outputIndex": row.outpoint.index,
            "satoshis": row.satoshis,
            "height": row.height,
        }
        for row in rows
    ]


@rpc_method
def getaddressmempool(node: NodeAPI, request: Request) -> list[dict[str, Any]]:
    """Unconfirmed changes to the addresses, in mempool arrival order: {address, txid, index,
    satoshis (negative when spending), timestamp, and for spends prevtxid, prevout}."""
    _index(node)  # the same switch as the confirmed history, as in Bitcore
    pkhs, names = _addresses(node, request)
    wanted = set(pkhs)
    mempool = node.mempool
    found: list[dict[str, Any]] = []
    for txid in mempool.txids():
        entry = mempool.get(txid)
        if entry is None:
            continue
        tx = entry.tx
        for n, txin in enumerate(tx.inputs):
            prev = _spent_output(node, txin.outpoint)
            if prev is not None and prev[0] in wanted:
                found.append(
                    {
                        "address": names[prev[0]],
                        "txid": txid.hex(),
                        "index": n,
                        "satoshis": -prev[1],
                        "timestamp": entry.time,
                        "prevtxid": txin.outpoint.txid.hex(),
                        "prevout": txin.outpoint.index,
                    }
                )
        for n, out in enumerate(tx.outputs):
            if out.pkh in wanted:
                found.append(
                    {
                        "address": names[out.pkh],
                        "txid": txid.hex(),
                        "index": n,
                        "satoshis": out.amount,
                        "timestamp": entry.time,
                    }
                )
        if len(found) > MAX_ADDRESS_RESULTS:
            raise _too_many("mempool entries")
    return found


def _spent_output(node: NodeAPI, outpoint: OutPoint) -> tuple[bytes, int] | None:
    """(pkh, amount) of the output a mempool transaction spends: a coin or an in-pool parent."""
    coin = node.chain.coin(outpoint)
    if coin is not None:
        return coin.pkh, coin.amount
    parent = node.mempool.get(outpoint.txid)
    if parent is None or outpoint.index >= len(parent.tx.outputs):
        return None
    out = parent.tx.outputs[outpoint.index]
    return out.pkh, out.amount
