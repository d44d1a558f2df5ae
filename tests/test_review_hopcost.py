"""Hostile review of issue 17's per-hop shortcuts (the `hopcost` merge): undo data encoded only
in `take_update`, merkle leaves cached on transactions, and the mempool's post-block update.
Each test compares the shortcut with the long way round on a path the merge's own tests do not
take (tests/test_hop_cost.py covers the rest)."""

from __future__ import annotations

from consensus.block import Block, decode_block
from consensus.blockbuild import assemble_block
from consensus.chainstate import ChainState
from consensus.hashing import merkle_root
from consensus.mempool import Mempool
from consensus.tx import decode_transaction
from tests.helpers import (
    ChainBuilder,
    ChainView,
    chain_view,
    coinbase_outpoint,
    outpoint,
    pkh,
    regtest,
)
from tests.test_mempool import REWARD, Env, out, split


def _restarted(builder: ChainBuilder) -> ChainState:
    """A chain state read back from the builder's store, as a node has it after a restart."""
    return ChainState(builder.params, builder.store, builder.store.load())


def _spending_blocks(
    builder: ChainBuilder, count: int, views: list[ChainView] | None = None
) -> list[Block]:
    """`count` blocks on the tip, each spending one mature coinbase and the previous block's
    payment, accepted without handing the chain's update to the store; `views` gets the chain's
    view after each."""
    blocks: list[Block] = []
    previous = None
    for n in range(count):
        inputs = [coinbase_outpoint(builder.block_at(n + 1))]
        if previous is not None:
            inputs.append(outpoint(previous))
        previous = builder.spend(inputs, fee=1000)
        block = builder.block(txs=[previous])
        result = builder.chain.accept_block(block, builder.now)
        assert result.status == "connected", result.reason
        blocks.append(block)
        if views is not None:
            views.append(chain_view(builder.chain))
    return blocks


def test_undo_of_a_block_invalidated_and_reconsidered_in_one_update_disconnects_after_restart(
) -> None:
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(3)
    builder.sync()
    before = chain_view(builder.chain)
    first, second = _spending_blocks(builder, 2)  # the second spends two coins
    chain = builder.chain
    chain.invalidate_block(first.hash)
    assert chain_view(chain) == before
    chain.reconsider_block(first.hash)
    assert chain.tip.hash == second.hash
    builder.sync()  # one update: connect, disconnect, connect again

    restarted = _restarted(builder)
    restarted.invalidate_block(first.hash)
    assert chain_view(restarted) == before


def test_every_block_of_a_batched_update_disconnects_after_restart() -> None:
    """Several blocks handed over in one update (the writer's batching while catching up):
    each keeps its own undo data, in its own input order."""
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(4)
    builder.sync()
    views = [chain_view(builder.chain)]
    blocks = _spending_blocks(builder, 3, views)
    update = builder.chain.take_update()
    assert set(update.undo) >= {b.hash for b in blocks}
    builder.store.apply(update)

    restarted = _restarted(builder)
    for n in reversed(range(len(blocks))):
        restarted.invalidate_block(blocks[n].hash)
        assert chain_view(restarted) == views[n]


def test_cached_leaves_give_the_from_scratch_root_on_every_construction_path() -> None:
    """Mempool transactions hash their leaf on entry; a template, a decoded block and a compact
    reconstruction (mempool objects mixed with decoded ones) must all commit to the root that
    `merkle_root` computes from the txids alone."""
    env = Env(blocks=6)
    pool_txs = [split(env.coinbase(h), REWARD, 1000 + h) for h in (1, 2, 3)]
    for tx in pool_txs:
        assert env.accept(tx).accepted
    fresh = split(env.coinbase(4), REWARD, 2000)  # never in the pool: no leaf cached yet
    template = assemble_block(env.chain, [*pool_txs, fresh], 0, pkh(0), env.now, 7)
    from_scratch = merkle_root([tx.txid for tx in template.txs])
    assert template.header.merkle_root == from_scratch
    assert template.computed_merkle_root() == from_scratch

    decoded = decode_block(template.encode(), 1 << 20)
    assert decoded.computed_merkle_root() == from_scratch
    mixed = Block(
        template.header,
        [
            tx if n % 2 else decode_transaction(tx.encode(), 1 << 20)
            for n, tx in enumerate(template.txs)
        ],
    )
    assert mixed.computed_merkle_root() == from_scratch
    # A different order is a different block: the cached leaves must not hide that.
    swapped = Block(template.header, [template.txs[0], *reversed(template.txs[1:])])
    assert swapped.computed_merkle_root() != from_scratch


def test_descendants_of_a_confirmed_parent_keep_the_totals_of_a_pool_that_never_had_it() -> None:
    """The post-block update skips the ancestor walk for a confirmed root: what stays must
    carry the same descendant totals as in a pool that saw only the survivors."""
    env = Env(blocks=6)
    parent = split(env.coinbase(1), REWARD, 1000)
    child = split(out(parent), parent.outputs[0].amount, 1000)
    grandchild = split(out(child), child.outputs[0].amount, 1000)
    sibling = split(out(parent, 1), parent.outputs[1].amount, 1000)
    for tx in (parent, child, grandchild, sibling):
        assert env.accept(tx).accepted
    update = env.mine_and_update([parent])
    assert update.included == [parent.txid]

    reference = Mempool(env.params, signature_cache=env.chain.signature_cache)
    for tx in (child, grandchild, sibling):
        assert reference.accept(tx, env.chain, env.now).accepted
    for tx in (child, grandchild, sibling):
        got, want = env.pool.get(tx.txid), reference.get(tx.txid)
        assert got is not None and want is not None
        assert (got.parents, got.children) == (want.parents, want.children)
        assert (got.descendant_count, got.descendant_size, got.descendant_fee) == (
            want.descendant_count, want.descendant_size, want.descendant_fee,
        )
