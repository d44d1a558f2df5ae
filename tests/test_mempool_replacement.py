"""Replacement policies in consensus.mempool: first-seen, BIP125 opt-in and full RBF.

Each BIP125 rule and Core reject reason gets a unit test; a property test drives random spends,
double spends and blocks under each policy and checks that a replacement never lowers the pool's
fees, never evicts more than the limit, and never leaves two conflicting transactions in the pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.errors import ConsensusError
from consensus.keys import PrivateKey
from consensus.mempool import MempoolConflict
from consensus.replacement import (
    FIRST_SEEN,
    FULL,
    MAX_BIP125_RBF_SEQUENCE,
    MAX_REPLACEMENT_CANDIDATES,
    OPT_IN,
    REPLACEMENT_POLICIES,
    ReplacementPolicy,
    signals_opt_in,
)
from consensus.tx import SEQUENCE_FINAL, OutPoint, Transaction, TxIn, TxOut, sign_transaction
from tests.test_mempool import KEY, PARAMS, PKH, REWARD, Env, _check_invariants, out

RBF = MAX_BIP125_RBF_SEQUENCE  # the usual signalling sequence (bitcoind's)
# Just above the signalling range: final for BIP125, yet not SEQUENCE_FINAL.
NO_RBF = MAX_BIP125_RBF_SEQUENCE + 1


def pay(
    inputs: Sequence[OutPoint],
    amounts: Sequence[int],
    sequence: int = SEQUENCE_FINAL,
    key: PrivateKey = KEY,
) -> Transaction:
    unsigned = Transaction(
        [TxIn(op.txid, op.index, b"", b"", sequence) for op in inputs],
        [TxOut(a, PKH) for a in amounts],
    )
    return sign_transaction(unsigned, [key] * len(inputs), PARAMS.genesis_hash)


def fanout(
    op: OutPoint, value: int, fee: int, outputs: int, sequence: int = SEQUENCE_FINAL
) -> Transaction:
    each = (value - fee) // outputs
    return pay([op], [each] * outputs, sequence)


def env_with(policy: ReplacementPolicy, **options: int) -> Env:
    env = Env(**options)
    env.pool.replacement_policy = policy
    return env


def _pool_fee(env: Env) -> int:
    return sum(env.pool.get(t).fee for t in env.pool.txids())  # type: ignore[union-attr]


# ------------------------------------------------------------------ signalling and policy


def test_signalling_is_any_input_below_0xfffffffe() -> None:
    env = Env()
    op = env.coinbase(1)
    assert signals_opt_in(pay([op], [1], RBF))
    assert signals_opt_in(pay([op], [1], 0))
    assert not signals_opt_in(pay([op], [1], NO_RBF))
    assert not signals_opt_in(pay([op], [1]))
    mixed = pay([op, env.coinbase(2)], [1], SEQUENCE_FINAL)
    mixed = Transaction([mixed.inputs[0], mixed.inputs[1]._replace(sequence=RBF)], mixed.outputs)
    assert signals_opt_in(mixed)


@pytest.mark.parametrize("policy", REPLACEMENT_POLICIES)
def test_first_seen_refuses_even_a_signalling_higher_fee_replacement(
    policy: ReplacementPolicy,
) -> None:
    env = env_with(policy)
    op = env.coinbase(1)
    first = pay([op], [REWARD - 1_000], RBF)
    env.accept(first)
    second = pay([op], [REWARD - 50_000], RBF)
    if policy == FIRST_SEEN:
        with pytest.raises(MempoolConflict) as info:
            env.accept(second)
        assert info.value.reason == "txn-mempool-conflict"
        assert info.value.conflicting == [first.txid]
        assert first.txid in env.pool and second.txid not in env.pool
    else:
        outcome = env.accept(second)
        assert outcome.accepted == [second.txid]
        assert outcome.replaced == {first.txid: second.txid}
        assert first.txid not in env.pool and second.txid in env.pool
        assert env.pool.spender_of(op) == second.txid
    _check_invariants(env)


def test_the_default_policy_is_first_seen() -> None:
    env = Env()
    assert env.pool.replacement_policy == FIRST_SEEN


def test_opt_in_refuses_to_replace_a_non_signalling_transaction() -> None:
    env = env_with(OPT_IN)
    op = env.coinbase(1)
    first = pay([op], [REWARD - 1_000], NO_RBF)
    env.accept(first)
    with pytest.raises(MempoolConflict) as info:
        env.accept(pay([op], [REWARD - 50_000], RBF))
    assert info.value.reason == "txn-mempool-conflict"
    assert first.txid in env.pool


def test_full_rbf_replaces_a_non_signalling_transaction() -> None:
    env = env_with(FULL)
    op = env.coinbase(1)
    first = pay([op], [REWARD - 1_000])
    env.accept(first)
    second = pay([op], [REWARD - 50_000])
    assert env.accept(second).replaced == {first.txid: second.txid}


def test_opt_in_signalling_is_inherited_from_an_unconfirmed_ancestor() -> None:
    env = env_with(OPT_IN)
    parent = fanout(env.coinbase(1), REWARD, 1_000, 2, RBF)
    env.accept(parent)
    child = pay([out(parent, 0)], [parent.outputs[0].amount - 1_000])  # final itself
    env.accept(child)
    assert not signals_opt_in(child)
    assert env.pool.signals_replaceable(child.txid) and env.pool.signals_replaceable(parent.txid)
    rival = pay([out(parent, 0)], [parent.outputs[0].amount - 20_000])
    assert env.accept(rival).replaced == {child.txid: rival.txid}


def test_replacement_evicts_the_descendants_too_parents_first() -> None:
    env = env_with(FULL)
    op = env.coinbase(1)
    first = fanout(op, REWARD, 1_000, 2)
    child = pay([out(first, 0)], [first.outputs[0].amount - 1_000])
    grandchild = pay([out(child, 0)], [child.outputs[0].amount - 1_000])
    for tx in (first, child, grandchild):
        env.accept(tx)
    replacement = pay([op], [REWARD - 100_000])
    outcome = env.accept(replacement)
    assert list(outcome.replaced) == [first.txid, child.txid, grandchild.txid]
    assert set(outcome.replaced.values()) == {replacement.txid}
    assert env.pool.txids() == [replacement.txid]
    _check_invariants(env)


# ------------------------------------------------------------------ the fee rules


def test_a_replacement_must_pay_a_higher_fee_rate_than_each_direct_conflict() -> None:
    env = env_with(FULL)
    op = env.coinbase(1)
    first = pay([op], [REWARD - 10_000])
    env.accept(first)
    same_rate = pay([op], [REWARD - 10_000, 1])  # a byte or so bigger, a hair lower rate
    with pytest.raises(ConsensusError) as info:
        env.accept(same_rate)
    assert info.value.reason == "insufficient fee"
    assert "new feerate" in info.value.detail
    assert first.txid in env.pool


def test_rule_3_a_replacement_pays_at_least_the_fees_of_everything_it_evicts() -> None:
    env = env_with(FULL)
    op = env.coinbase(1)
    first = fanout(op, REWARD, 1_000, 2)
    child = pay([out(first, 0)], [first.outputs[0].amount - 50_000])
    env.accept(first)
    env.accept(child)
    # Five times `first`'s fee rate, but less than first + child paid together.
    replacement = pay([op], [REWARD - 5_000])
    with pytest.raises(ConsensusError) as info:
        env.accept(replacement)
    assert info.value.reason == "insufficient fee"
    assert "less fees than conflicting txs" in info.value.detail
    assert first.txid in env.pool and child.txid in env.pool


def test_rule_4_a_replacement_pays_for_its_own_relay_at_the_incremental_rate() -> None:
    env = env_with(FULL, incremental_fee_rate=1)
    op = env.coinbase(1)
    first = pay([op], [REWARD - 10_000])
    env.accept(first)
    short = pay([op], [REWARD - 10_000 - first.size + 1])  # one unit short of size × rate
    with pytest.raises(ConsensusError) as info:
        env.accept(short)
    assert info.value.reason == "insufficient fee"
    assert "not enough additional fees to relay" in info.value.detail
    enough = pay([op], [REWARD - 10_000 - first.size])
    assert env.accept(enough).replaced == {first.txid: enough.txid}


# ------------------------------------------------------------------ rules 2 and 5


def test_rule_2_a_replacement_may_not_add_an_unconfirmed_input() -> None:
    env = env_with(FULL)
    first = pay([env.coinbase(1)], [REWARD - 1_000])
    unrelated = fanout(env.coinbase(2), REWARD, 1_000, 2)
    env.accept(first)
    env.accept(unrelated)
    replacement = pay([env.coinbase(1), out(unrelated, 0)], [REWARD - 100_000])
    with pytest.raises(ConsensusError) as info:
        env.accept(replacement)
    assert info.value.reason == "replacement-adds-unconfirmed"
    assert first.txid in env.pool


def test_a_replacement_may_spend_the_unconfirmed_parents_its_conflicts_spent() -> None:
    env = env_with(FULL)
    parent = fanout(env.coinbase(1), REWARD, 1_000, 2)
    env.accept(parent)
    first = pay([out(parent, 0)], [parent.outputs[0].amount - 1_000])
    env.accept(first)
    replacement = pay([out(parent, 0), out(parent, 1)], [REWARD - 100_000])
    assert env.accept(replacement).replaced == {first.txid: replacement.txid}
    _check_invariants(env)


def test_a_replacement_may_not_spend_what_it_replaces() -> None:
    env = env_with(FULL)
    root = fanout(env.coinbase(1), REWARD, 1_000, 2)
    child = pay([out(root, 0), env.coinbase(2)], [root.outputs[0].amount + REWARD - 1_000])
    env.accept(root)
    env.accept(child)
    # Spends root's input (conflict: root), root's second output, and coinbase 2 (conflict:
    # child, whose parent is root): never valid in any chain.
    bad = pay([env.coinbase(1), out(root, 1), env.coinbase(2)], [REWARD])
    with pytest.raises(ConsensusError) as info:
        env.accept(bad)
    assert info.value.reason == "bad-txns-spends-conflicting-tx"


def test_rule_5_at_most_100_evicted_transactions_counting_descendants() -> None:
    limit = MAX_REPLACEMENT_CANDIDATES
    env = env_with(FULL, max_descendants=limit + 5, max_bytes=10**9)
    op = env.coinbase(1)
    root = fanout(op, REWARD, 10_000, limit)  # root + `limit` children: one too many
    env.accept(root)
    for n in range(limit):
        env.accept(pay([out(root, n)], [root.outputs[n].amount - 1_000]))
    assert env.pool.get(root.txid).descendant_count == limit + 1  # type: ignore[union-attr]
    with pytest.raises(ConsensusError) as info:
        env.accept(pay([op], [REWARD // 2]))
    assert info.value.reason == "too many potential replacements"
    assert len(env.pool) == limit + 1


def test_rule_5_exactly_100_evictions_are_allowed() -> None:
    limit = MAX_REPLACEMENT_CANDIDATES
    env = env_with(FULL, max_descendants=limit + 5, max_bytes=10**9)
    op = env.coinbase(1)
    root = fanout(op, REWARD, 10_000, limit - 1)
    env.accept(root)
    for n in range(limit - 1):
        env.accept(pay([out(root, n)], [root.outputs[n].amount - 1_000]))
    replacement = pay([op], [REWARD // 2])
    outcome = env.accept(replacement)
    assert len(outcome.replaced) == limit
    assert env.pool.txids() == [replacement.txid]


def test_replacing_a_descendant_of_a_full_ancestor_is_not_a_chain_limit_breach() -> None:
    env = env_with(FULL, max_descendants=3)
    root = fanout(env.coinbase(1), REWARD, 1_000, 2)
    a = pay([out(root, 0)], [root.outputs[0].amount - 1_000])
    b = pay([out(root, 1)], [root.outputs[1].amount - 1_000])
    for tx in (root, a, b):
        env.accept(tx)
    with pytest.raises(ConsensusError) as info:
        env.accept(pay([out(a, 0)], [a.outputs[0].amount - 1_000]))
    assert info.value.reason == "too-long-mempool-chain"
    replacement = pay([out(root, 1)], [root.outputs[1].amount - 20_000])
    assert env.accept(replacement).replaced == {b.txid: replacement.txid}
    _check_invariants(env)


def test_a_refused_replacement_leaves_the_pool_untouched() -> None:
    env = env_with(FULL)
    op = env.coinbase(1)
    first = fanout(op, REWARD, 1_000, 2)
    child = pay([out(first, 0)], [first.outputs[0].amount - 1_000])
    env.accept(first)
    env.accept(child)
    before = (env.pool.txids(), env.pool.bytes, env.pool.usage)
    bad_sig = pay([op], [REWARD - 100_000], key=PrivateKey(bytes(range(2, 34))))
    with pytest.raises(ConsensusError):
        env.accept(bad_sig)
    assert (env.pool.txids(), env.pool.bytes, env.pool.usage) == before


def test_a_replacement_that_needs_room_counts_the_bytes_it_frees() -> None:
    op_fee = 1_000
    probe = Env()
    first_size = pay([probe.coinbase(1)], [REWARD - op_fee]).size
    env = env_with(FULL, max_bytes=first_size + 5)
    first = pay([env.coinbase(1)], [REWARD - op_fee])
    env.accept(first)
    replacement = pay([env.coinbase(1)], [REWARD - 50_000])
    outcome = env.accept(replacement)
    assert outcome.replaced == {first.txid: replacement.txid} and not outcome.evicted
    assert env.pool.bytes <= env.pool.max_bytes


def test_a_replacement_adopts_the_orphans_waiting_for_it() -> None:
    env = env_with(FULL)
    parent = fanout(env.coinbase(1), REWARD, 1_000, 2)
    held_child = pay([out(parent, 0)], [parent.outputs[0].amount - 1_000])
    assert env.accept(held_child).orphan
    # A different version of the parent gets in first; then the real parent replaces it and
    # adopts its orphan.
    other = pay([env.coinbase(1)], [REWARD - 500])
    env.accept(other)
    outcome = env.accept(parent)
    assert outcome.accepted == [parent.txid, held_child.txid]
    assert outcome.replaced == {other.txid: parent.txid}


# ------------------------------------------------------------------ properties


_step = st.tuples(
    st.sampled_from(["spend", "spend", "double", "double", "mine"]),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=2),
    st.integers(1, 3),  # outputs
    st.integers(0, 40_000),  # fee
    st.booleans(),  # signal BIP125
)


@pytest.mark.parametrize("policy", REPLACEMENT_POLICIES)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_step, min_size=1, max_size=25))
def test_property_replacements_never_lower_fees_exceed_the_limit_or_leave_conflicts(
    policy: ReplacementPolicy, steps: list[tuple[str, list[int], int, int, bool]]
) -> None:
    env = env_with(policy, blocks=6)
    spendable: list[tuple[OutPoint, int]] = [(env.coinbase(h), REWARD) for h in range(1, 5)]
    for kind, picks, outputs, fee, signal in steps:
        if kind == "mine":
            txs, _ = env.pool.select_for_block(2_000)
            env.mine_and_update(txs)
            _check_invariants(env)
            continue
        if kind == "double":
            # Re-spend the inputs of something in the pool (or of nothing, if it is empty).
            pool = env.pool.txids()
            if not pool:
                continue
            victim = env.pool.get(pool[picks[0] % len(pool)])
            assert victim is not None
            chosen = [txin.outpoint for txin in victim.tx.inputs]
            value = victim.fee + victim.tx.total_out()
            # Mostly outbidding the victim, sometimes not: both sides of the fee rules.
            fee = victim.fee // 2 if picks[0] % 4 == 0 else 2 * victim.fee + 1_000 + fee
        else:
            choice = list(dict.fromkeys(spendable[i % len(spendable)] for i in picks))
            chosen = [op for op, _ in choice]
            value = sum(v for _, v in choice)
        each = (value - fee) // outputs
        if each <= 0:
            continue
        tx = pay(chosen, [each] * outputs, RBF if signal else SEQUENCE_FINAL)
        before_fee = _pool_fee(env)
        before = {t: env.pool.get(t).fee for t in env.pool.txids()}  # type: ignore[union-attr]
        try:
            outcome = env.accept(tx)
        except ConsensusError:
            assert set(env.pool.txids()) == set(before)
            continue
        spendable.extend((out(tx, n), each) for n in range(outputs))
        assert len(outcome.replaced) <= MAX_REPLACEMENT_CANDIDATES
        if policy == FIRST_SEEN:
            assert not outcome.replaced
        if outcome.replaced:
            assert set(outcome.replaced.values()) == {tx.txid}
            assert env.pool.get(tx.txid).fee >= sum(  # type: ignore[union-attr]
                before[t] for t in outcome.replaced
            )
            assert _pool_fee(env) >= before_fee
            assert not set(outcome.replaced) & set(env.pool.txids())
        _check_invariants(env)
