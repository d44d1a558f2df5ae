"""Race: tx1 to the victim and tx2 to the miners at once; accepted at 0 confirmations.

Race attack: tx1 pays the victim, tx2 sends the same coin back to the attacker; tx1 goes to
the victim's node and tx2 to the honest miners at the same moment. The victim sees tx1 at zero
confirmations; whichever spend the miners saw first is mined."""

from __future__ import annotations

import argparse
import time
from typing import Any

from lab.attack.options import add_attack_arguments
from lab.scenario import (
    Network,
    Outcome,
    ScenarioError,
    deepest_reorg,
    first_conflict_seen,
    parallel,
)


def tx_state(node: Any, txid: str) -> dict[str, Any]:
    return node.try_call("gettransaction", txid) or {"status": "unknown"}


def detected_in(view: dict[str, Any]) -> bool:
    """The victim's node knows tx1 is double-spent: an alert, a recorded conflict, or the
    conflicted status."""
    return bool(view.get("double_spend_alert") or view.get("conflicts")
                or view.get("status") == "conflicted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "blocks the honest miners mine after the race (default 1)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S",
                        help="send tx2 S seconds after tx1 (negative: before; default 0)")
    parser.add_argument("--wait", type=float, default=2.0, metavar="S",
                        help="seconds for propagation and alerts before anyone mines (default 2)")
    parser.add_argument("--victim-latency", type=float, default=0.0, metavar="MS",
                        help="delay the victim node's outgoing P2P traffic during the race "
                             "(setlinkfault), as for a poorly connected merchant (default 0)")


def run(net: Network) -> None:
    roles, args, tl = net.roles, net.args, net.timeline
    if not roles.honest:
        raise ScenarioError("the race needs at least one honest miner (see --honest)")
    out = Outcome("race")
    with net.staged():
        net.sync_blocks(roles.nodes, tie_breaker=roles.honest[0])
        ds = net.double_spend(roles.attacker, roles.victim, args.amount)
        net.monitor.track("tx1", ds.txid1)
        net.monitor.track("tx2", ds.txid2)
        tl.mark(roles.attacker.name, "double spend prepared", tx1=ds.txid1[:16],
               tx2=ds.txid2[:16], coin=f"{ds.coin['txid'][:16]}:{ds.coin['vout']}")

        latency = args.victim_latency
        if latency:
            # A poorly connected merchant: its relay of tx1 to the miners lags behind the
            # attacker's direct delivery of tx2 (outgoing traffic only).
            roles.victim.call("setlinkfault", {"delay_ms": latency})
            tl.mark(roles.victim.name, "link delay", delay_ms=latency)

        def pay_victim() -> None:
            net.send(roles.victim, ds.tx1, "tx1")

        pay_back = [lambda h=h: net.send(h, ds.tx2, "tx2") for h in roles.honest]
        try:
            if args.delay == 0:
                parallel([pay_victim, *pay_back])
            elif args.delay > 0:
                pay_victim()
                time.sleep(args.delay)
                parallel(pay_back)
            else:
                parallel(pay_back)
                time.sleep(-args.delay)
                pay_victim()
        finally:
            if latency:
                # Relays already queued keep their delay; new traffic is back to normal.
                roles.victim.try_call("setlinkfault", {})
        # Propagation and any double-spend alert happen now, before anyone mines.
        time.sleep(args.wait)
        net.monitor.poll()
        before = tx_state(roles.victim, ds.txid1)
        # Accepted if, at any moment before a block, the victim's node showed the payment in
        # its mempool as good to go (a listening period or a seen conflict says otherwise).
        accepted = tl.first(lambda e: e["node"] == roles.victim.name and e["event"] == "tx1"
                            and e.get("status") == "mempool"
                            and e.get("accepted_zero_conf", True) is not False) is not None
        tl.mark(roles.victim.name, "victim's view before any block", status=before.get("status"),
               confirmations=before.get("confirmations"), alert=detected_in(before),
               accepted_zero_conf=before.get("accepted_zero_conf"))
        miner_view = {h.name: sorted(lbl for lbl, txid in (("tx1", ds.txid1), ("tx2", ds.txid2))
                                     if tx_state(h, txid).get("status") == "mempool")
                      for h in roles.honest}
        tl.mark("*", "miners' mempools", holds=miner_view)

        last = ""
        for _ in range(max(1, args.confirmations or 1)):
            miner = net.rng.choice(roles.honest)
            last = net.mine(miner)[0]
            net.wait_tip([roles.victim, *roles.honest], last, timeout=args.timeout)
        time.sleep(net.monitor.interval * 2)
        net.monitor.poll()
        judge = roles.honest[0]
        mined1 = tx_state(judge, ds.txid1).get("status") in ("confirmed", "final")
        mined2 = tx_state(judge, ds.txid2).get("status") in ("confirmed", "final")
        after = tx_state(roles.victim, ds.txid1)

    out.success = mined2 and not mined1
    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(tl.events, [roles.victim.name])
    block = tl.first(lambda e: e["event"] == "block mined")
    # Whenever the victim's node reported the conflict before the block settled it (after
    # the block a lost payment shows as conflicted anyway): the timeline says so.
    alert = first_conflict_seen(tl.events, roles.victim.name,
                                before=block["t"] if block else None)
    out.detected = detected_in(before) or alert is not None
    out.details = {
        "mined": "tx2" if mined2 else "tx1" if mined1 else "neither",
        "victim_accepted_zero_conf": accepted,
        "victim_final_status": after.get("status"),
        "alert_t": alert["t"] if alert else None,
        "first_block_t": block["t"] if block else None,
        "miners_mempools": miner_view,
        "txid1": ds.txid1, "txid2": ds.txid2,
    }
    out.verdict = race_verdict(out.success, mined1, mined2, accepted, after.get("status"),
                               alert, block, detected_in(before))
    net.report(**out.as_report())


def race_verdict(success: bool, mined1: bool, mined2: bool, accepted: bool,
                 status: str | None, alert: dict[str, Any] | None,
                 block: dict[str, Any] | None, detected_now: bool = False) -> str:
    """The race's verdict from what the timeline shows: `alert` is the victim's first event
    reporting tx1 as double-spent (None: never), `block` the first block mined."""
    winner = "tx2 (the attacker's refund)" if mined2 else "tx1 (the victim's payment)" if (
        mined1) else "neither"
    lines = [f"the miners mined {winner}; the victim's payment is now {status}."]
    if accepted:
        lines.append("The victim's node showed the payment at 0 confirmations before any block.")
    in_time = False
    if alert is not None:
        when = f"{alert['t']:.2f}s"
        if block is not None:
            gap = block["t"] - alert["t"]
            in_time = gap >= 0
            when += (f", {gap:.2f}s before the first block" if in_time
                     else f", {-gap:.2f}s after the first block")
        else:
            in_time = True
        lines.append(f"DETECTED: the victim's node flagged tx1 as double-spent at {when}.")
    elif detected_now:
        in_time = True
        lines.append("DETECTED: the victim's node flagged tx1 as double-spent before the block.")
    else:
        lines.append("The victim's node never reported a conflict for tx1 (no alert).")
    verdict = "SUCCESS" if success else "FAILED"
    if success and in_time:
        verdict += " on chain, but the merchant was warned in time"
    return f"race: {verdict} — " + " ".join(lines)
