"""Benchmark the address index on a SQLiteStore: `python benchmarks/bench_addressindex.py`.

Indexing cost: the same 112 blocks (bench_reorg's history: 11 funding coinbases, one block of
eleven 1000-output fan-outs, then 100 blocks of 100 one-input/two-output spends, here paying
pseudo-random addresses so index rows scatter over the b-tree as real ones do) are connected on a
fresh store, each `accept_block` followed by `store.apply(chain.take_update())` as the node does,
once without and once with the address index; runs alternate so load drifts hit both alike. The
ratio with/without is reported twice: with a cold signature cache (a syncing node verifies every
signature) and with a warm one (a node following the tip has verified the transactions when they
entered its mempool), which leaves storage and bookkeeping, so the index's share is largest.

Lookup: an address with 10,000 index rows (5,000 payments at distinct heights, 5,000 spends)
beside the rows of the 112 blocks; timed `address_deltas` (the rows getaddressdeltas and
getaddresstxids read), `address_balance` (getaddressbalance) and `address_utxos`
(getaddressutxos) through the store, with the rows folded into `address_deltas` and with them
staged (storage/addressstaging.py); and a lookup of an address without rows while the staging
table is full, the search every query pays.

Usage: python benchmarks/bench_addressindex.py [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_reorg import (
    FEE,
    FUNDING_BLOCKS,
    KEY,
    PARAMS,
    funded_history,
    link,
    make_block,
)
from consensus.addressindex import AddressDelta, AddressDeltaKey
from consensus.block import Block
from consensus.chainstate import ChainState
from consensus.keys import PUBKEY_HASH_SIZE
from consensus.params import DEFAULT_SIGNATURE_CACHE_SIZE
from consensus.tx import Transaction, TxIn, TxOut, sign_transaction
from consensus.update import ChainUpdate
from consensus.validation import SignatureCache
from node.addressindex import sync_address_index
from node.rpc.methods.addressindex import MAX_ADDRESS_RESULTS
from node.verify import ParallelVerifier
from storage import SQLiteStore, open_store
from storage.addressstaging import ADDRESS_STAGING_ROWS

NOW = PARAMS.genesis_timestamp + 1_000_000
BLOCKS = 100
TXS_PER_BLOCK = 100
LOOKUP_ENTRIES = 10_000
VERIFIER = ParallelVerifier()


def address(n: int) -> bytes:
    return hashlib.sha256(b"bench address %d" % n).digest()[:PUBKEY_HASH_SIZE]


def build_blocks() -> list[Block]:
    blocks, parent, coins = funded_history()
    payee = 0
    for i in range(BLOCKS):
        txs = []
        for outpoint, amount in coins[i * TXS_PER_BLOCK : (i + 1) * TXS_PER_BLOCK]:
            first = amount // 2
            unsigned = Transaction(
                [TxIn(outpoint.txid, outpoint.index, b"", b"")],
                [TxOut(first, address(payee)), TxOut(amount - first - FEE, address(payee + 1))],
            )
            payee += 2
            txs.append(sign_transaction(unsigned, [KEY], PARAMS.genesis_hash))
        blocks.append(make_block(parent, txs, FEE * len(txs), 1000 + i))
        parent = link(blocks[-1], FUNDING_BLOCKS + 2 + i)
    return blocks


def connect_all(
    blocks: Sequence[Block], indexed: bool, cache: SignatureCache | None
) -> tuple[float, SQLiteStore, Path, tempfile.TemporaryDirectory[str]]:
    """Seconds to connect and commit `blocks` on a fresh store (the store is left open)."""
    scratch = tempfile.TemporaryDirectory()
    datadir = Path(scratch.name)
    store = open_store(datadir, PARAMS)
    chain = ChainState(
        PARAMS,
        store,
        store.load(),
        verify_batch=VERIFIER,
        signature_cache=SignatureCache(DEFAULT_SIGNATURE_CACHE_SIZE) if cache is None else cache,
    )
    store.apply(chain.take_update())
    if indexed:
        sync_address_index(store, chain)
        chain.address_index = True
    t0 = time.perf_counter()
    for block in blocks:
        result = chain.accept_block(block, NOW)
        if result.status != "connected":
            raise RuntimeError(f"{result.status} {result.reason}")
        store.apply(chain.take_update())
    return time.perf_counter() - t0, store, datadir, scratch


def ratio(blocks: Sequence[Block], repeat: int, warm: SignatureCache | None) -> tuple[float, ...]:
    plain, indexed = [], []
    for _ in range(repeat):
        for flag, into in ((False, plain), (True, indexed)):
            seconds, store, _, scratch = connect_all(blocks, flag, warm)
            store.close()
            scratch.cleanup()
            into.append(seconds)
    p, i = statistics.median(plain), statistics.median(indexed)
    return p, i, i / p


def rebuild_seconds(blocks: Sequence[Block]) -> float:
    """Seconds `--reindex-addresses` takes for `blocks` (read back from the store)."""
    _, store, datadir, scratch = connect_all(blocks, False, None)
    try:
        store.close()
        store = open_store(datadir, PARAMS)
        chain = ChainState(PARAMS, store, store.load())
        t0 = time.perf_counter()
        sync_address_index(store, chain, rebuild=True)
        return time.perf_counter() - t0
    finally:
        store.close()
        scratch.cleanup()


def lookup(
    blocks: Sequence[Block], repeat: int, staged: bool
) -> tuple[float, float, float, int, float]:
    """Median seconds of address_deltas, address_balance and address_utxos for an address with
    LOOKUP_ENTRIES rows, all in address_deltas or (`staged`) all in the staging table; the row
    count; and the seconds to look up an address without rows among a full staging table."""
    _, store, _, scratch = connect_all(blocks, True, None)
    try:
        target = address(-1)
        update = ChainUpdate()
        half = LOOKUP_ENTRIES // 2
        for n in range(half):
            txid = hashlib.sha256(b"payment %d" % n).digest()
            update.address_deltas[AddressDeltaKey(target, 200 + n, 1, False, 0)] = AddressDelta(
                txid, 1_000 + n
            )
            update.address_deltas[AddressDeltaKey(target, 200 + n + 1, 2, True, 0)] = AddressDelta(
                hashlib.sha256(b"spend %d" % n).digest(), -(1_000 + n)
            )
        # Fold every row staged so far (a no-op delete is enough to trigger it), then write the
        # target's rows: staged, or folded at once.
        store.staging_bound = 0
        store.apply(ChainUpdate(address_deltas={AddressDeltaKey(target, 0, 0, False, 0): None}))
        store.staging_bound = ADDRESS_STAGING_ROWS if staged else 0
        store.apply(update)
        deltas_times, balance_times, utxo_times = [], [], []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(store.address_deltas([target], 0, 1 << 62, MAX_ADDRESS_RESULTS + 1))
            deltas_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.address_balance(target)
            balance_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.address_utxos([target], MAX_ADDRESS_RESULTS + 1)
            utxo_times.append(time.perf_counter() - t0)
        # Fill the staging table to its bound with other addresses' rows (it keeps the target's
        # when `staged`), 300 to a height as in a block, and look up an address that has none.
        store.staging_bound = ADDRESS_STAGING_ROWS
        filler = ChainUpdate()
        for n in range(ADDRESS_STAGING_ROWS - store.address_rows_staged):
            key = AddressDeltaKey(address(10**6 + n), 10**5 + n // 300, n % 300, False, 0)
            filler.address_deltas[key] = AddressDelta(bytes(32), 1)
        store.apply(filler)
        assert store.address_rows_staged == ADDRESS_STAGING_ROWS
        absent = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            store.address_deltas([address(-2)], 0, 1 << 62, MAX_ADDRESS_RESULTS + 1)
            absent.append(time.perf_counter() - t0)
        return (
            statistics.median(deltas_times),
            statistics.median(balance_times),
            statistics.median(utxo_times),
            rows,
            statistics.median(absent),
        )
    finally:
        store.close()
        scratch.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement")
    args = parser.parse_args()
    # The rebuild's progress events would interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cpus")
    blocks = build_blocks()
    txs = sum(len(b.txs) for b in blocks)
    print(f"{len(blocks)} blocks, {txs} transactions")

    plain, indexed, cold = ratio(blocks, args.repeat, None)
    print(
        f"cold signature cache: without index {plain:.3f} s, with {indexed:.3f} s,"
        f" ratio {cold:.3f} ({1000 * (indexed - plain) / len(blocks):.2f} ms per block)"
    )
    warm = SignatureCache(DEFAULT_SIGNATURE_CACHE_SIZE)
    connect_all(blocks, False, warm)[3].cleanup()  # fills `warm` with every txid
    plain, indexed, hot = ratio(blocks, args.repeat, warm)
    print(
        f"warm signature cache: without index {plain:.3f} s, with {indexed:.3f} s,"
        f" ratio {hot:.3f} ({1000 * (indexed - plain) / len(blocks):.2f} ms per block)"
    )

    for staged in (False, True):
        deltas, balance, utxos, rows, absent = lookup(blocks, max(args.repeat, 5), staged)
        print(
            f"address with {rows} rows {'staged' if staged else 'folded'}:"
            f" address_deltas {1000 * deltas:.1f} ms, address_balance {1000 * balance:.1f} ms,"
            f" address_utxos (5,000 unspent) {1000 * utxos:.1f} ms;"
            f" an address without rows among {ADDRESS_STAGING_ROWS} staged: {1000 * absent:.1f} ms"
        )
    rebuild = rebuild_seconds(blocks)
    print(f"rebuild from the stored blocks: {rebuild:.3f} s ({len(blocks) / rebuild:.0f} blocks/s)")
    print(
        f"goal ratio <= 1.3: cold {'met' if cold <= 1.3 else 'MISSED'},"
        f" warm {'met' if hot <= 1.3 else 'MISSED'}"
    )
    VERIFIER.close()


if __name__ == "__main__":
    main()
