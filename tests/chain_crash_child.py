"""The process tests/test_chain_crash.py kills: a `ChainState` on a `SQLiteStore`, fed a script.

Run as ``python -m tests.chain_crash_child DATADIR``. The script (`build_script`) is a pure
function of `SCRIPT_SEED`: blocks with signed spends (matured coinbases, chains of spends inside a
block and across blocks), competing heavier branches that force reorganisations (their spends
double-spend coins the old branch spent), branches delivered child-first (orphans), and a heavier
branch with an invalid block that makes the chain switch over and back.

The child resumes from whatever the store holds and delivers the whole script in order; blocks
the store already has are duplicates that change nothing, so a restarted child continues where
the killed one stopped.
Around every commit it prints::

    pending <height> <tip hash hex>      (the update is about to be applied)
    committed <height> <tip hash hex>    (`store.apply` returned)

and ``done`` at the end, so the parent knows which tips the store may hold after a SIGKILL.
With ``--addressindex`` after DATADIR it also keeps the address index, as the node does (its log
then goes to stderr).
"""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.block import Block
from consensus.chainstate import ChainState
from consensus.coins import Coin
from consensus.params import ChainParams
from consensus.tx import OutPoint, Transaction
from consensus.update import ChainUpdate
from storage import open_store
from tests.helpers import CLOCK_OFFSET, ChainBuilder, pkh, regtest

SCRIPT_SEED = 20250
STEPS = 170
# Small maturity so coinbases of blocks a reorganisation disconnects are often already spent.
PARAMS: ChainParams = regtest(coinbase_maturity=3)
NOW = PARAMS.genesis_timestamp + CLOCK_OFFSET
FEE = 1_000
MIN_SPEND = 20 * FEE  # smaller coins are left alone so every output stays above the fee


@dataclass
class Script:
    """The delivery order, and the reference chain that received exactly those blocks."""

    blocks: list[Block] = field(default_factory=list)
    builder: ChainBuilder | None = None


class _ScriptWriter:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.b = ChainBuilder(PARAMS, now=NOW)
        # Our own UTXO set after every block built, independent of the chain under test: spends
        # on a side branch must be chosen from the coins as they were at that branch's tip.
        self.utxo_after: dict[bytes, dict[OutPoint, Coin]] = {self.b.genesis.hash: {}}
        self.script = Script(builder=self.b)

    def make_block(self, parent: bytes, *, spends: bool = True, **kwargs: object) -> Block:
        height = self.b.info(parent).height + 1
        pool = dict(self.utxo_after[parent])
        txs = self._spends(pool, height) if spends else []
        block = self.b.block(parent, txs, **kwargs)  # type: ignore[arg-type]
        for tx in block.txs:
            for txin in tx.inputs if not tx.is_coinbase else ():
                pool.pop(txin.outpoint, None)
            for n, out in enumerate(tx.outputs):
                pool[OutPoint(tx.txid, n)] = Coin(out.amount, out.pkh, height, tx.is_coinbase)
        self.utxo_after[block.hash] = pool
        return block

    def _spends(self, pool: dict[OutPoint, Coin], height: int) -> list[Transaction]:
        rng, txs = self.rng, []
        available = dict(pool)
        for _ in range(rng.choice((0, 1, 2, 3, 4, 6))):
            candidates = sorted(
                op
                for op, coin in available.items()
                if coin.amount >= MIN_SPEND
                and (not coin.is_coinbase or height - coin.height >= PARAMS.coinbase_maturity)
            )
            if not candidates:
                break
            inputs = rng.sample(candidates, min(len(candidates), rng.choice((1, 1, 1, 2))))
            total = sum(available[op].amount for op in inputs) - FEE
            amounts = [total] if rng.random() < 0.4 else [total // 3, total - total // 3]
            tx = self.b.spend(inputs, amounts, to=pkh(rng.randrange(8)))
            for op in inputs:
                del available[op]
            # Outputs of this block's earlier transactions are spendable at once: chains of
            # spends inside one block.
            for n, amount in enumerate(amounts):
                available[OutPoint(tx.txid, n)] = Coin(amount, tx.outputs[n].pkh, height, False)
            txs.append(tx)
        return txs

    def deliver(self, block: Block) -> None:
        result = self.b.accept(block)
        assert result.status not in ("invalid", "duplicate"), (result.status, result.reason)
        self.script.blocks.append(block)

    def extend(self) -> None:
        self.deliver(self.make_block(self.b.chain.tip.hash))

    def reorg(self) -> None:
        tip = self.b.chain.tip
        depth = self.rng.randrange(1, min(5, tip.height))
        fork = tip.ancestor(tip.height - depth)
        branch, parent = [], fork.hash
        for _ in range(depth + self.rng.choice((1, 1, 2))):
            branch.append(self.make_block(parent))
            parent = branch[-1].hash
        if self.rng.random() < 0.3:
            # Children first: they wait in the orphan pool (nothing to commit) until the block
            # that links them arrives, then the whole branch connects in one update.
            self.rng.shuffle(branch)
        for block in branch:
            self.deliver(block)
        assert self.b.chain.tip.hash == parent, "the heavier branch must have won"

    def invalid_branch(self) -> None:
        """A heavier branch whose second block overpays its coinbase: switch, fail, switch back."""
        tip = self.b.chain.tip
        fork = tip.prev
        assert fork is not None
        first = self.make_block(fork.hash)
        bad = self.make_block(first.hash, spends=False, reward_delta=1)
        self.deliver(first)
        result = self.b.accept(bad)
        assert result.reason == "bad-cb-amount", (result.status, result.reason)
        self.script.blocks.append(bad)
        assert self.b.chain.tip is tip, "the chain must return to the valid branch"

    def write(self, steps: int) -> Script:
        for _ in range(4):
            self.extend()
        for _ in range(steps):
            roll = self.rng.random()
            if roll < 0.17:
                self.reorg()
            elif roll < 0.22:
                self.invalid_branch()
            else:
                self.extend()
        return self.script


def build_script(seed: int = SCRIPT_SEED, steps: int = STEPS) -> Script:
    """The deterministic delivery sequence (the same in the parent and in every child)."""
    return _ScriptWriter(seed).write(steps)


CRASH_STAGING_ROWS = 5


# With --writer: the queue of the node's store writer, kept short so that it fills.
WRITER_QUEUE = 4
_SAY = threading.Lock()  # two threads print: whole lines only


def _say(line: str) -> None:
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Announced:
    """The store as the writer thread sees it: says which update each commit wrote."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def apply(self, update: ChainUpdate) -> None:
        self.store.apply(update)
        assert update.tip is not None
        _say(f"committed {update.tip.hex()}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def main_with_writer(datadir: Path, addressindex: bool = False) -> None:
    """As the node does since issue 17: the chain reads through a `StoreWriter` (queued blocks
    and undo data come from its queue) and hands each update to it; its thread commits them.
    Prints ``submitted <height> <tip>`` per hand-over and ``committed <tip>`` per commit."""
    from node.storewriter import StoreWriter

    script = build_script()
    store = open_store(datadir, PARAMS)
    writer = StoreWriter(_Announced(store), max_pending=WRITER_QUEUE)  # type: ignore[arg-type]
    chain = ChainState(PARAMS, writer, store.load())
    store.apply(chain.take_update())  # genesis, on a fresh store (before the thread starts)
    if addressindex:  # as in `main`
        from node.addressindex import sync_address_index

        store.staging_bound = CRASH_STAGING_ROWS
        sync_address_index(store, chain)
        chain.address_index = True
    for block in script.blocks:
        chain.accept_block(block, NOW)
        update = chain.take_update()
        if update.is_empty():
            continue
        update.tip = chain.tip.hash  # named in every update, so each commit says what it wrote
        _say(f"submitted {chain.tip.height} {chain.tip.hash.hex()}")
        writer.submit(update)
    writer.close()
    _say("done")


def main(datadir: Path, addressindex: bool = False) -> None:
    script = build_script()
    with open_store(datadir, PARAMS) as store:
        chain = ChainState(PARAMS, store, store.load())
        store.apply(chain.take_update())  # genesis, on a fresh store
        if addressindex:  # as the node does with --addressindex (tests/test_addressindex_crash)
            from node.addressindex import sync_address_index

            # Fold staged rows into address_deltas at nearly every commit, so kills land in
            # folds too (the node's bound would fold rarely in a chain this short).
            store.staging_bound = CRASH_STAGING_ROWS
            sync_address_index(store, chain)
            chain.address_index = True
        for block in script.blocks:
            # Blocks committed before a restart come back as duplicates with an empty update.
            chain.accept_block(block, NOW)
            update = chain.take_update()
            if update.is_empty():
                continue  # a duplicate, or an orphan waiting for its parent
            tip = chain.tip
            print(f"pending {tip.height} {tip.hash.hex()}", flush=True)
            store.apply(update)
            print(f"committed {tip.height} {tip.hash.hex()}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    # The parent reads this process's stdout line by line: the log goes elsewhere.
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    indexed = "--addressindex" in sys.argv[2:]
    if "--writer" in sys.argv[2:]:
        main_with_writer(Path(sys.argv[1]), indexed)
    else:
        main(Path(sys.argv[1]), indexed)
