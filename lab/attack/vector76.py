"""Vector76 (one-confirmation) attack: the attacker withholds a block A holding tx1, the
payment to the victim. When the honest network finds a competing block, A is shown to the
victim's node alone (the victim is cut off, A is submitted to it) while tx2, the same coin
back to the attacker, goes to everyone else. The victim sees one confirmation; the honest
branch grows past A and, once the victim reconnects, that confirmation is reorganised away."""

from __future__ import annotations

import time

from lab.attack.common import (
    AttackError,
    Outcome,
    make_double_spend,
    mine_one,
    parallel,
    send_tx,
    staged,
    submit_block,
    wait_converged,
    wait_tip,
    wait_until,
    withhold_block,
)
from lab.attack.context import Context
from lab.attack.race import tx_state
from lab.attack.report import deepest_reorg, warned_before_loss
from lab.text import confirmations


def run(ctx: Context) -> Outcome:
    roles, args, tl = ctx.roles, ctx.args, ctx.timeline
    if not roles.honest:
        raise AttackError("vector76 needs at least one honest miner (see --honest)")
    out = Outcome("vector76")
    honest_net = [n for n in roles.others if n is not roles.victim]
    relayed_by_hand = False
    with staged(ctx.net):
        wait_converged(roles.nodes, tie_breaker=roles.honest[0])
        ds = make_double_spend(roles.attacker, roles.victim, args.amount, ctx.rng)
        ctx.monitor.track("tx1", ds.txid1)
        ctx.monitor.track("tx2", ds.txid2)
        tl.add(roles.attacker.name, "double spend prepared", tx1=ds.txid1[:16],
               tx2=ds.txid2[:16])
        block = withhold_block(ctx.net, roles.attacker, roles.attacker.call("getnewaddress"),
                               [ds.tx1])
        ctx.net.isolate(roles.victim)
        miner = roles.honest[0]
        h1 = mine_one(miner, tl, "honest block (competing)")
        wait_tip(honest_net, h1, timeout=args.timeout)
        parallel([lambda: submit_block(roles.victim, block.hex, block.hash, tl,
                                       "block shown to the victim only"),
                  *[lambda n=n: send_tx(n, ds.tx2, tl, "tx2") for n in honest_net]])
        time.sleep(args.wait)
        ctx.monitor.poll()
        seen = tx_state(roles.victim, ds.txid1)
        tl.add(roles.victim.name, "victim's view while cut off", status=seen.get("status"),
               confirmations=seen.get("confirmations"))
        # One more honest block makes the honest branch strictly heavier than A.
        h2 = mine_one(ctx.rng.choice(roles.honest), tl, "honest block (extends)")
        wait_tip(honest_net, h2, timeout=args.timeout)
        ctx.net.reconnect(roles.victim)
        if block.via_isolation:
            ctx.net.reconnect(roles.attacker)
        try:
            wait_until(lambda: roles.victim.try_call("getbestblockhash") == h2, args.timeout,
                       "the victim to hear of the honest branch")
        except AttackError:
            # Its peers did not redial in time; hand it the honest blocks, as any peer would.
            relayed_by_hand = True
            for block_hash in (h1, h2):
                submit_block(roles.victim, miner.call("getblock", block_hash, 0), block_hash,
                             tl, "honest block relayed by hand")
        time.sleep(ctx.monitor.interval * 2)
        ctx.monitor.poll()
        after = tx_state(roles.victim, ds.txid1)

    out.victim_confirmations_seen = ctx.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(ctx.timeline.events, [roles.victim.name])
    out.success = out.victim_confirmations_seen >= 1 and after.get("status") == "conflicted"
    out.detected = warned_before_loss(ctx.timeline.events, roles.victim.name)
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
    return out
