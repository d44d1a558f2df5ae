"""Finney attack: the attacker mines a block holding tx2 (the coin back to itself) and keeps it
to itself, pays the victim with tx1, and releases the block once the victim has accepted the
payment at zero confirmations. No honest block may come in between: honest mining is paused
for the setup (with `--honest-block-first` an honest block is mined before the release, the
case where the attack fails)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from lab.attack.common import (
    AttackError,
    Outcome,
    make_double_spend,
    mine_one,
    send_tx,
    staged,
    submit_block,
    wait_converged,
    wait_until,
    withhold_block,
)
from lab.attack.context import Context
from lab.attack.race import detected_in, tx_state
from lab.attack.report import deepest_reorg, first_conflict_seen
from lab.text import confirmations


def run(ctx: Context) -> Outcome:
    roles, args, tl = ctx.roles, ctx.args, ctx.timeline
    out = Outcome("finney")
    with staged(ctx.net):
        wait_converged(roles.nodes,
                       tie_breaker=roles.honest[0] if roles.honest else roles.attacker)
        ds = make_double_spend(roles.attacker, roles.victim, args.amount, ctx.rng)
        ctx.monitor.track("tx1", ds.txid1)
        ctx.monitor.track("tx2", ds.txid2)
        tl.add(roles.attacker.name, "double spend prepared", tx1=ds.txid1[:16],
               tx2=ds.txid2[:16])
        address = roles.attacker.call("getnewaddress")
        block = withhold_block(ctx.net, roles.attacker, address, [ds.tx2])
        send_tx(roles.victim, ds.tx1, tl, "tx1")
        time.sleep(args.wait)
        ctx.monitor.poll()
        before = tx_state(roles.victim, ds.txid1)
        accepted = before.get("status") == "mempool" and before.get(
            "accepted_zero_conf", True) is not False
        tl.add(roles.victim.name, "victim's view before the release",
               status=before.get("status"), accepted_zero_conf=before.get("accepted_zero_conf"))

        honest_first = None
        if args.honest_block_first:
            if not roles.honest:
                tl.add("*", "no honest miner: --honest-block-first ignored")
            else:
                honest_first = mine_one(roles.honest[0], tl, "honest block (before release)")
                wait_until(lambda: roles.victim.try_call("getbestblockhash") == honest_first,
                           args.timeout, "the honest block to reach the victim")
        target = roles.attacker if args.release_to == "attacker" and not block.via_isolation \
            else roles.victim
        released_t = tl.now()
        submit_block(target, block.hex, block.hash, tl)
        if block.via_isolation:
            ctx.net.reconnect(roles.attacker)
        # A lost attack leaves tx1 unconfirmed: that is a result, not an error.
        with contextlib.suppress(AttackError):
            wait_until(lambda: tx_state(roles.victim, ds.txid1).get("status") != "mempool",
                       args.timeout, "the victim's node to settle tx1")
        time.sleep(ctx.monitor.interval * 2)
        ctx.monitor.poll()
        after = tx_state(roles.victim, ds.txid1)
        on_chain = (roles.victim.try_call("getblockheader", block.hash) or {}).get(
            "confirmations", -1) >= 1

    won_on_chain = on_chain and after.get("status") == "conflicted"
    # The attack succeeds only against a merchant that accepted the payment before the release.
    out.success = won_on_chain and accepted
    out.detected = detected_in(before) or first_conflict_seen(
        [e for e in tl.events if e["t"] <= released_t], roles.victim.name) is not None
    out.victim_confirmations_seen = ctx.monitor.max_victim_conf
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
    return out


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
