"""SIGKILL a node-like process running `ChainState` on a `SQLiteStore`, restart it, compare.

The child (tests/chain_crash_child.py) delivers a deterministic script of blocks with spends,
reorganisations, orphans and an invalid heavier branch, committing `chain.take_update()` after
each `accept_block` exactly as the node does. The parent kills it at a seeded pseudo-random
moment, several times on the same data directory, and after each kill checks that:

(a) the store's tip is one the child reported: the last committed one, or the one it announced
    as being committed when it died (committed, but killed before it could say so);
(b) the UTXO set, tx index and spends index in the store are exactly what replaying the active
    chain from genesis on a fresh in-memory chain state gives;
(c) a new child on the same directory continues, and the finished store equals the reference.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus.chainstate import ChainState
from storage import MemoryStore, open_store
from tests import crash_harness
from tests.chain_crash_child import NOW, PARAMS, build_script
from tests.helpers import chain_view

KILLS = 5

pytestmark = crash_harness.needs_sigkill

Tip = tuple[int, bytes]


def _parse(line: str) -> tuple[str, Tip | None]:
    parts = line.split()
    if parts == ["done"]:
        return "done", None
    kind, height, tip_hash = parts
    assert kind in ("pending", "committed"), line
    return kind, (int(height), bytes.fromhex(tip_hash))


def _after_commits(count: int) -> Callable[[str], bool]:
    """True from the `count`-th ``committed`` line on."""
    seen = 0

    def due(line: str) -> bool:
        nonlocal seen
        seen += line.startswith("committed")
        return seen >= count

    return due


def run_child(datadir: Path, kill_after: int | None, delay: float) -> tuple[list[str], bool]:
    """Run the child; once it reported `kill_after` commits, wait `delay` s and SIGKILL it.

    Returns every line it printed and whether it was killed (False: it finished the script).
    """
    run = crash_harness.run_child(
        "tests.chain_crash_child",
        [str(datadir)],
        kill_after=None if kill_after is None else _after_commits(kill_after),
        delay=delay,
    )
    assert run.killed or run.lines[-1] == "done", "the child ended before the script did"
    return run.lines, run.killed


def allowed_tips(lines: list[str], previous: Tip) -> set[Tip]:
    """The last committed tip, plus the one announced after it if the child died mid-commit."""
    committed, pending = previous, None
    for line in lines:
        kind, tip = _parse(line)
        if kind == "committed":
            assert tip is not None and tip == pending, "commit without a matching announcement"
            committed, pending = tip, None
        elif kind == "pending":
            pending = tip
    return {committed} if pending is None else {committed, pending}


def check_store(datadir: Path, allowed: set[Tip]) -> Tip:
    """Reopen the store with a fresh chain state; check (a) and (b); return the tip."""
    with open_store(datadir, PARAMS) as store:
        snapshot = store.load()
        chain = ChainState(PARAMS, store, snapshot)
        tip = (chain.tip.height, chain.tip.hash)
        assert snapshot.tip == chain.tip.hash, "loading must not move the tip"
        assert tip in allowed, f"restarted at {tip}, the child reported {allowed}"

        # A fresh in-memory node fed the active chain from genesis is the reference.
        reference_store = MemoryStore()
        reference = ChainState(PARAMS, reference_store)
        reference_store.apply(reference.take_update())
        for entry in chain.active[1:]:
            block = chain.get_block(entry.hash)
            assert block is not None
            assert store.get_undo_bytes(entry.hash) is not None, "active block without undo data"
            result = reference.accept_block(block, NOW)
            assert result.status == "connected", (entry.height, result.status, result.reason)
            reference_store.apply(reference.take_update())
        assert reference.tip.hash == chain.tip.hash

        expected = reference_store.load()
        assert snapshot.utxo == expected.utxo
        assert snapshot.tx_index == expected.tx_index
        assert snapshot.spends == expected.spends
        assert chain_view(chain) == chain_view(reference)
        return tip


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_node_restarts_at_a_reported_tip_with_a_consistent_chainstate(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(7_000 + seed)
    genesis: Tip = (0, PARAMS.genesis_hash)
    tip = genesis
    kills = 0
    for _ in range(KILLS):
        kill_after = rng.randrange(1, 60)
        delay = rng.uniform(0.0, 0.003)  # lands the kill anywhere in the next commit or two
        lines, killed = run_child(tmp_path, kill_after, delay)
        tip = check_store(tmp_path, allowed_tips(lines, tip))
        kills += killed
        if not killed:
            break
    assert kills >= 3, "the script ended too early to test much: make it longer"

    # (c) A restarted child continues on the same directory and completes the script.
    lines, killed = run_child(tmp_path, None, 0.0)
    assert not killed and lines[-1] == "done"
    tip = check_store(tmp_path, allowed_tips(lines, tip))

    builder = build_script().builder
    assert builder is not None
    assert tip == (builder.chain.tip.height, builder.chain.tip.hash)
    with open_store(tmp_path, PARAMS) as store:
        snapshot = store.load()
        assert (snapshot.utxo, snapshot.tx_index, snapshot.spends) == chain_view(builder.chain)
        # Every block of the script, side branches and the invalid ones included, was stored
        # with the same status the uninterrupted reference gave it.
        statuses = {r.hash: r.status for r in snapshot.index}
        expected = {e.hash: int(e.status) for e in builder.chain.index.values()}
        assert statuses == expected
