"""Vector76: show a withheld block paying the victim to it alone; reorg it away.

Vector76 (one-confirmation) attack: the attacker withholds a block A holding tx1, the
payment to the victim. When the honest network finds a competing block, A is shown to the
victim's node alone (the victim is cut off, A is submitted to it) while tx2, the same coin
back to the attacker, goes to everyone else. The victim sees one confirmation; the honest
branch grows past A and, once the victim reconnects, that confirmation is reorganised away."""

from __future__ import annotations

import argparse
import time

from lab.attack.options import add_attack_arguments
from lab.attack.race import tx_state
from lab.scenario import (
    Network,
    Outcome,
    ScenarioError,
    Withheld,
    confirmations,
    deepest_reorg,
    parallel,
    warned_before_loss,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "unused: the attack shows the victim exactly one confirmation")
    parser.add_argument("--wait", type=float, default=1.0, metavar="S",
                        help="seconds the victim looks at its confirmed payment (default 1)")


def run(net: Network) -> None:
    roles, args, tl = net.roles, net.args, net.timeline
    if not roles.honest:
        raise ScenarioError("vector76 needs at least one honest miner (see --honest)")
    out = Outcome("vector76")
    honest_net = [n for n in roles.others if n is not roles.victim]
    relayed_by_hand = False
    with net.staged():
        net.sync_blocks(roles.nodes, tie_breaker=roles.honest[0])
        ds = net.double_spend(roles.attacker, roles.victim, args.amount)
        net.monitor.track("tx1", ds.txid1)
        net.monitor.track("tx2", ds.txid2)
        tl.mark(roles.attacker.name, "double spend prepared", tx1=ds.txid1[:16],
               tx2=ds.txid2[:16])
        block = net.withhold_block(roles.attacker, [ds.tx1])
        net.isolate(roles.victim)
        miner = roles.honest[0]
        h1 = net.mine(miner, label="honest block (competing)")[0]
        net.wait_tip(honest_net, h1, timeout=args.timeout)
        parallel([lambda: net.submit_block(roles.victim, block,
                                           "block shown to the victim only"),
                  *[lambda n=n: net.send(n, ds.tx2, "tx2") for n in honest_net]])
        time.sleep(args.wait)
        net.monitor.poll()
        seen = tx_state(roles.victim, ds.txid1)
        tl.mark(roles.victim.name, "victim's view while cut off", status=seen.get("status"),
               confirmations=seen.get("confirmations"))
        # One more honest block makes the honest branch strictly heavier than A.
        h2 = net.mine(net.rng.choice(roles.honest), label="honest block (extends)")[0]
        net.wait_tip(honest_net, h2, timeout=args.timeout)
        net.reconnect(roles.victim)
        if block.via_isolation:
            net.reconnect(roles.attacker)
        try:
            net.wait_for(lambda: roles.victim.try_call("getbestblockhash") == h2, args.timeout,
                       "the victim to hear of the honest branch")
        except ScenarioError:
            # Its peers did not redial in time; hand it the honest blocks, as any peer would.
            relayed_by_hand = True
            for block_hash in (h1, h2):
                net.submit_block(roles.victim,
                                 Withheld(block_hash, miner.call("getblock", block_hash, 0)),
                                 "honest block relayed by hand")
        time.sleep(net.monitor.interval * 2)
        net.monitor.poll()
        after = tx_state(roles.victim, ds.txid1)

    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(net.timeline.events, [roles.victim.name])
    out.success = out.victim_confirmations_seen >= 1 and after.get("status") == "conflicted"
    out.detected = warned_before_loss(net.timeline.events, roles.victim.name)
    out.details = {
        "withheld_block": block.hash, "honest_blocks": [h1, h2],
        "victim_final_status": after.get("status"), "relayed_by_hand": relayed_by_hand,
        "txid1": ds.txid1, "txid2": ds.txid2,
    }
    if out.success:
        out.verdict = (f"vector76: SUCCESS — the victim saw its payment with "
                       f"{confirmations(out.victim_confirmations_seen)} in the withheld block "
                       f"{block.hash[:16]}; on reconnecting it reorganised {out.reorg_depth} "
                       f"block(s) to the honest branch, where tx2 is confirmed: tx1 is "
                       f"{after.get('status')}.")
    else:
        out.verdict = (f"vector76: FAILED — the victim's payment is {after.get('status')} "
                       f"({confirmations(after.get('confirmations'))}).")
    net.report(**out.as_report())
