"""``== Mining ==``: mining on demand and continuous mining.

bitcoind lists ``generatetoaddress`` and ``generateblock`` under Generating; powlab keeps them
here with the powlab-only ``setmining`` (start or stop continuous mining, cap the hash rate).
"""

from __future__ import annotations

from typing import Any

from consensus.errors import ConsensusError
from consensus.pow import bits_to_target, difficulty
from node.interface import NodeAPI
from node.miner.miner import GenerateFailed, MinerError
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_VERIFY_ERROR,
    RPCError,
)
from node.rpc.methods.common import address_pkh, decode_tx, hash_param
from node.rpc.registry import rpc_method


@rpc_method
async def generatetoaddress(node: NodeAPI, nblocks: int, address: str) -> list[str]:
    """Mine `nblocks` blocks to `address` now (whether or not continuous mining is on). On a
    failure partway the error's data lists the hashes of the blocks already committed."""
    if nblocks < 0 or nblocks > 10_000:
        raise RPCError(RPC_INVALID_PARAMETER, "nblocks must be between 0 and 10000")
    pkh = address_pkh(node, address)
    try:
        return [h.hex() for h in await node.miner.generate(nblocks, pkh)]
    except GenerateFailed as exc:
        # Blocks submitted before the failure stay in the chain: say which (in `data`).
        committed = [h.hex() for h in exc.committed]
        raise RPCError(
            RPC_MISC_ERROR,
            f"{len(committed)} of {nblocks} blocks were committed before a failure: {exc}",
            data={"committed": committed},
        ) from None
    except MinerError as exc:
        raise RPCError(RPC_MISC_ERROR, str(exc)) from None


@rpc_method
async def generateblock(
    node: NodeAPI, address: str, transactions: list[str], submit: bool = True
) -> dict[str, str]:
    """Mine one block with exactly these transactions (mempool txids or raw hex); raw ones
    need not be in the mempool, so a conflicting transaction can be mined on purpose. With
    submit=false the block is returned as {hash, hex} and not announced (withheld)."""
    pkh = address_pkh(node, address)
    txs = []
    for item in transactions:
        if len(item) == 64:
            entry = node.mempool.get(hash_param(item, "txid"))
            if entry is None:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool")
            txs.append(entry.tx)
        else:
            txs.append(decode_tx(node, item))
    try:
        if not submit:
            block = await node.miner.solve(pkh, txs)
            return {"hash": block.hash.hex(), "hex": block.encode().hex()}
        hashes = await node.miner.generate(1, pkh, txs)
    except (MinerError, ConsensusError) as exc:
        raise RPCError(RPC_VERIFY_ERROR, f"block not valid: {exc}") from None
    return {"hash": hashes[0].hex()}


@rpc_method
def getmininginfo(node: NodeAPI) -> dict[str, Any]:
    """Height, difficulty, measured hash rate, whether mining, and the target spacing."""
    tip = node.chain.tip
    miner = node.miner
    return {
        "blocks": node.chain.height,
        "difficulty": difficulty(bits_to_target(tip.header.bits), node.params.pow_limit),
        "hashrate": miner.hashrate_measured(),
        "hashrate_limit": miner.hashrate,
        "mining": miner.enabled,
        "processes": miner.pool.processes if miner.pool else 0,
        "blocks_found": miner.blocks_found,
        "target_spacing": node.params.target_spacing,
        "pooledtx": len(node.mempool),
    }


@rpc_method
async def setmining(node: NodeAPI, enabled: bool, hashrate: float | None = None) -> None:
    """Start or stop continuous mining, optionally capping hashes per second (-1 lifts the
    cap: full speed)."""
    try:
        await node.miner.set_mining(enabled, hashrate)
    except MinerError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
