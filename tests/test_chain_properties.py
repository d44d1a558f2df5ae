"""Properties of the chain state over random block trees delivered in random order.

Each example draws a tree of blocks (random parents, random timestamps so retargeting gives
branches different amounts of work, some blocks spending coins of their branch, some invalid:
an overpaying coinbase or a spend of a coin already spent on the branch). A model kept next to the
builder knows, independently of `ChainState`, which blocks are valid, each block's chain work and
the UTXO set after it. The blocks are then delivered in a random order and after every delivery:

* the active tip is the most-work valid block whose whole branch has been delivered, ties going
  to the block whose branch was complete first (first seen);
* the UTXO set is the model's for that tip, and equals a replay of the active chain from genesis
  on a fresh ChainState (with the tx and spends indexes);
* blocks marked invalid are exactly invalid ones.

Finally the chain reorgs away (invalidate_block) and back (reconsider_block) and must end with an
identical UTXO set and indexes.

Hypothesis runs derandomized, so the suite is deterministic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consensus.block import Block
from consensus.chainstate import BlockStatus
from consensus.coins import Coin
from consensus.tx import OutPoint, Transaction
from tests.helpers import ChainBuilder, chain_view, key, pkh, replay, retargeting

PARAMS = retargeting(window=3, coinbase_maturity=1)
FEE = 50
GENESIS = -1
KINDS = ["plain", "plain", "spend", "spend", "chain", "badcb", "double"]
NOWHERE = OutPoint(hashlib.sha256(b"never created").digest(), 0)

PROPERTY = settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Node:
    """The model's view of one block."""

    block: Block
    parent: int
    valid: bool
    utxo: dict[OutPoint, Coin]  # after this block (meaningful if valid)
    spent: frozenset[OutPoint]  # spent along the branch up to and including this block


def build_tree(b: ChainBuilder, data: st.DataObject, n: int) -> list[Node]:
    genesis = Node(b.genesis, GENESIS, True, {}, frozenset())
    nodes: list[Node] = []

    def node(i: int) -> Node:
        return genesis if i == GENESIS else nodes[i]

    for i in range(n):
        # Favour recent parents so branches get deep enough to retarget and reorg.
        parent = data.draw(
            st.one_of(st.integers(max(GENESIS, i - 3), i - 1), st.integers(GENESIS, i - 1)),
            label=f"parent of {i}",
        )
        kind = data.draw(st.sampled_from(KINDS), label=f"kind of {i}")
        gap = data.draw(st.sampled_from([1, 2, 10, 40]), label=f"gap of {i}")
        p = node(parent)
        height = b.info(p.block).height + 1
        utxo, spent, valid = dict(p.utxo), set(p.spent), p.valid
        txs: list[Transaction] = []
        reward_delta = 0

        def spend(
            inputs: list[OutPoint],
            owner: int,
            utxo: dict[OutPoint, Coin] = utxo,
            spent: set[OutPoint] = spent,
            txs: list[Transaction] = txs,
            height: int = height,
        ) -> None:
            total = sum(utxo[op].amount for op in inputs)
            tx = b.spend(inputs, amounts=[total // 2, total - total // 2 - FEE], to=pkh(owner))
            txs.append(tx)
            for op in inputs:
                del utxo[op]
                spent.add(op)
            for k, out in enumerate(tx.outputs):
                utxo[OutPoint(tx.txid, k)] = Coin(out.amount, out.pkh, height, False)

        mature = sorted(
            op for op, c in utxo.items()
            if not c.is_coinbase or height - c.height >= PARAMS.coinbase_maturity
        )
        if kind in ("spend", "chain") and mature:
            chosen = data.draw(
                st.lists(st.sampled_from(mature), min_size=1, max_size=2, unique=True),
                label=f"inputs of {i}",
            )
            spend(chosen, i % 4)
            event("spend")
            if kind == "chain":  # a second transaction spending the first one's output
                spend([OutPoint(txs[-1].txid, 1)], (i + 1) % 4)
        elif kind == "double":
            if p.spent:
                again = sorted(p.spent)[0]
                txs.append(b.spend([again], amounts=[1]))
            else:
                txs.append(b.spend([NOWHERE], amounts=[1], keys=[key(0)], outputs=None))
            valid = False
        elif kind == "badcb":
            reward_delta = 1
            valid = False
        block = b.block(p.block, txs, gap=gap, reward_delta=reward_delta)
        cb = block.txs[0]
        utxo[OutPoint(cb.txid, 0)] = Coin(cb.outputs[0].amount, cb.outputs[0].pkh, height, True)
        nodes.append(Node(block, parent, valid, utxo, frozenset(spent)))
    return nodes


def check_state(
    b: ChainBuilder,
    nodes: list[Node],
    attached_at: dict[int, int],
) -> None:
    chain = b.chain
    # Candidates: valid blocks whose whole branch has arrived (genesis always).
    work = {i: b.info(nodes[i].block).chainwork for i in attached_at}
    candidates = [i for i in attached_at if nodes[i].valid]
    genesis_work = b.info(b.genesis).chainwork
    best_work = max([genesis_work, *(work[i] for i in candidates)])
    assert chain.tip.chainwork == best_work
    if best_work == genesis_work:
        assert chain.tip.hash == b.genesis.hash
        expected_utxo: dict[OutPoint, Coin] = {}
    else:
        top = [i for i in candidates if work[i] == best_work]
        if len(top) > 1:
            event("tie for the most work")
        tips = [i for i in top if nodes[i].block.hash == chain.tip.hash]
        assert tips, "the tip is not a most-work valid block"
        # First seen: no other block of equal work had its branch complete earlier.
        assert attached_at[tips[0]] == min(attached_at[i] for i in top)
        expected_utxo = nodes[tips[0]].utxo
    assert chain.utxo == expected_utxo

    # Invalid marks fall only on invalid blocks.
    for n in nodes:
        entry = chain.get(n.block.hash)
        if entry is not None and entry.failed:
            assert not n.valid
    # Data arrival order (the tie-break) follows the order in which branches completed.
    arrived = [
        (attached_at[i], chain.get(nodes[i].block.hash).sequence)  # type: ignore[union-attr]
        for i in attached_at
        if (e := chain.get(nodes[i].block.hash)) is not None and e.status & BlockStatus.HAVE_DATA
    ]
    for step_a, seq_a in arrived:
        for step_b, seq_b in arrived:
            if step_a < step_b:
                assert seq_a < seq_b

    # The same coins as a fresh node replaying the active chain.
    active = [b.blocks[h] for h in b.active_hashes()[1:]]
    assert chain_view(replay(b.params, active, b.now)) == chain_view(chain)


@PROPERTY
@given(st.data())
def test_random_trees_in_random_order(data: st.DataObject) -> None:
    b = ChainBuilder(PARAMS)
    n = data.draw(st.integers(min_value=3, max_value=16), label="blocks")
    nodes = build_tree(b, data, n)
    order = data.draw(st.permutations(range(n)), label="delivery order")

    delivered: set[int] = set()
    attached_at: dict[int, int] = {}
    for step, i in enumerate(order):
        result = b.accept(nodes[i].block)
        delivered.add(i)
        if result.reorg_depth:
            event("reorg")
        if result.invalid:
            event("invalid block found")
        if result.status == "orphan":
            event("orphan")
        changed = True
        while changed:
            changed = False
            for j, nd in enumerate(nodes):
                if j in delivered and j not in attached_at and (
                    nd.parent == GENESIS or nd.parent in attached_at
                ):
                    attached_at[j] = step
                    changed = True
        if not nodes[i].valid:
            # Refused, parked as an orphan (its invalid parent may have been dropped), or
            # stored on a side branch nobody has tried yet: never connected.
            assert result.status != "connected"
        elif i in attached_at:
            assert result.status in ("connected", "side-branch"), result.status
        else:
            assert result.status == "orphan"
        check_state(b, nodes, attached_at)

    # Away and back: invalidate an active block, then reconsider it.
    if b.chain.height == 0:
        return
    view = chain_view(b.chain)
    tip = b.chain.tip
    height = data.draw(st.integers(1, b.chain.height), label="invalidate at")
    victim = b.chain.at_height(height)
    assert victim is not None
    away = b.chain.invalidate_block(victim.hash)
    b.sync()
    assert not b.chain.is_active(victim)
    assert away.reorg_depth >= tip.height - height + 1
    active = [b.blocks[h] for h in b.active_hashes()[1:]]
    assert chain_view(replay(b.params, active, b.now)) == chain_view(b.chain)
    back = b.chain.reconsider_block(victim.hash)
    b.sync()
    assert b.chain.tip is tip
    assert [e.hash for e, _ in back.connected][-1] == tip.hash
    assert chain_view(b.chain) == view


@PROPERTY
@given(st.data())
def test_delivery_order_does_not_change_the_outcome(data: st.DataObject) -> None:
    """Two nodes fed the same blocks in different orders agree on the best chain's work and
    UTXO set (the tip itself may differ only between equal-work tips)."""
    first = ChainBuilder(PARAMS)
    n = data.draw(st.integers(min_value=3, max_value=10), label="blocks")
    nodes = build_tree(first, data, n)
    order = data.draw(st.permutations(range(n)), label="order")
    second = ChainBuilder(PARAMS)
    for nd in nodes:
        first.accept(nd.block)
    for i in order:
        second.accept(nodes[i].block)
    assert first.chain.tip.chainwork == second.chain.tip.chainwork
    if first.chain.tip.hash == second.chain.tip.hash:
        assert chain_view(first.chain) == chain_view(second.chain)
