"""SIGKILL a chain state that keeps the address index on a SQLiteStore: the index stays
consistent with the chain.

The child of tests/test_chain_crash.py runs first without the index (so the first indexed start
builds it from stored blocks), then with it, killed at seeded pseudo-random moments. After each
kill the store must hold an index valid for its tip, or (killed while building) for an ancestor
of it on the active chain, and catching up from there must give exactly a rebuild from scratch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from consensus.addressindex import AddressUtxo
from consensus.chainstate import ChainState
from node.addressindex import sync_address_index
from storage import MemoryStore, open_store
from tests import crash_harness
from tests.chain_crash_child import PARAMS
from tests.test_chain_crash import _after_commits

pytestmark = crash_harness.needs_sigkill

KILLS = 5
EVERYTHING = 1 << 40


def run(datadir: Path, kill_after: int | None, delay: float, indexed: bool) -> bool:
    result = crash_harness.run_child(
        "tests.chain_crash_child",
        [str(datadir), *(["--addressindex"] if indexed else [])],
        kill_after=None if kill_after is None else _after_commits(kill_after),
        delay=delay,
    )
    return result.killed


def dump(store: Any, owners: list[bytes]) -> tuple[Any, ...]:
    return (
        store.address_deltas(owners, 0, EVERYTHING, EVERYTHING),
        [store.address_balance(p) for p in owners],
    )


def check_index(datadir: Path, was_indexed: bool) -> str:
    """Reopen; check the index is valid for the tip (or an active ancestor); return the
    outcome of bringing it up to date."""
    with open_store(datadir, PARAMS) as store:
        chain = ChainState(PARAMS, store, store.load())
        store.apply(chain.take_update())
        marker = store.address_index_tip()
        entry = chain.get(marker) if marker is not None else None
        if was_indexed:
            assert entry is not None and chain.is_active(entry), "index marker off the chain"
        outcome = sync_address_index(store, chain)
        assert store.address_index_tip() == chain.tip.hash
        owners = sorted(
            {
                out.pkh
                for e in chain.active
                for tx in chain.get_block(e.hash).txs  # type: ignore[union-attr]
                for out in tx.outputs
            }
        )
        fresh = MemoryStore()
        sync_address_index(fresh, chain, rebuild=True)
        assert dump(store, owners) == dump(fresh, owners)
        unspent = set(store.address_utxos(owners, EVERYTHING))
        assert unspent == {
            AddressUtxo(c.pkh, op, c.amount, c.height) for op, c in chain.utxo.items()
        }
        return outcome


def test_killed_indexing_chain_keeps_a_consistent_index(tmp_path: Path) -> None:
    rng = random.Random(16_016)
    assert run(tmp_path, rng.randrange(10, 40), 0.0, indexed=False)
    outcomes = []
    kills = 0
    for _ in range(KILLS):
        killed = run(tmp_path, rng.randrange(1, 30), rng.uniform(0.0, 0.003), indexed=True)
        outcomes.append(check_index(tmp_path, was_indexed=bool(outcomes)))
        kills += killed
        if not killed:
            break
    assert kills >= 3, "the script ended too early to test much"
    # The child builds the index before its first commit line, so after a kill the index only
    # ever needs to be current (or caught up): never rebuilt, which would hide a broken index.
    assert "rebuilt" not in outcomes
    assert not run(tmp_path, None, 0.0, indexed=True)
    assert check_index(tmp_path, was_indexed=True) == "current"
