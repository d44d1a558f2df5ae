"""Mempool benchmarks, each as a ratio to raw Ed25519 verifications per second in the same run.

1. Accepting N one-input/two-output transactions (decoded from bytes first, as the network layer
   hands them over). Goal: >= 0.7 of the raw verification rate, i.e. the pool adds little to the
   one signature check each transaction needs.
2. Connecting a block of 1000 transactions that were already accepted to the pool. Goal: >= 5x the
   raw verification rate, which only the shared signature cache can deliver.

Usage: python benchmarks/bench_mempool.py [--txs N] [--block-txs N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import ChainState
from consensus.keys import PrivateKey, pubkey_hash
from consensus.mempool import Mempool
from consensus.params import REGTEST
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, decode_transaction, sign_transaction

PARAMS = REGTEST.with_overrides({"coinbase_maturity": 2})
KEY = PrivateKey(bytes(range(32)))
PKH = pubkey_hash(KEY.public_key)
FAN_OUT = 1000  # outputs per funding transaction
FEE = 1000

T = TypeVar("T")


class NullReader:
    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return None

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        return None


class Bench:
    def __init__(self) -> None:
        self.chain = ChainState(PARAMS, NullReader())
        self.time = PARAMS.genesis_timestamp

    def block(self, txs: list[Transaction], fees: int = 0) -> Block:
        self.time += 10
        block = solve_block(assemble_block(self.chain, txs, fees, PKH, self.time))
        assert block is not None
        return block

    def mine(self, txs: list[Transaction] | None = None) -> None:
        result = self.chain.accept_block(self.block(txs or []), self.time + 1)
        assert result.status == "connected", result.reason

    def coinbase(self, height: int) -> tuple[OutPoint, int]:
        entry = self.chain.at_height(height)
        assert entry is not None
        block = self.chain.get_block(entry.hash)
        assert block is not None
        return OutPoint(block.txs[0].txid, 0), block.txs[0].outputs[0].amount


def sign(inputs: list[OutPoint], amounts: list[int]) -> Transaction:
    unsigned = Transaction(
        [TxIn(op.txid, op.index, b"", b"") for op in inputs], [TxOut(a, PKH) for a in amounts]
    )
    return sign_transaction(unsigned, [KEY] * len(inputs), PARAMS.genesis_hash)


def funded(bench: Bench, count: int) -> list[tuple[OutPoint, int]]:
    """`count` confirmed, mature outputs to spend."""
    funders = -(-count // FAN_OUT)
    for _ in range(funders + PARAMS.coinbase_maturity):
        bench.mine()
    txs, outputs = [], []
    for h in range(1, funders + 1):
        op, value = bench.coinbase(h)
        each = (value - FEE) // FAN_OUT
        tx = sign([op], [each] * FAN_OUT)
        txs.append(tx)
        outputs += [(OutPoint(tx.txid, n), each) for n in range(FAN_OUT)]
    bench.mine(txs)
    return outputs[:count]


def raw_verify_rate(samples: list[tuple[bytes, bytes, bytes]]) -> float:
    start = time.perf_counter()
    for pub, sig, msg in samples:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    return len(samples) / (time.perf_counter() - start)


def timed(fn: Callable[[], T], profile: bool, label: str) -> tuple[T, float]:
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    value = fn()
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    if profiler:
        print(f"--- profile: {label}")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return value, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=3000)
    parser.add_argument("--block-txs", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    bench = Bench()
    coins = funded(bench, args.txs)
    spends = [sign([op], [(value - FEE) // 2, value - FEE - (value - FEE) // 2])
              for op, value in coins]
    # What the network layer would hand over: freshly decoded transactions, nothing cached.
    wire = [decode_transaction(tx.encode(), PARAMS.max_block_size) for tx in spends]
    samples = [
        (tx.inputs[0].pubkey, tx.inputs[0].signature, tx.sighash(PARAMS.genesis_hash))
        for tx in spends
    ]
    raw_before = raw_verify_rate(samples)

    pool = Mempool(PARAMS, signature_cache=bench.chain.signature_cache)
    now = bench.time + 1

    def accept_all() -> None:
        for tx in wire:
            pool.accept(tx, bench.chain, now)

    _, elapsed = timed(accept_all, args.profile, "mempool acceptance")
    assert len(pool) == len(wire)
    raw = (raw_before + raw_verify_rate(samples)) / 2
    accept_rate = len(wire) / elapsed
    print(f"raw Ed25519 verifications:   {raw:10.0f} /s")
    print(f"mempool acceptance:          {accept_rate:10.0f} tx/s  "
          f"ratio {accept_rate / raw:.2f} (goal >= 0.7)")

    txs, fees = pool.select_for_block(PARAMS.max_block_size)
    txs = txs[: args.block_txs]
    fees = sum(pool.get(tx.txid).fee for tx in txs)  # type: ignore[union-attr]
    block = bench.block(txs, fees)
    block_size = block.size

    result, elapsed = timed(
        lambda: bench.chain.accept_block(block, bench.time + 1), args.profile, "block connect"
    )
    assert result.status == "connected", result.reason
    connect_rate = len(txs) / elapsed
    print(f"block connect ({len(txs)} txs, {block_size} bytes): {elapsed * 1000:.1f} ms, "
          f"{connect_rate:.0f} tx/s  ratio {connect_rate / raw:.2f} (goal >= 5)")

    update, elapsed = timed(
        lambda: pool.update_for_chain(result, bench.chain, bench.time + 1),
        args.profile, "mempool update",
    )
    assert len(update.included) == len(txs)
    print(f"mempool update_for_chain:    {elapsed * 1000:.1f} ms "
          f"({len(txs) / elapsed:.0f} tx/s), {len(pool)} left")

    _, elapsed = timed(lambda: pool.select_for_block(PARAMS.max_block_size), False, "select")
    print(f"select_for_block over {len(pool)} entries: {elapsed * 1000:.1f} ms")


if __name__ == "__main__":
    main()
