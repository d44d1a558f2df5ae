"""Finney: withhold a block holding tx2, pay the victim with tx1, release the block.

Finney attack: the attacker mines a block holding tx2 (the coin back to itself) and keeps it
to itself, pays the victim with tx1, and releases the block once the victim has accepted the
payment at zero confirmations. No honest block may come in between: honest mining is paused
for the setup (with `--honest-block-first` an honest block is mined before the release, the
case where the attack fails)."""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from lab.attack.options import add_attack_arguments
from lab.attack.race import detected_in, tx_state
from lab.scenario import (
    Network,
    Outcome,
    ScenarioError,
    confirmations,
    deepest_reorg,
    first_conflict_seen,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "unused: the victim accepts at 0 confirmations")
    parser.add_argument("--wait", type=float, default=2.0, metavar="S",
                        help="seconds between paying the victim and releasing (default 2)")
    parser.add_argument("--release-to", choices=("victim", "attacker"), default="victim",
                        help="node the withheld block is submitted to (default victim)")
    parser.add_argument("--honest-block-first", action="store_true",
                        help="an honest block is mined before the release (the attack fails)")


def run(net: Network) -> None:
    roles, args, tl = net.roles, net.args, net.timeline
    out = Outcome("finney")
    with net.staged():
        net.sync_blocks(roles.nodes,
                       tie_breaker=roles.honest[0] if roles.honest else roles.attacker)
        ds = net.double_spend(roles.attacker, roles.victim, args.amount)
        net.monitor.track("tx1", ds.txid1)
        net.monitor.track("tx2", ds.txid2)
        tl.mark(roles.attacker.name, "double spend prepared", tx1=ds.txid1[:16],
               tx2=ds.txid2[:16])
        block = net.withhold_block(roles.attacker, [ds.tx2])
        net.send(roles.victim, ds.tx1, "tx1")
        time.sleep(args.wait)
        net.monitor.poll()
        before = tx_state(roles.victim, ds.txid1)
        accepted = before.get("status") == "mempool" and before.get(
            "accepted_zero_conf", True) is not False
        tl.mark(roles.victim.name, "victim's view before the release",
               status=before.get("status"), accepted_zero_conf=before.get("accepted_zero_conf"))

        honest_first = None
        if args.honest_block_first:
            if not roles.honest:
                tl.mark("*", "no honest miner: --honest-block-first ignored")
            else:
                honest_first = net.mine(roles.honest[0], label="honest block (before release)")[0]
                net.wait_for(lambda: roles.victim.try_call("getbestblockhash") == honest_first,
                           args.timeout, "the honest block to reach the victim")
        target = roles.attacker if args.release_to == "attacker" and not block.via_isolation \
            else roles.victim
        released_t = tl.now()
        net.submit_block(target, block)
        if block.via_isolation:
            net.reconnect(roles.attacker)
        # A lost attack leaves tx1 unconfirmed: that is a result, not an error.
        with contextlib.suppress(ScenarioError):
            net.wait_for(lambda: tx_state(roles.victim, ds.txid1).get("status") != "mempool",
                       args.timeout, "the victim's node to settle tx1")
        time.sleep(net.monitor.interval * 2)
        net.monitor.poll()
        after = tx_state(roles.victim, ds.txid1)
        on_chain = (roles.victim.try_call("getblockheader", block.hash) or {}).get(
            "confirmations", -1) >= 1

    won_on_chain = on_chain and after.get("status") == "conflicted"
    # The attack succeeds only against a merchant that accepted the payment before the release.
    out.success = won_on_chain and accepted
    out.detected = detected_in(before) or first_conflict_seen(
        [e for e in tl.events if e["t"] <= released_t], roles.victim.name) is not None
    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(tl.events, [roles.victim.name])
    out.details = {
        "withheld_block": block.hash,
        "withheld_via": "isolation" if block.via_isolation else "generateblock submit=false",
        "released_to": target.name,
        "honest_block_first": honest_first,
        "victim_accepted_zero_conf": accepted,
        "victim_final_status": after.get("status"),
        "txid1": ds.txid1, "txid2": ds.txid2,
    }
    out.verdict = finney_verdict(won_on_chain, accepted, out.detected, block.hash, target.name,
                                 honest_first is not None, after)
    net.report(**out.as_report())


def finney_verdict(won_on_chain: bool, accepted: bool, detected: bool, block_hash: str,
                   released_to: str, honest_first: bool, after: dict[str, Any]) -> str:
    """The verdict says whether the victim accepted the payment before the release: a
    payment it never accepted (a listening period, a seen conflict) cost it nothing."""
    if accepted:
        before = "which it had accepted at 0 confirmations"
    elif detected:
        before = "which it had flagged as double-spent and not accepted"
    else:
        before = "which it had not accepted at 0 confirmations"
    status = after.get("status")
    if won_on_chain and accepted:
        return (f"finney: SUCCESS — the withheld block {block_hash[:16]} (with tx2) was "
                f"released to {released_to} and became the tip; the victim's payment, "
                f"{before}, is now {status}.")
    if won_on_chain:
        return (f"finney: FAILED — the withheld block {block_hash[:16]} won on chain and the "
                f"victim's payment, {before}, is now {status}; the merchant handed nothing "
                f"over for it.")
    why = "an honest block came first" if honest_first else "the withheld block lost"
    return (f"finney: FAILED — {why}; the victim's payment, {before}, is {status} with "
            f"{confirmations(after.get('confirmations'))}.")
