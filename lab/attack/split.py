"""Split: the classic double spend across a network partition. The network is cut into two
halves that both mine (by bans on the links between them, as `testnet partition` does); the
attacker's coin pays the victim (tx1) on the victim's half and pays the attacker back (tx2) on
the other half, and each half confirms its own payment. On healing every node follows the half
with more work: its payment survives, the other one is reorganised out and `conflicted` on the
nodes that knew it."""

from __future__ import annotations

import time
from typing import Any

from lab.attack.common import (
    AttackError,
    Cut,
    NetNode,
    Outcome,
    Survey,
    chainwork,
    hashes_per_block,
    join_links,
    make_double_spend,
    parallel,
    send_tx,
    staged,
    survey,
    wait_converged,
    wait_until,
)
from lab.attack.context import Context
from lab.attack.race import tx_state


def halves(sv: Survey, victim: NetNode, given: list[str] | None) -> tuple[list[str], list[str]]:
    """(the victim's half, the other half): as given, else the victim and its nearest nodes
    (breadth first over the peer graph) up to half of the network."""
    if given:
        groups = [[x.strip() for x in g.split(",") if x.strip()] for g in given]
        unknown = [x for g in groups for x in g if x not in sv.by_name]
        if unknown:
            raise AttackError(f"--halves names unknown nodes: {', '.join(unknown)}")
        a, b = (groups[0], groups[1]) if victim.name in groups[0] else (groups[1], groups[0])
        if victim.name not in a:
            raise AttackError(f"the victim {victim.name} must be in one of the --halves")
        if set(a) & set(b):
            raise AttackError("--halves overlap: " + ", ".join(sorted(set(a) & set(b))))
        left_out = [n for n in sv.order if n not in a and n not in b]
        if left_out:
            # A node in neither half would bridge them: no partition at all.
            raise AttackError(f"--halves must name every node; missing: {', '.join(left_out)}")
        return a, b
    size = len(sv.order) // 2
    side, todo = [victim.name], [victim.name]
    while todo and len(side) < size:
        for nxt in sorted(sv.adj[todo.pop(0)], key=sv.order.index):
            if nxt not in side and len(side) < size:
                side.append(nxt)
                todo.append(nxt)
    return sorted(side, key=sv.order.index), [x for x in sv.order if x not in side]


def partition(sv: Survey, a: list[str], b: list[str]) -> Cut:
    """Bans between every node of one half and every node of the other; links added inside
    a half that its own nodes would not keep connected."""
    cut = Cut(sv.ids, sv.dial)
    for x in a:
        for y in b:
            nx, ny = sv.by_name[x], sv.by_name[y]
            cut.bans += [(nx, sv.host_of[y]), (ny, sv.host_of[x])]
            if y in sv.adj[x]:
                cut.cut.append((nx, ny))
    cut.added = join_links(sv, a, set()) + join_links(sv, b, set())
    return cut


def run(ctx: Context) -> Outcome:
    roles, args, tl = ctx.roles, ctx.args, ctx.timeline
    attacker, victim = roles.attacker, roles.victim
    z = args.confirmations if args.confirmations is not None else 2
    q = args.hashrate_share if args.hashrate_share is not None else 0.5
    if not 0 < q < 1:
        raise AttackError("--hashrate-share (the other half's share) must be between 0 and 1")
    with staged(ctx.net):
        wait_converged(roles.nodes, tie_breaker=victim)
        sv = survey(roles.nodes)
        if sv is None or len(sv.order) < 2:
            raise AttackError("the split needs two reachable nodes, each on its own host "
                              "address (a ban on a shared host would cut several nodes)")
        side_a, side_b = halves(sv, victim, args.halves)
        if not side_a or not side_b:
            raise AttackError("both halves need at least one node")
        miners_a, miners_b = _miners(ctx, side_a), _miners(ctx, side_b)
        ds = make_double_spend(attacker, victim, args.amount, ctx.rng)
        ctx.monitor.track("tx1", ds.txid1)
        ctx.monitor.track("tx2", ds.txid2)
        tl.add(attacker.name, "double spend prepared", tx1=ds.txid1[:16], tx2=ds.txid2[:16])
        ctx.net.apply_cut("*", partition(sv, side_a, side_b), "partition")
        tl.add("*", "halves", victim_half=",".join(side_a), other_half=",".join(side_b),
               miners=",".join(n.name for n in miners_a) + " | "
               + ",".join(n.name for n in miners_b))
        payer_b = next(n for n in miners_b)
        send_tx(victim, ds.tx1, tl, "tx1")
        send_tx(payer_b, ds.tx2, tl, "tx2")
        wait_until(lambda: all(tx_state(m, ds.txid1).get("status") == "mempool"
                               for m in miners_a)
                   and all(tx_state(m, ds.txid2).get("status") == "mempool" for m in miners_b),
                   args.timeout, "each payment to reach its half's miners")
        total = hashes_per_block(victim) / args.block_interval
        rates = {m.name: (1 - q) * total / len(miners_a) for m in miners_a}
        rates.update({m.name: q * total / len(miners_b) for m in miners_b})
        work = _mine_apart(ctx, ds.txid1, ds.txid2, miners_a + miners_b, rates, z,
                           miners_a[0], miners_b[0])
        ctx.net.lift_cut("*", "heal")
        tip = wait_converged(roles.nodes, timeout=args.timeout)
        time.sleep(max(1.0, ctx.monitor.interval * 4))
        ctx.monitor.poll()
        per_node = {n.name: {"tx1": tx_state(n, ds.txid1).get("status"),
                             "tx2": tx_state(n, ds.txid2).get("status")}
                    for n in roles.nodes}
    return _outcome(ctx, ds.txid1, ds.txid2, side_a, side_b, work, tip, per_node, z, q)


def _miners(ctx: Context, side: list[str]) -> list[NetNode]:
    nodes = [n for n in ctx.roles.nodes if n.name in side]
    miners = [n for n in nodes if n.is_miner]
    if miners:
        return miners
    ctx.timeline.add(nodes[0].name, "mines for its half", note="no miner in this half")
    return [nodes[0]]


def _mine_apart(ctx: Context, txid1: str, txid2: str, miners: list[NetNode],
                rates: dict[str, float], z: int, lead_a: NetNode, lead_b: NetNode
                ) -> dict[str, Any]:
    """Both halves mine until each payment has Z confirmations in its half; then mining stops
    and, should both halves have exactly the same work, the other half mines one more block
    (a tie would leave every node on its own branch)."""
    args, tl = ctx.args, ctx.timeline

    def mining(on: bool) -> None:
        parallel([lambda m=m: ctx.net.set_mining(m, on, rates[m.name]) for m in miners])

    mining(True)
    try:
        wait_until(lambda: (tx_state(lead_a, txid1).get("confirmations") or 0) >= z
                   and (tx_state(lead_b, txid2).get("confirmations") or 0) >= z,
                   args.timeout, f"both payments to reach {z} confirmations in their halves",
                   interval=0.2)
    finally:
        mining(False)
    time.sleep(1.0)
    if chainwork(lead_a) == chainwork(lead_b):
        block = lead_b.call("generatetoaddress", 1, lead_b.call("getnewaddress"))[0]
        tl.add(lead_b.name, "tie broken", hash=block[:16], note="equal work in both halves")
    work = {}
    for half, lead in (("victim_half", lead_a), ("other_half", lead_b)):
        info = lead.call("getblockchaininfo")
        work[half] = {"node": lead.name, "height": info["blocks"], "tip": info["bestblockhash"],
                      "chainwork": info["chainwork"]}
        tl.add(lead.name, "half's tip", height=info["blocks"], chainwork=info["chainwork"],
               hash=info["bestblockhash"][:16])
    return work


def _outcome(ctx: Context, txid1: str, txid2: str, side_a: list[str], side_b: list[str],
             work: dict[str, Any], tip: str, per_node: dict[str, dict[str, Any]], z: int,
             q: float) -> Outcome:
    victim = ctx.roles.victim
    wa = int(work["victim_half"]["chainwork"], 16)
    wb = int(work["other_half"]["chainwork"], 16)
    winner = "tx1" if wa > wb else "tx2"
    loser = "tx2" if winner == "tx1" else "tx1"
    out = Outcome("split")
    out.success = per_node[victim.name]["tx1"] == "conflicted"
    out.victim_confirmations_seen = ctx.monitor.max_victim_conf
    out.reorg_depth = max((r["depth"] for r in ctx.monitor.reorgs if r["node"] == victim.name),
                          default=0)
    conflicts = [e for e in ctx.timeline.events if e["node"] == victim.name
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
    return out
