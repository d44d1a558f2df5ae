"""Race: tx1 to the victim and tx2 to the miners at once; accepted at 0 confirmations.

Race attack: tx1 pays the victim, tx2 sends the same coin back to the attacker; tx1 goes to
the victim's node and tx2 to the honest miners at the same moment. The victim sees tx1 at zero
confirmations; whichever spend the miners saw first is mined. Under a replacement policy
(`--replacement opt-in|full`, or a mixed network with `--full-rbf-nodes`) the attacker can
instead outbid (`--outbid`): tx2, paying the higher fee, replaces tx1 wherever the node's
policy lets it; the timeline shows which spend each node held."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

from lab.attack.options import add_attack_arguments
from lab.attack.replacement import (
    OPT_IN,
    Holdings,
    add_policy_arguments,
    apply_policies,
    describe_holdings,
    wanted_policies,
)
from lab.scenario import (
    Network,
    Outcome,
    ScenarioError,
    deepest_reorg,
    parallel,
    shows_conflict,
)

LOOK_INTERVAL = 0.1  # seconds between looks at every node's mempool while the race runs


def tx_state(node: Any, txid: str) -> dict[str, Any]:
    return node.try_call("gettransaction", txid) or {"status": "unknown"}


def detected_in(view: dict[str, Any]) -> bool:
    """The victim's node knows tx1 is double-spent: an alert, a recorded conflict, the
    conflicted status, or tx1 replaced in its own mempool."""
    return bool(view.get("double_spend_alert") or view.get("conflicts")
                or view.get("status") in ("conflicted", "replaced"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "blocks the honest miners mine after the race (default 1)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S",
                        help="send tx2 S seconds after tx1 (negative: before; with --outbid, "
                             "S ≥ 0 seconds after tx1 reached every node; default 0)")
    parser.add_argument("--wait", type=float, default=2.0, metavar="S",
                        help="seconds for propagation and alerts before anyone mines (default 2)")
    parser.add_argument("--victim-latency", type=float, default=0.0, metavar="MS",
                        help="delay the victim node's outgoing P2P traffic during the race "
                             "(setlinkfault), as for a poorly connected merchant (default 0)")
    parser.add_argument("--outbid", action="store_true",
                        help="outbid instead of racing: send tx2 only once tx1 is in every "
                             "node's mempool (a replacement policy may still let it through)")
    add_policy_arguments(parser)


@dataclass
class RacePlan:
    """One race's parameters (the command line's, or a sweep's)."""

    amount: int
    delay: float = 0.0
    wait: float = 2.0
    victim_latency: float = 0.0
    blocks: int = 1
    outbid: bool = False
    replaceable: bool = False  # tx1 signals BIP125
    timeout: float = 60.0


def check_durations(**values: float) -> None:
    """Refuses a duration that is not a finite number (argparse's float takes nan and inf: a
    nan --wait would keep the observation window open for ever)."""
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise ScenarioError(f"{', '.join(bad)} must be finite numbers of seconds")


def check_args(args: argparse.Namespace) -> None:
    """The race's own numbers, checked before any node is touched."""
    check_durations(**{"--delay": args.delay, "--wait": args.wait,
                       "--victim-latency": args.victim_latency, "--timeout": args.timeout})
    if args.outbid and args.delay < 0:
        raise ScenarioError("--outbid sends tx2 after tx1: --delay must be 0 or more")
    if args.wait < 0 or args.victim_latency < 0:
        raise ScenarioError("--wait and --victim-latency must be 0 or more")


def plan_of(args: argparse.Namespace, policies: dict[str, str]) -> RacePlan:
    check_args(args)
    return RacePlan(amount=args.amount, delay=args.delay, wait=args.wait,
                    victim_latency=args.victim_latency,
                    blocks=max(1, args.confirmations or 1), outbid=args.outbid,
                    # Opt-in nodes replace only a signalling tx1: the attacker, who writes
                    # tx1, makes it signal whenever a node it relies on runs opt-in.
                    replaceable=OPT_IN in policies.values(), timeout=args.timeout)


def run(net: Network) -> None:
    roles, args = net.roles, net.args
    if not roles.honest:
        raise ScenarioError("the race needs at least one honest miner (see --honest)")
    check_args(args)  # before any node is restarted for a run its own arguments refuse
    with net.staged():
        staging = apply_policies(net, wanted_policies(net, args))
        if staging.restarted:
            net.stop_mining()  # a restarted miner comes back mining, as its configuration says
        plan = plan_of(args, staging.policies)
        result = race_trial(net, plan, staging.policies)
    out = Outcome("race")
    out.success = result["success"]
    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(net.timeline.events, [roles.victim.name])
    out.detected = result["detected"]
    out.details = {k: v for k, v in result.items() if k not in ("success", "detected")}
    out.details["restarted_for_policy"] = staging.restarted
    out.verdict = result["verdict"]
    net.report(**out.as_report())


def race_trial(net: Network, plan: RacePlan, policies: dict[str, str]) -> dict[str, Any]:
    """One race on a staged network (mining paused) whose nodes run `policies`: prepares
    the two spends, sends them, watches who holds which, lets one honest miner mine
    `plan.blocks` blocks and judges from the timeline (only events from this trial on)."""
    roles, tl = net.roles, net.timeline
    attacker, victim = roles.attacker, roles.victim
    t0 = tl.now()
    net.sync_blocks(roles.nodes, tie_breaker=roles.honest[0])
    ds = net.double_spend(attacker, victim, plan.amount, replaceable=plan.replaceable)
    tl.mark(attacker.name, "double spend prepared", tx1=ds.txid1[:16], tx2=ds.txid2[:16],
            coin=f"{ds.coin['txid'][:16]}:{ds.coin['vout']}", tx1_bip125=plan.replaceable)
    holdings = Holdings(net, ds.txid1, ds.txid2, list(net.nodes.values()))

    def victims_tx1(e: dict[str, Any]) -> bool:
        # The monitor's `tx1` label pointed at the previous trial's tx1 until just now (a
        # sweep): only events about this trial's tx1 count for acceptance or a warning.
        return (e["node"] == victim.name and e["event"] == "tx1" and e["t"] >= t0
                and e.get("txid") == ds.txid1[:16])

    if plan.victim_latency:
        # A poorly connected merchant: its relay of tx1 to the miners lags behind the
        # attacker's direct delivery of tx2 (outgoing traffic only).
        victim.call("setlinkfault", {"delay_ms": plan.victim_latency})
        tl.mark(victim.name, "link delay", delay_ms=plan.victim_latency)

    receipt: dict[str, Any] = {}

    def pay_victim() -> None:
        net.send(victim, ds.tx1, "tx1")
        # The moment a merchant that does not wait decides: what its node says on receipt.
        receipt.update(tx_state(victim, ds.txid1))
        tl.mark(victim.name, "victim's view on receipt", status=receipt.get("status"),
                accepted_zero_conf=receipt.get("accepted_zero_conf"))

    pay_back = [lambda h=h: net.send(h, ds.tx2, "tx2") for h in roles.honest]
    try:
        if plan.outbid:
            pay_victim()

            def everywhere() -> bool:
                holdings.poll()
                return all(st[0] == "tx1" for st in holdings.last.values()) and len(
                    holdings.last) == len(net.nodes)

            net.wait_for(everywhere, plan.timeout, "tx1 to reach every node's mempool")
            tl.mark("*", "tx1 in every mempool")
            if plan.delay:
                time.sleep(plan.delay)  # the experiment's parameter, not a synchronisation
            parallel(pay_back)
        elif plan.delay == 0:
            parallel([pay_victim, *pay_back])
        elif plan.delay > 0:
            pay_victim()
            time.sleep(plan.delay)
            parallel(pay_back)
        else:
            parallel(pay_back)
            time.sleep(-plan.delay)
            pay_victim()
    finally:
        if plan.victim_latency:
            # Relays already queued keep their delay; new traffic is back to normal.
            victim.try_call("setlinkfault", {})
    # Propagation, replacements and any double-spend alert happen now, before anyone mines:
    # an observation window of --wait seconds, every node's mempool looked at throughout.
    deadline = time.monotonic() + plan.wait
    while True:
        holdings.poll()
        if time.monotonic() >= deadline:
            break
        time.sleep(min(LOOK_INTERVAL, max(0.0, deadline - time.monotonic())))
    net.monitor.poll()
    before = tx_state(victim, ds.txid1)
    t_decided = tl.now()
    # Accepted if, at any moment before a block, the victim's node showed the payment in its
    # mempool as good to go (a listening period or a seen conflict says otherwise).
    accepted = bool(receipt.get("status") == "mempool" and receipt.get("accepted_zero_conf"))
    accepted = accepted or any(
        victims_tx1(e) and e.get("status") == "mempool"
        and e.get("accepted_zero_conf", True) is not False for e in list(tl.events))
    tl.mark(victim.name, "victim's view before any block", status=before.get("status"),
            confirmations=before.get("confirmations"), alert=detected_in(before),
            accepted_zero_conf=before.get("accepted_zero_conf"))
    # Per honest miner, the spends in its mempool (a list, as the --json has always had it).
    miner_view = {h.name: [held] if (held := holdings.last.get(h.name, ("none",))[0]) in (
        "tx1", "tx2") else [] for h in roles.honest}
    tl.mark("*", "miners' mempools", holds=miner_view)

    blocks: list[str] = []
    for _ in range(plan.blocks):
        miner = net.rng.choice(roles.honest)
        blocks.append(net.mine(miner)[0])
        net.wait_tip(roles.nodes, blocks[-1], timeout=plan.timeout)
    holdings.poll()
    net.monitor.poll()
    judge = roles.honest[0]
    mined1 = tx_state(judge, ds.txid1).get("status") in ("confirmed", "final")
    mined2 = tx_state(judge, ds.txid2).get("status") in ("confirmed", "final")
    after = tx_state(victim, ds.txid1)
    block = next((e for e in tl.events if e["t"] >= t0 and e["event"] == "block mined"), None)
    # Whenever the victim's node reported the conflict (or the replacement) before the block
    # settled it (after the block a lost payment shows as conflicted anyway).
    alert = next((e for e in list(tl.events)
                  if victims_tx1(e) and (shows_conflict(e) or e.get("status") == "replaced")
                  and e["t"] <= (block["t"] if block else t_decided)), None)
    detected = detected_in(before) or alert is not None
    held = holdings.summary(policies)
    success = mined2 and not mined1
    verdict = race_verdict(success, mined1, mined2, accepted, after.get("status"), alert,
                           block, detected_in(before))
    verdict += " Policies and holdings: " + describe_holdings(held) + "."
    return {
        "success": success,
        "detected": detected,
        "verdict": verdict,
        "mined": "tx2" if mined2 else "tx1" if mined1 else "neither",
        "victim_accepted_zero_conf": accepted,
        "victim_defrauded": accepted and success,
        "victim_final_status": after.get("status"),
        "alert_t": alert["t"] if alert else None,
        "first_block_t": block["t"] if block else None,
        "miners_mempools": miner_view,
        "replacement_policies": policies,
        "outbid": plan.outbid,
        "tx1_bip125": plan.replaceable,
        "holdings": held,
        "txid1": ds.txid1, "txid2": ds.txid2,
    }


def race_verdict(success: bool, mined1: bool, mined2: bool, accepted: bool,
                 status: str | None, alert: dict[str, Any] | None,
                 block: dict[str, Any] | None, detected_now: bool = False) -> str:
    """The race's verdict from what the timeline shows: `alert` is the victim's first event
    reporting tx1 as double-spent or replaced (None: never), `block` the first block mined."""
    winner = "tx2 (the attacker's refund)" if mined2 else "tx1 (the victim's payment)" if (
        mined1) else "neither"
    lines = [f"the miners mined {winner}; the victim's payment is now {status}."]
    if accepted:
        lines.append("The victim's node showed the payment at 0 confirmations before any block.")
    in_time = False
    how = ("replaced" if alert is not None and alert.get("status") == "replaced"
           else "double-spent")
    if alert is not None:
        when = f"{alert['t']:.2f}s"
        if block is not None:
            gap = block["t"] - alert["t"]
            in_time = gap >= 0
            when += (f", {gap:.2f}s before the first block" if in_time
                     else f", {-gap:.2f}s after the first block")
        else:
            in_time = True
        lines.append(f"DETECTED: the victim's node flagged tx1 as {how} at {when}.")
    elif detected_now:
        in_time = True
        lines.append("DETECTED: the victim's node flagged tx1 as double-spent before the block.")
    else:
        lines.append("The victim's node never reported a conflict for tx1 (no alert).")
    verdict = "SUCCESS" if success else "FAILED"
    if success and in_time:
        verdict += " on chain, but the merchant was warned in time"
    return f"race: {verdict} — " + " ".join(lines)
