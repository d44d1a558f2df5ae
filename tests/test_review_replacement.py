"""Hostile review of mempool replacement (issue 18 part 1): each test here failed before the
fix committed with it."""

from __future__ import annotations

from consensus.replacement import FIRST_SEEN, FULL
from tests.p2p_helpers import fund, info_of, link, network, pay, run_until


def test_an_honest_first_seen_peer_relaying_the_original_of_a_race_is_not_charged() -> None:
    # A race: the original reaches a first-seen node, a higher-fee double spend a full-RBF node,
    # at the same time. Each relays what it holds to the other. The full-RBF node refuses the
    # original (its fee rate does not beat the replacement it holds): the loser of a race, what
    # every honest first-seen or opt-in peer relays, not a replacement attempt to charge.
    net, (full, first_seen) = network(2, seed=91)
    full.mempool.replacement_policy = FULL
    first_seen.mempool.replacement_policy = FIRST_SEEN
    link(net, full, first_seen)
    (coin,) = fund(full, 1)
    run_until(net, net.converged, 10, "funding blocks")
    original = pay(full, coin, first_seen.payout_pkh)
    replacement = pay(full, coin, full.payout_pkh, fee=50_000)
    first_seen.submit_transaction(original)
    full.submit_transaction(replacement)
    net.flush(first_seen)
    net.flush(full)
    net.run(5)
    assert full.mempool.txids() == [replacement.txid]
    assert first_seen.mempool.txids() == [original.txid]
    assert info_of(full, first_seen)["misbehavior"] == 0
    assert info_of(first_seen, full)["misbehavior"] == 0
