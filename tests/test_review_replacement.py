"""Hostile review of mempool replacement (issue 18 part 1): each test here failed before the
fix committed with it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus.replacement import FIRST_SEEN, FULL
from node.replacements import MAX_REPLACEMENT_LINE, ReplacementLog
from tests.p2p_helpers import fund, info_of, link, network, pay, run_until
from tests.test_replacement_node import PAYEE, drain, funded, make_node, respend

CYCLES = 3 * MAX_REPLACEMENT_LINE


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


async def test_a_long_line_of_replacements_costs_each_status_pass_a_bounded_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cycling one coin through N replacements leaves a line of N replaced transactions, all
    # watched. Every status pass (each replacement, each double spend, each block) walked each
    # one down the line to the live one: N²/2 steps a pass, N³ over the flood (21 million steps
    # for 400 replacements). Each walk is now at most MAX_REPLACEMENT_LINE steps.
    steps = {"pass": 0, "max": 0}
    holder = ReplacementLog.holder

    def counting(self: ReplacementLog, txid: bytes, holds: Callable[[bytes], bool]) -> bytes | None:
        def counted(t: bytes) -> bool:
            steps["pass"] += 1
            return holds(t)

        return holder(self, txid, counted)

    monkeypatch.setattr(ReplacementLog, "holder", counting)
    node = make_node(tmp_path / "n", "full")
    await node.start()
    try:
        rpc = await funded(node)
        txid = await rpc("sendtoaddress", PAYEE, 100_000_000)
        fee = 10_000
        for _ in range(CYCLES):
            fee += 1_000
            steps["pass"] = 0
            node.submit_transaction(respend(node, txid, fee))
            steps["max"] = max(steps["max"], steps["pass"])
        assert len(node.replacements) == CYCLES
        # Two passes a replacement (its double spend, its `replaced` statuses) over the watched.
        assert steps["max"] <= 2 * (CYCLES + 2) * MAX_REPLACEMENT_LINE
        # The newest replaced ones still say so; the first, past the bound, is conflicted by
        # the live replacement in the mempool (as after a restart).
        live = node.mempool.txids()[0]
        assert node.tx_status(bytes.fromhex(txid)).status == "conflicted"
        assert node.tx_status(bytes.fromhex(txid)).conflicts == [live]
    finally:
        await node.stop()


def test_the_replacement_walk_stops_at_its_bound() -> None:
    log = ReplacementLog(capacity=1_000)
    line = [n.to_bytes(32, "big") for n in range(1_000)]
    log.note(dict(itertools.pairwise(line)))
    seen: list[bytes] = []
    last = line[-1]
    within = line[-1 - MAX_REPLACEMENT_LINE]
    assert log.holder(within, lambda t: seen.append(t) or t == last) == last
    seen.clear()
    assert log.holder(line[0], lambda t: seen.append(t) or t == last) is None
    assert len(seen) == MAX_REPLACEMENT_LINE


async def test_the_replacements_own_status_event_says_what_gettransaction_says(
    tmp_path: Path,
) -> None:
    # With double-spend alerts on, a replacement in the mempool is `conflicted` (the node holds
    # the proof). Its status pass said so, then the arrival's event said `mempool` regardless,
    # so a subscriber's last word on it contradicted gettransaction (until the next block).
    node = make_node(tmp_path / "n", "full")
    await node.start()
    try:
        rpc = await funded(node)
        paid = await rpc("sendtoaddress", PAYEE, 10**8)
        fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
        sub = node.events.subscribe(types=["tx_status"])
        replacement = respend(node, paid, fee + 10_000)
        await rpc("sendrawtransaction", replacement.encode().hex())
        events = [e for e in drain(sub) if e["txid"] == replacement.txid.hex()]
        status = await rpc("gettransaction", replacement.txid.hex())
        assert status["status"] == "conflicted"
        assert events and events[-1]["status"] == status["status"]
    finally:
        await node.stop()
