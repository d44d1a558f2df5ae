"""Split: two mining halves, the coin paid differently in each, healed: who keeps it.

Split: the classic double spend across a network partition. The network is cut into two
halves that both mine (by bans on the links between them, as `testnet partition` does); the
attacker's coin pays the victim (tx1) on the victim's half and pays the attacker back (tx2) on
the other half, and each half confirms its own payment. On healing every node follows the half
with more work: its payment survives, the other one is reorganised out and `conflicted` on the
nodes that knew it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from lab.attack.options import add_attack_arguments
from lab.attack.race import tx_state
from lab.scenario import (
    NetNode,
    Network,
    Outcome,
    ScenarioError,
    Survey,
    chainwork,
    parallel,
    survey,
)


def halves(sv: Survey, victim: NetNode, given: list[str] | None) -> tuple[list[str], list[str]]:
    """(the victim's half, the other half): as given, else the victim and its nearest nodes
    (breadth first over the peer graph) up to half of the network."""
    if given:
        groups = [[x.strip() for x in g.split(",") if x.strip()] for g in given]
        unknown = [x for g in groups for x in g if x not in sv.by_name]
        if unknown:
            raise ScenarioError(f"--halves names unknown nodes: {', '.join(unknown)}")
        a, b = (groups[0], groups[1]) if victim.name in groups[0] else (groups[1], groups[0])
        if victim.name not in a:
            raise ScenarioError(f"the victim {victim.name} must be in one of the --halves")
        if set(a) & set(b):
            raise ScenarioError("--halves overlap: " + ", ".join(sorted(set(a) & set(b))))
        left_out = [n for n in sv.order if n not in a and n not in b]
        if left_out:
            # A node in neither half would bridge them: no partition at all.
            raise ScenarioError(f"--halves must name every node; missing: {', '.join(left_out)}")
        return a, b
    size = len(sv.order) // 2
    side, todo = [victim.name], [victim.name]
    while todo and len(side) < size:
        for nxt in sorted(sv.adj[todo.pop(0)], key=sv.order.index):
            if nxt not in side and len(side) < size:
                side.append(nxt)
                todo.append(nxt)
    return sorted(side, key=sv.order.index), [x for x in sv.order if x not in side]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "confirmations each half mines on its own payment before the "
                                 "heal (default 2)", timeout=120.0)
    parser.add_argument("--halves", nargs=2, metavar="NODES",
                        help="the two halves, e.g. n1,n2 n3,n4 (default: the victim and its "
                             "nearest nodes, half of the network, against the rest)")
    parser.add_argument("--block-interval", type=float, default=1.0, metavar="S",
                        help="mean seconds per block at the total hash rate (default 1)")


def run(net: Network) -> None:
    roles, args, tl = net.roles, net.args, net.timeline
    attacker, victim = roles.attacker, roles.victim
    z = args.confirmations if args.confirmations is not None else 2
    q = args.hashrate_share if args.hashrate_share is not None else 0.5
    if not 0 < q < 1:
        raise ScenarioError("--hashrate-share (the other half's share) must be between 0 and 1")
    with net.staged():
        net.sync_blocks(roles.nodes, tie_breaker=victim)
        sv = survey(roles.nodes)
        if sv is None or len(sv.order) < 2:
            raise ScenarioError("the split needs two reachable nodes, each on its own host "
                              "address (a ban on a shared host would cut several nodes)")
        side_a, side_b = halves(sv, victim, args.halves)
        if not side_a or not side_b:
            raise ScenarioError("both halves need at least one node")
        miners_a, miners_b = _miners(net, side_a), _miners(net, side_b)
        ds = net.double_spend(attacker, victim, args.amount)
        net.monitor.track("tx1", ds.txid1)
        net.monitor.track("tx2", ds.txid2)
        tl.mark(attacker.name, "double spend prepared", tx1=ds.txid1[:16], tx2=ds.txid2[:16])
        net.partition(side_a, side_b)
        tl.mark("*", "halves", victim_half=",".join(side_a), other_half=",".join(side_b),
               miners=",".join(n.name for n in miners_a) + " | "
               + ",".join(n.name for n in miners_b))
        payer_b = next(n for n in miners_b)
        net.send(victim, ds.tx1, "tx1")
        net.send(payer_b, ds.tx2, "tx2")
        net.wait_for(lambda: all(tx_state(m, ds.txid1).get("status") == "mempool"
                               for m in miners_a)
                   and all(tx_state(m, ds.txid2).get("status") == "mempool" for m in miners_b),
                   args.timeout, "each payment to reach its half's miners")
        total = net.hashes_per_block(victim) / args.block_interval
        rates = {m.name: (1 - q) * total / len(miners_a) for m in miners_a}
        rates.update({m.name: q * total / len(miners_b) for m in miners_b})
        work = _mine_apart(net, ds.txid1, ds.txid2, miners_a + miners_b, rates, z,
                           miners_a[0], miners_b[0])
        net.heal()
        tip = net.sync_blocks(roles.nodes, timeout=args.timeout)
        time.sleep(max(1.0, net.monitor.interval * 4))
        net.monitor.poll()
        per_node = {n.name: {"tx1": tx_state(n, ds.txid1).get("status"),
                             "tx2": tx_state(n, ds.txid2).get("status")}
                    for n in roles.nodes}
    return _outcome(net, ds.txid1, ds.txid2, side_a, side_b, work, tip, per_node, z, q)


def _miners(net: Network, side: list[str]) -> list[NetNode]:
    nodes = [n for n in net.roles.nodes if n.name in side]
    miners = [n for n in nodes if n.is_miner]
    if miners:
        return miners
    net.timeline.mark(nodes[0].name, "mines for its half", note="no miner in this half")
    return [nodes[0]]


def _mine_apart(net: Network, txid1: str, txid2: str, miners: list[NetNode],
                rates: dict[str, float], z: int, lead_a: NetNode, lead_b: NetNode
                ) -> dict[str, Any]:
    """Both halves mine until each payment has Z confirmations in its half; then mining stops
    and, should both halves have exactly the same work, the other half mines one more block
    (a tie would leave every node on its own branch)."""
    args, tl = net.args, net.timeline

    def mining(on: bool) -> None:
        parallel([lambda m=m: net.set_mining(m, on, rates[m.name]) for m in miners])

    mining(True)
    try:
        net.wait_for(lambda: (tx_state(lead_a, txid1).get("confirmations") or 0) >= z
                   and (tx_state(lead_b, txid2).get("confirmations") or 0) >= z,
                   args.timeout, f"both payments to reach {z} confirmations in their halves",
                   interval=0.2)
    finally:
        mining(False)
    time.sleep(1.0)
    if chainwork(lead_a) == chainwork(lead_b):
        block = lead_b.call("generatetoaddress", 1, lead_b.call("getnewaddress"))[0]
        tl.mark(lead_b.name, "tie broken", hash=block[:16], note="equal work in both halves")
    work = {}
    for half, lead in (("victim_half", lead_a), ("other_half", lead_b)):
        info = lead.call("getblockchaininfo")
        work[half] = {"node": lead.name, "height": info["blocks"], "tip": info["bestblockhash"],
                      "chainwork": info["chainwork"]}
        tl.mark(lead.name, "half's tip", height=info["blocks"], chainwork=info["chainwork"],
               hash=info["bestblockhash"][:16])
    return work


def _outcome(net: Network, txid1: str, txid2: str, side_a: list[str], side_b: list[str],
             work: dict[str, Any], tip: str, per_node: dict[str, dict[str, Any]], z: int,
             q: float) -> Outcome:
    victim = net.roles.victim
    wa = int(work["victim_half"]["chainwork"], 16)
    wb = int(work["other_half"]["chainwork"], 16)
    winner = "tx1" if wa > wb else "tx2"
    loser = "tx2" if winner == "tx1" else "tx1"
    out = Outcome("split")
    out.success = per_node[victim.name]["tx1"] == "conflicted"
    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = max((r["depth"] for r in net.monitor.reorgs if r["node"] == victim.name),
                          default=0)
    conflicts = [e for e in net.timeline.events if e["node"] == victim.name
                 and e["event"] in ("tx1", "tx2") and e.get("status") == "conflicted"]
    out.detected = bool(conflicts)
    agree = sorted(n for n, st in per_node.items() if st[winner] in ("confirmed", "final"))
    loser_conflicted = sorted(n for n, st in per_node.items() if st[loser] == "conflicted")
    loser_unknown = sorted(n for n, st in per_node.items() if st[loser] == "unknown")
    out.details = {
        "z": z, "other_half_share": q, "victim_half": side_a, "other_half": side_b,
        "work": work, "survivor": winner, "loser": loser, "final_tip": tip,
        "per_node": per_node, "txid1": txid1, "txid2": txid2,
        "loser_conflicted_on": loser_conflicted, "loser_unknown_on": loser_unknown,
    }
    why = (f"the {'victim' if winner == 'tx1' else 'other'} half's branch has more work "
           f"(chainwork {max(wa, wb):#x} > {min(wa, wb):#x})")
    paid = "the victim keeps its payment" if winner == "tx1" else \
        "the victim's payment is reversed"
    unknown = (f"; unknown on {', '.join(loser_unknown)}, which never saw it"
               if loser_unknown else "")
    out.verdict = (f"split: {'SUCCESS' if out.success else 'FAILED'} — {winner} survived on "
                   f"{len(agree)} of {len(per_node)} nodes ({', '.join(agree)}): {why}; "
                   f"{paid}. {loser} is conflicted on "
                   f"{', '.join(loser_conflicted) or 'no node'}{unknown}.")
    net.report(**out.as_report())
