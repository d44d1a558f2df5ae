"""The process tests/test_storage_crash.py kills: applies `make_update(0)`, `make_update(1)`, …

Run as ``python -m tests.storage_crash_child DATADIR COUNT``. After each committed update it
prints the number of updates applied so far, so the parent knows the state must hold at least
that many (and at most one more, committed but killed before the print).
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from consensus.coins import Coin
from consensus.tx import OutPoint
from consensus.update import ChainUpdate, IndexRecord
from storage import SQLiteStore

NETWORK = "crashnet"
GENESIS = hashlib.sha256(b"crashnet genesis").digest()
OUTPUTS_PER_UPDATE = 200
OUTPUTS_PER_TX = 4
SPEND_DELAY = 3  # updates after which half of an update's outputs are spent
TX_INDEX_LIFETIME = 5
SPENDS_LIFETIME = 10


def tagged_hash(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def outpoint(i: int, j: int) -> OutPoint:
    return OutPoint(tagged_hash("tx", i, j // OUTPUTS_PER_TX), j % OUTPUTS_PER_TX)


def record(i: int, status: int) -> IndexRecord:
    block = tagged_hash("block", i)
    header = hashlib.sha512(block).digest() + block[:16]
    return IndexRecord(block, header, i, (i + 1) << 200, status, i)


def make_update(i: int) -> ChainUpdate:
    """Update number i: a pure function of i, so parent and child build the same sequence."""
    rng = random.Random(i * 7919 + 13)
    block = tagged_hash("block", i)
    update = ChainUpdate(tip=(i + 1).to_bytes(32, "big"))
    update.index[block] = record(i, status=1)
    if i > 0:
        update.index[tagged_hash("block", i - 1)] = record(i - 1, status=3)
    update.blocks[block] = rng.randbytes(rng.randrange(100, 20_000))
    update.undo[block] = rng.randbytes(rng.randrange(0, 500))
    txs = OUTPUTS_PER_UPDATE // OUTPUTS_PER_TX
    for j in range(OUTPUTS_PER_UPDATE):
        coin = Coin(rng.randrange(1, 10**12), rng.randbytes(20), i, j < OUTPUTS_PER_TX)
        update.utxo[outpoint(i, j)] = coin
    for t in range(txs):
        update.tx_index[tagged_hash("tx", i, t)] = block
    if i >= SPEND_DELAY:
        for j in range(0, OUTPUTS_PER_UPDATE, 2):
            spent = outpoint(i - SPEND_DELAY, j)
            update.utxo[spent] = None
            update.spends[spent] = tagged_hash("tx", i, j % txs)
    if i >= TX_INDEX_LIFETIME:
        for t in range(0, txs, 2):
            update.tx_index[tagged_hash("tx", i - TX_INDEX_LIFETIME, t)] = None
    if i >= SPENDS_LIFETIME:
        for j in range(0, OUTPUTS_PER_UPDATE, 4):
            update.spends[outpoint(i - SPENDS_LIFETIME, j)] = None
    return update


def main(datadir: Path, count: int) -> None:
    with SQLiteStore.open(datadir, NETWORK, GENESIS) as store:
        for i in range(count):
            store.apply(make_update(i))
            print(i + 1, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
