"""Replacements over the in-memory P2P network, in virtual time: relayed like new transactions
under full RBF, refused without penalty by a first-seen node, and a hostile peer's replacement
flood (pinning, rule 5, cycling) bounded in CPU and memory, each refused replacement charged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import consensus.mempool as mempool_module
from consensus.block import Block
from consensus.replacement import FIRST_SEEN, FULL, MAX_REPLACEMENT_CANDIDATES
from consensus.tx import Transaction, TxIn, TxOut, sign_transaction
from p2p.memory import MemoryNode
from p2p.messages import TxMsg
from p2p.penalties import PENALTY
from p2p.protocol import PeerPenalised
from tests.p2p_helpers import (
    envelope,
    fund,
    info_of,
    key_of,
    line,
    link,
    network,
    pay,
    run_until,
    send_as,
)

FAMILY = 20  # children per pinned root: 5 families of 21 exceed rule 5's 100


def _spend(owner: MemoryNode, inputs: list[tuple[bytes, int]], amounts: list[int]) -> Transaction:
    unsigned = Transaction(
        [TxIn(txid, n, b"", b"") for txid, n in inputs],
        [TxOut(a, owner.payout_pkh) for a in amounts],
    )
    return sign_transaction(unsigned, [owner.wallet_key] * len(inputs), owner.params.genesis_hash)


def _penalties(node: MemoryNode) -> list[PeerPenalised]:
    return [e for e in node.events if isinstance(e, PeerPenalised)]


def test_a_replacement_relays_across_full_rbf_nodes_and_stops_at_a_first_seen_one() -> None:
    net, nodes = network(4, seed=81)
    a, b, c, d = nodes
    for node in (a, b, c):
        node.mempool.replacement_policy = FULL
    d.mempool.replacement_policy = FIRST_SEEN
    line(net, nodes)
    (coin,) = fund(a, 1)
    run_until(net, net.converged, 10, "funding blocks")
    first = pay(a, coin, b.payout_pkh)
    a.submit_transaction(first)
    net.flush(a)
    run_until(net, lambda: all(first.txid in n.mempool for n in nodes), 5, "the first payment")

    second = pay(a, coin, a.payout_pkh, fee=50_000)  # the same coin back to a, a higher fee
    outcome = a.submit_transaction(second)
    assert outcome.replaced == {first.txid: second.txid}
    net.flush(a)
    run_until(net, lambda: all(second.txid in n.mempool for n in (b, c)), 5, "the replacement")
    net.run(2)
    for node in (a, b, c):
        assert node.mempool.txids() == [second.txid]
    assert d.mempool.txids() == [first.txid]  # first seen wins there
    # c relayed what its policy took; d refusing it is a policy difference, not misbehaviour.
    assert not [p for n in nodes for p in _penalties(n)]


def _pinned(owner: MemoryNode, victim: MemoryNode, coins: list[Block]) -> list[Transaction]:
    """Per coin, a root paying FAMILY outputs and a child on each, in `victim`'s mempool."""
    roots = []
    for coin in coins:
        root = pay(owner, coin, owner.payout_pkh, outputs=FAMILY)
        victim.submit_transaction(root)
        for n, out in enumerate(root.outputs):
            victim.submit_transaction(_spend(owner, [(root.txid, n)], [out.amount - 5_000]))
        roots.append(root)
    return roots


@pytest.fixture
def counted_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Signature checks and descendant-walk steps the mempool makes."""
    counts = {"signatures": 0, "walked": 0}
    check = mempool_module.check_tx_signatures
    walk = mempool_module.Mempool._descendants

    def counting_check(*args: object, **kwargs: object) -> None:
        counts["signatures"] += 1
        check(*args, **kwargs)  # type: ignore[arg-type]

    def counting_walk(self: mempool_module.Mempool, txid: bytes) -> set[bytes]:
        found = walk(self, txid)
        counts["walked"] += len(found)
        return found

    monkeypatch.setattr(mempool_module, "check_tx_signatures", counting_check)
    monkeypatch.setattr(mempool_module.Mempool, "_descendants", counting_walk)
    yield counts


def test_a_replacement_flood_is_bounded_and_charged_per_refused_replacement(
    counted_work: dict[str, int],
) -> None:
    net, (victim, attacker) = network(2, seed=82)
    victim.mempool.replacement_policy = FULL
    link(net, victim, attacker)
    coins = fund(attacker, 5)
    run_until(net, net.converged, 10, "funding blocks")
    roots = _pinned(attacker, victim, coins)
    pinned = set(victim.mempool.txids())
    assert len(pinned) == 5 * (FAMILY + 1)
    usage = victim.mempool.usage
    coinbases = [(coin.txs[0].txid, 0) for coin in coins]
    value = coins[0].txs[0].outputs[0].amount

    counted_work.update(signatures=0, walked=0)
    sent = 0
    for i in range(150):
        if attacker.addr not in victim.p2p.by_addr:
            break  # cut off
        if i % 2:
            # Rule 5: all five pinned families at once (105 transactions), a high fee.
            tx = _spend(attacker, coinbases, [5 * value - 1_000_000 - i])
        else:
            # Rule 3: one family, a far higher fee rate than its root, less than the family's
            # total fee (the classic pin).
            tx = _spend(attacker, coinbases[:1], [value - 30_000 - i])
        send_as(net, attacker, victim, envelope(victim, TxMsg(tx.encode())))
        sent += 1
    net.run(1)

    charged = [p for p in _penalties(victim) if p.addr[0] == attacker.addr[0]]
    assert {p.reason for p in charged} == {"replacement-rejected"}
    threshold = victim.p2p.config.misbehavior_threshold
    assert len(charged) == sent == threshold // PENALTY["replacement-rejected"]
    assert charged[-1].discouraged and key_of(attacker) in victim.p2p.book.list_banned(net.now)
    # Nothing changed in the pool, no refused replacement cost a signature check, and the
    # walks stayed within rule 5's bound per attempt (the rule 5 attempts walked nothing).
    assert set(victim.mempool.txids()) == pinned and victim.mempool.usage == usage
    assert counted_work["signatures"] == 0
    assert counted_work["walked"] <= (sent // 2 + 1) * (FAMILY + 1)
    assert counted_work["walked"] <= sent * MAX_REPLACEMENT_CANDIDATES
    assert {r.txid for r in roots} <= pinned


def test_cycling_replacements_pay_for_each_step_and_an_old_version_costs_nothing(
    counted_work: dict[str, int],
) -> None:
    net, (victim, attacker) = network(2, seed=83)
    victim.mempool.replacement_policy = FULL
    link(net, victim, attacker)
    (coin,) = fund(attacker, 1)
    run_until(net, net.converged, 10, "funding blocks")
    versions = []
    fee = 10_000
    for step in range(10):
        # A to the attacker, B to the victim's wallet, A again (a new txid: a higher fee).
        payee = attacker.payout_pkh if step % 2 == 0 else victim.payout_pkh
        tx = pay(attacker, coin, payee, fee=fee)
        fee += tx.size * victim.mempool.incremental_fee_rate + 1_000
        versions.append(tx)
        send_as(net, attacker, victim, envelope(victim, TxMsg(tx.encode())))
        assert victim.mempool.txids() == [tx.txid]
    assert not _penalties(victim)
    # Each step paid at least its own size again: cycling ten times cost the attacker that.
    paid = [victim.mempool.get(versions[-1].txid).fee]  # type: ignore[union-attr]
    assert paid[0] >= 10_000 + sum(v.size for v in versions[:-1])
    # Sending an old version again: already seen, dropped before any validation.
    signatures = counted_work["signatures"]
    for old in versions[:-1]:
        send_as(net, attacker, victim, envelope(victim, TxMsg(old.encode())))
    assert counted_work["signatures"] == signatures
    assert victim.mempool.txids() == [versions[-1].txid]
    assert not _penalties(victim)
    assert info_of(victim, attacker)["misbehavior"] == 0
