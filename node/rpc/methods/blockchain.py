"""``== Blockchain ==``: the chain, its blocks and headers.

As bitcoind's group, except that the mempool methods are listed under Rawtransactions and
``submitblock`` is here rather than under Mining (powlab's grouping, kept as it was).
"""

from __future__ import annotations

from typing import Any

from consensus.block import decode_block
from consensus.chainstate import BlockIndex
from consensus.errors import ConsensusError, DecodeError
from consensus.pow import bits_to_target, difficulty
from node.interface import NodeAPI
from node.rpc.errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPCError,
)
from node.rpc.methods.common import address_encoder, hash_param, hex_param
from node.rpc.registry import rpc_method


def _chain_entry(node: NodeAPI, block_hash: str) -> BlockIndex:
    entry = node.chain.get(hash_param(block_hash, "blockhash"))
    if entry is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
    return entry


def _header_json(node: NodeAPI, entry: BlockIndex) -> dict[str, Any]:
    chain = node.chain
    nxt = chain.at_height(entry.height + 1) if chain.is_active(entry) else None
    target = bits_to_target(entry.header.bits)
    return {
        **entry.header.to_json(),
        "confirmations": chain.confirmations(entry),
        "height": entry.height,
        "mediantime": chain.median_time_past(entry),
        "difficulty": difficulty(target, node.params.pow_limit),
        "chainwork": f"{entry.chainwork:064x}",
        "nextblockhash": nxt.hash.hex() if nxt else None,
    }


@rpc_method
def getblockchaininfo(node: NodeAPI) -> dict[str, Any]:
    """Chain, height, best block, work, difficulty, median time and finality depth;
    `warnings` names any heavier branch refused beyond finality (a chain split) and any
    save that failed (a full disk)."""
    params = node.params
    chain = node.chain
    tip = chain.tip
    return {
        "chain": params.name,
        "blocks": chain.height,
        "headers": chain.best_header.height,
        "bestblockhash": tip.hash.hex(),
        "chainwork": f"{tip.chainwork:064x}",
        "difficulty": difficulty(bits_to_target(tip.header.bits), params.pow_limit),
        "mediantime": chain.median_time_past(tip),
        "time": tip.header.timestamp,
        "finality_depth": node.finality_depth,
        "enforce_finality": chain.enforce_finality,
        "genesis": params.genesis_hash.hex(),
        "orphan_blocks": chain.orphan_count(),
        # bitcoind's field: a string, empty when all is well.
        # Saves that failed on a full disk are listed too, as bitcoind lists its own.
        "warnings": " ".join(
            [c.warning() for c in chain.finality_conflicts()] + node.storage_warnings()
        ),
        "finality_conflicts": [c.to_json() for c in chain.finality_conflicts()],
    }


@rpc_method
def getblockcount(node: NodeAPI) -> int:
    """Height of the active chain's tip."""
    return node.chain.height


@rpc_method
def getbestblockhash(node: NodeAPI) -> str:
    """Hash of the active chain's tip."""
    return node.chain.tip.hash.hex()


@rpc_method
def getblockhash(node: NodeAPI, height: int) -> str:
    """Hash of the active-chain block at `height`."""
    entry = node.chain.at_height(height)
    if entry is None:
        raise RPCError(RPC_INVALID_PARAMETER, "Block height out of range")
    return entry.hash.hex()


@rpc_method
def getblock(node: NodeAPI, blockhash: str, verbosity: int = 1) -> Any:
    """Block as hex (verbosity 0), JSON with txids (1) or with transactions (2)."""
    entry = _chain_entry(node, blockhash)
    block = node.chain.get_block(entry.hash)
    if block is None:
        raise RPCError(RPC_MISC_ERROR, "Block not available (header only)")
    if verbosity == 0:
        return block.encode().hex()
    info = _header_json(node, entry)
    info["size"] = block.size
    info["nTx"] = len(block.txs)
    if verbosity >= 2:
        encode = address_encoder(node)
        info["tx"] = [tx.to_json(encode) for tx in block.txs]
    else:
        info["tx"] = [tx.txid.hex() for tx in block.txs]
    return info


@rpc_method
def getblockheader(node: NodeAPI, blockhash: str, verbose: bool = True) -> Any:
    """Header as JSON (or hex of the 80-byte header when verbose is false)."""
    entry = _chain_entry(node, blockhash)
    return _header_json(node, entry) if verbose else entry.header.encode().hex()


@rpc_method
def getchaintips(node: NodeAPI) -> list[dict[str, Any]]:
    """Every branch tip with its status: active, valid-fork, valid-headers, headers-only,
    invalid."""
    return [
        {"height": t.height, "hash": t.hash.hex(), "branchlen": t.branchlen, "status": t.status}
        for t in node.chain.chain_tips()
    ]


@rpc_method
def invalidateblock(node: NodeAPI, blockhash: str) -> None:
    """Mark a block and its descendants invalid; the node moves to the best other chain."""
    try:
        node.invalidate_block(_chain_entry(node, blockhash).hash)
    except ConsensusError as exc:
        raise RPCError(RPC_MISC_ERROR, str(exc)) from None


@rpc_method
def reconsiderblock(node: NodeAPI, blockhash: str) -> None:
    """Undo invalidateblock on a block, its ancestors and descendants."""
    node.reconsider_block(_chain_entry(node, blockhash).hash)


@rpc_method
def submitblock(node: NodeAPI, hexdata: str) -> str | None:
    """Submit a block (hex). Null when accepted, else the reason."""
    try:
        block = decode_block(hex_param(hexdata, "block"), node.params.max_block_size)
    except DecodeError as exc:
        raise RPCError(RPC_DESERIALIZATION_ERROR, f"Block decode failed: {exc}") from None
    result = node.submit_block(block)
    if result.status == "connected":
        return None
    if result.status in ("side-branch", "orphan"):
        return "inconclusive"
    return result.reason or result.status
