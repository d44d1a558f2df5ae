"""Benchmark a 100-block reorganisation on a SQLiteStore: `python benchmarks/bench_reorg.py`.

Scenario (regtest with ``coinbase_maturity`` overridden to 1, so eleven coinbases fund the run
after one block each instead of after a hundred):

* heights 1-11: coinbases; height 12: eleven fan-out transactions of 1000 outputs each;
* the active chain: heights 13-112, 100 blocks of 100 one-input/two-output spends of the fan-out
  outputs, each delivered and committed (signatures verified, so they sit in the signature cache);
* a competing branch from height 12: 100 blocks of 100 such spends (double-spending the same
  outputs, so every transaction differs), delivered as side-branch blocks: stored, not connected,
  their signatures never checked (equal work: the first-seen chain keeps the tie);
* timed: delivering block 113 of the branch, i.e. `accept_block` (disconnect 100 + connect 101,
  10,100 signature checks) plus `store.apply(chain.take_update())`, one SQLite transaction.

Baselines, same run: the bare Ed25519 verification rate (the floor: one check per spend), and a
fresh store holding heights 0-12 receiving the same 101 branch blocks one by one, each committed as
a syncing node would (cold signature cache as well). Also measured: the reorganisation with the
branch's signatures already cached, which isolates their cost, and a cProfile run that names the
hot spots.

Usage: python benchmarks/bench_reorg.py [--repeat N] [--no-profile] [--top N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consensus.block import Block, BlockHeader
from consensus.blockbuild import BLOCK_VERSION
from consensus.chainstate import ChainState
from consensus.hashing import merkle_root
from consensus.keys import PrivateKey, pubkey_hash
from consensus.params import REGTEST
from consensus.pow import bits_to_target, hash_meets_target
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, make_coinbase, sign_transaction
from node.verify import ParallelVerifier
from storage import SQLiteStore, open_store

PARAMS = REGTEST.with_overrides({"coinbase_maturity": 1})
NOW = PARAMS.genesis_timestamp + 1_000_000
KEY = PrivateKey(bytes(range(32)))
PKH = pubkey_hash(KEY.public_key)
OTHER = pubkey_hash(PrivateKey(bytes(range(1, 33))).public_key)
FUNDING_BLOCKS = 11
FAN_OUT = 1000
DEPTH = 100  # blocks disconnected by the reorganisation
TXS_PER_BLOCK = 100
FEE = 1000


Parent = tuple[bytes, int, int]  # (hash, height, timestamp) of the block to build on


def make_block(parent: Parent, txs: Sequence[Transaction], fees: int, tag: int) -> Block:
    """A solved block on `parent`. No chain state needed: regtest never retargets."""
    prev_hash, prev_height, prev_time = parent
    height = prev_height + 1
    coinbase = make_coinbase(
        height, [TxOut(PARAMS.block_reward(height) + fees, PKH)], tag.to_bytes(8, "big")
    )
    all_txs = [coinbase, *txs]
    header = BlockHeader(
        BLOCK_VERSION,
        prev_hash,
        merkle_root([t.txid for t in all_txs]),
        prev_time + PARAMS.target_spacing,
        PARAMS.pow_limit_bits,
        0,
    )
    target = bits_to_target(header.bits)
    while not hash_meets_target(header.hash, target):
        header = header.with_nonce(header.nonce + 1)
    return Block(header, all_txs)


def spend(outpoint: OutPoint, amount: int, variant: int) -> Transaction:
    """A one-input/two-output spend; `variant` makes each branch's spend of a coin distinct."""
    first = amount // 2 - variant
    unsigned = Transaction(
        [TxIn(outpoint.txid, outpoint.index, b"", b"")],
        [TxOut(first, OTHER), TxOut(amount - first - FEE, PKH)],
    )
    return sign_transaction(unsigned, [KEY], PARAMS.genesis_hash)


def link(parent: Block, height: int) -> Parent:
    return (parent.hash, height, parent.header.timestamp)


def funded_history() -> tuple[list[Block], Parent, list[tuple[OutPoint, int]]]:
    """Blocks 1-12: eleven coinbases, then one block fanning each out into FAN_OUT coins of KEY's
    (the coins every benchmark spends); with the tip to build on and those coins."""
    common: list[Block] = []
    genesis = PARAMS.genesis_block
    parent: Parent = (genesis.hash, 0, genesis.header.timestamp)
    for n in range(FUNDING_BLOCKS):
        common.append(make_block(parent, [], 0, n))
        parent = link(common[-1], n + 1)
    fan_outs = []
    for block in common:
        coinbase = block.txs[0]
        amount = (coinbase.outputs[0].amount - FEE) // FAN_OUT
        unsigned = Transaction([TxIn(coinbase.txid, 0, b"", b"")], [TxOut(amount, PKH)] * FAN_OUT)
        fan_outs.append(sign_transaction(unsigned, [KEY], PARAMS.genesis_hash))
    fees = sum(
        b.txs[0].outputs[0].amount - t.total_out() for b, t in zip(common, fan_outs, strict=True)
    )
    common.append(make_block(parent, fan_outs, fees, 99))
    coins = [(OutPoint(t.txid, n), o.amount) for t in fan_outs for n, o in enumerate(t.outputs)]
    return common, link(common[-1], FUNDING_BLOCKS + 1), coins


def build_blocks() -> tuple[list[Block], list[Block], list[Block]]:
    """(common history 1-12, active chain 13-112, competing branch 13-113), deterministically."""
    common, fork, coins = funded_history()

    def branch(length: int, variant: int) -> list[Block]:
        blocks: list[Block] = []
        parent: Parent = fork
        for i in range(length):
            chunk = coins[i * TXS_PER_BLOCK : (i + 1) * TXS_PER_BLOCK]
            txs = [spend(op, amount, variant) for op, amount in chunk]
            blocks.append(make_block(parent, txs, FEE * len(txs), 1000 * variant + i))
            parent = link(blocks[-1], fork[1] + i + 1)
        return blocks

    return common, branch(DEPTH, 1), branch(DEPTH + 1, 2)


VERIFIER = ParallelVerifier()


def deliver(chain: ChainState, store: SQLiteStore, block: Block, expect: str) -> None:
    result = chain.accept_block(block, NOW)
    if result.status != expect:
        raise RuntimeError(f"block {block.hash.hex()}: {result.status} ({result.reason})")
    store.apply(chain.take_update())


def open_chain(datadir: Path, blocks: Sequence[Block]) -> tuple[ChainState, SQLiteStore]:
    store = open_store(datadir, PARAMS)
    # The node's parallel verifier, as the daemon uses it (threads: Ed25519 drops the GIL).
    chain = ChainState(PARAMS, store, store.load(), verify_batch=VERIFIER)
    store.apply(chain.take_update())
    for block in blocks:
        deliver(chain, store, block, "connected")
    return chain, store


def prepared_reorg(
    datadir: Path, common: list[Block], active: list[Block], branch: list[Block]
) -> tuple[ChainState, SQLiteStore]:
    """A node on `active` that holds all but the last branch block as a side branch."""
    chain, store = open_chain(datadir, [*common, *active])
    for block in branch[:-1]:
        deliver(chain, store, block, "side-branch")
    return chain, store


def timed_reorg(chain: ChainState, store: SQLiteStore, last: Block) -> float:
    t0 = time.perf_counter()
    result = chain.accept_block(last, NOW)
    store.apply(chain.take_update())
    elapsed = time.perf_counter() - t0
    if result.reorg_depth != DEPTH or len(result.connected) != DEPTH + 1:
        raise RuntimeError(f"unexpected reorg: {result.status} {result.reason}")
    return elapsed


def raw_verify_seconds(blocks: Sequence[Block], repeats: int = 3) -> float:
    """Seconds per bare Ed25519 verification in this run: the floor for a cold-cache reorg."""
    jobs = [
        (tx.inputs[0].pubkey, tx.inputs[0].signature, tx.sighash(PARAMS.genesis_hash))
        for block in blocks[:20]
        for tx in block.txs[1:]
    ]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for pubkey, signature, digest in jobs:
            Ed25519PublicKey.from_public_bytes(pubkey).verify(signature, digest)
        best = min(best, (time.perf_counter() - t0) / len(jobs))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--top", type=int, default=18, help="profile rows to print")
    args = parser.parse_args()

    t0 = time.perf_counter()
    common, active, branch = build_blocks()
    print(
        f"built {len(common) + len(active) + len(branch)} blocks"
        f" ({(len(active) + len(branch)) * TXS_PER_BLOCK} spends)"
        f" in {time.perf_counter() - t0:.1f} s; coinbase_maturity=1 (override)"
    )

    reorg_times, cached_times, baseline_times = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-reorg-") as tmp:
        for run in range(args.repeat):
            chain, store = prepared_reorg(Path(tmp, f"reorg{run}"), common, active, branch)
            with store:
                reorg_times.append(timed_reorg(chain, store, branch[-1]))

            chain, store = prepared_reorg(Path(tmp, f"cached{run}"), common, active, branch)
            with store:
                for block in branch:
                    for tx in block.txs[1:]:
                        chain.signature_cache.add(tx.txid)
                cached_times.append(timed_reorg(chain, store, branch[-1]))

            chain, store = open_chain(Path(tmp, f"base{run}"), common)
            with store:
                t1 = time.perf_counter()
                for block in branch:
                    deliver(chain, store, block, "connected")
                baseline_times.append(time.perf_counter() - t1)

        profile_text = ""
        if not args.no_profile:
            chain, store = prepared_reorg(Path(tmp, "profile"), common, active, branch)
            with store:
                profiler = cProfile.Profile()
                profiler.enable()
                timed_reorg(chain, store, branch[-1])
                profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
            profile_text = out.getvalue()

    raw = raw_verify_seconds(branch)
    reorg, cached, baseline = min(reorg_times), min(cached_times), min(baseline_times)
    moved = 2 * DEPTH + 1
    sigs = (DEPTH + 1) * TXS_PER_BLOCK
    print(
        f"\nreorg {DEPTH} deep (disconnect {DEPTH} + connect {DEPTH + 1} blocks,"
        f" {sigs} new signatures, one commit), best of {args.repeat}:"
    )
    print(
        f"  reorg time           {reorg:.3f} s   (median {statistics.median(reorg_times):.3f} s;"
        f" goal < 1 s: {'met' if reorg < 1 else 'MISSED'})"
    )
    print(
        f"  blocks/s             {moved / reorg:.0f} disconnected+connected"
        f" ({(DEPTH + 1) / reorg:.0f} connected)"
    )
    print(
        f"  signatures cached    {cached:.3f} s -> signature checks are"
        f" {reorg - cached:.3f} s = {100 * (reorg - cached) / reorg:.0f}% of the reorg"
        f" ({1e6 * (reorg - cached) / sigs:.0f} us per signature)"
    )
    print(
        f"  raw Ed25519 verify   {1e6 * raw:.0f} us -> {sigs} signatures need"
        f" {sigs * raw:.3f} s on one core; reorg / that floor = {reorg / (sigs * raw):.2f}"
    )
    print(
        f"  baseline: connect the same {DEPTH + 1} blocks on a fresh chain, one commit each:"
        f" {baseline:.3f} s ({(DEPTH + 1) / baseline:.0f} blocks/s)"
    )
    print(f"  ratio reorg / baseline  {reorg / baseline:.2f}")
    if profile_text:
        print("\ncProfile of one reorganisation (profiling overhead inflates the total):")
        print(profile_text)


if __name__ == "__main__":
    main()
