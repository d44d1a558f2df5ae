"""Majority: a private branch with tx2 at share Q until it outworks Z confirmations.

Majority (51 %) attack: the attacker, holding a share Q of the hash rate, cuts itself off
at the block before the payment, mines a private branch that starts with tx2 while tx1 pays
the victim on the public chain, waits until the victim's payment has Z confirmations, keeps
mining until its branch has more work (or gives up N blocks behind) and then reconnects,
publishing the branch. Against nodes running `--enforce-finality` a reorganisation that deep
is refused: the network splits instead."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.attack.options import add_attack_arguments
from lab.attack.race import tx_state
from lab.scenario import (
    DoubleSpend,
    NetNode,
    Network,
    Outcome,
    ScenarioError,
    chainwork,
    confirmations,
    deepest_reorg,
    finality_depth,
    parallel,
    warned_before_loss,
)


def honest_rates(honest: list[NetNode], total: float) -> dict[str, float]:
    """Splits the honest hash rate by the manifest's shares (equally when it has none)."""
    shares = [max(n.hashrate_share, 0.0) for n in honest]
    if sum(shares) <= 0:
        shares = [1.0] * len(honest)
    scale = total / sum(shares)
    return {n.name: s * scale for n, s in zip(honest, shares, strict=True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "confirmations the victim waits for (default: its node's "
                                 "finality depth)", timeout=300.0)
    parser.add_argument("--give-up", type=int, default=10, metavar="N",
                        help="abandon the private branch N blocks behind (default 10)")
    parser.add_argument("--block-interval", type=float, default=1.0, metavar="S",
                        help="mean seconds per block at the total hash rate (default 1)")
    parser.add_argument("--settle", type=float, default=30.0, metavar="S",
                        help="seconds for the published branch to reach the victim")


def run(net: Network) -> None:
    roles, args, tl = net.roles, net.args, net.timeline
    if not roles.honest:
        raise ScenarioError("the majority attack needs honest miners to race (see --honest)")
    q = args.hashrate_share if args.hashrate_share is not None else 0.7
    if not 0 < q < 1:
        raise ScenarioError("--hashrate-share must be between 0 and 1")
    attacker, victim = roles.attacker, roles.victim
    depth = finality_depth(victim)
    z = args.confirmations if args.confirmations is not None else depth
    chain_info = victim.call("getblockchaininfo")
    enforcing = bool(chain_info.get("enforce_finality"))
    published_tip: str | None = None
    with net.staged():
        fork = net.sync_blocks(roles.nodes, tie_breaker=roles.honest[0])
        fork_height = victim.call("getblockcount")
        ds = _prepare(net, fork, fork_height)
        total = net.hashes_per_block(victim) / args.block_interval
        mining = _mining_switch(net, q * total, honest_rates(roles.honest, (1 - q) * total))
        race = _race(net, ds.txid1, z, mining)
        mining(False)
        a_tip = attacker.call("getbestblockhash")
        a_height = attacker.call("getblockcount")
        h_height = victim.call("getblockcount")
        net.reconnect(attacker)
        if race.kind == "published":
            published_tip = a_tip
            tl.mark(attacker.name, "private branch published", tip=a_tip[:16], height=a_height,
                   branch_length=a_height - fork_height, honest_height=h_height)
            _settle_published(net, a_tip)
        else:
            _settle_rejoined(net)
        net.monitor.poll()
        after = tx_state(victim, ds.txid1)
        victim_tips = victim.try_call("getchaintips") or []
        victim_tip = victim.call("getbestblockhash")

    attacker_tip_status = next((t["status"] for t in victim_tips if t["hash"] == a_tip), None)
    split = bool(published_tip and victim_tip != published_tip)
    statuses = net.monitor.victim_statuses
    out = Outcome("majority")
    out.success = after.get("status") == "conflicted"
    out.victim_confirmations_seen = net.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(net.timeline.events, [victim.name])
    out.detected = split or warned_before_loss(net.timeline.events, victim.name)
    out.details = {
        "hashrate_share": q, "z": z, "finality_depth": depth, "enforce_finality": enforcing,
        "outcome": race.kind, "chain_split": split,
        "fork_height": fork_height, "attacker_height": a_height, "honest_height": h_height,
        "attacker_tip": a_tip, "attacker_tip_status_at_victim": attacker_tip_status,
        "victim_status_history": statuses, "victim_final_status": after.get("status"),
        "reached_z_at": race.reached_z_at, "txid1": ds.txid1, "txid2": ds.txid2,
        "theory": theory(q, z, args.give_up),
    }
    out.verdict = _verdict(out, after, race.kind, args.give_up, victim.name)
    net.report(**out.as_report())


@dataclass
class _Race:
    """How the private branch's race against the public one ended."""

    kind: str = "timeout"  # or "published", "gave up"
    reached_z_at: float | None = None  # when the victim's payment reached Z confirmations


def _prepare(net: Network, fork: str, fork_height: int) -> DoubleSpend:
    """The double spend; the attacker cut off with a private block holding tx2, while tx1
    pays the victim and reaches the honest miners' mempools."""
    roles, tl = net.roles, net.timeline
    attacker, victim = roles.attacker, roles.victim
    ds = net.double_spend(attacker, victim, net.args.amount)
    net.monitor.track("tx1", ds.txid1)
    net.monitor.track("tx2", ds.txid2)
    tl.mark(attacker.name, "double spend prepared", tx1=ds.txid1[:16], tx2=ds.txid2[:16],
           fork=fork[:16], fork_height=fork_height)
    net.isolate(attacker)
    private = attacker.call("generateblock", attacker.call("getnewaddress"), [ds.tx2])
    tl.mark(attacker.name, "private block (tx2)", hash=private["hash"][:16],
           height=fork_height + 1)
    net.send(victim, ds.tx1, "tx1")
    net.wait_for(lambda: all(tx_state(h, ds.txid1).get("status") == "mempool"
                           for h in roles.honest), 20, "tx1 to reach the honest miners")
    return ds


def _mining_switch(net: Network, attacker_rate: float,
                   rates: dict[str, float]) -> Callable[[bool], None]:
    """Switches the attacker (at `attacker_rate`) and every honest miner (at its rate) on or
    off at once."""
    attacker, honest = net.roles.attacker, net.roles.honest

    def mining(on: bool) -> None:
        calls = [lambda: net.set_mining(attacker, on, attacker_rate)] + [
            lambda h=h: net.set_mining(h, on, rates[h.name]) for h in honest]
        parallel(calls)

    return mining


def race_step(a_height: int, h_height: int, confirmations: int, z: int, give_up: int,
              work: Callable[[], tuple[int, int]]) -> str | None:
    """The race's rule at one look at both chains: "gave up" once the attacker's branch is
    `give_up` blocks behind (its height counts the free block at the fork), "publish" once
    the payment has Z confirmations and the private branch has strictly more work (`work()`
    gives the attacker's and the honest chainwork), else None (keep mining).
    tests/test_sim_vs_live.py maps exactly this onto the theory's catch-up race."""
    if h_height - a_height >= give_up:
        return "gave up"
    if confirmations >= z:
        attacker_work, honest_work = work()
        if attacker_work > honest_work:
            return "publish"
    return None


def _race(net: Network, txid1: str, z: int, mining: Callable[[bool], None]) -> _Race:
    """Both sides mine until the private branch, the payment having Z confirmations, has
    more work (published), falls --give-up blocks behind (gave up) or time runs out."""
    args, tl = net.args, net.timeline
    attacker, victim = net.roles.attacker, net.roles.victim
    race = _Race()
    mining(True)
    deadline = time.monotonic() + args.timeout
    while True:
        time.sleep(0.2)
        view = tx_state(victim, txid1)
        conf = view.get("confirmations") or 0
        a_height, h_height = attacker.call("getblockcount"), victim.call("getblockcount")
        if race.reached_z_at is None and conf >= z:
            race.reached_z_at = tl.now()
            tl.mark(victim.name, f"payment has {confirmations(conf)} (Z = {z})",
                   status=view.get("status"))
        seen = max(conf, z) if race.reached_z_at is not None else conf
        step = race_step(a_height, h_height, seen, z, args.give_up, lambda: (
            chainwork(attacker), chainwork(victim)))
        if step == "gave up":
            race.kind = "gave up"
            tl.mark(attacker.name, "gives up", behind=h_height - a_height,
                   attacker_height=a_height, honest_height=h_height)
            return race
        if time.monotonic() > deadline:
            tl.mark(attacker.name, "gives up (timeout)", attacker_height=a_height,
                   honest_height=h_height)
            return race
        if step == "publish":
            # Freeze both sides so the comparison cannot go stale while publishing.
            mining(False)
            time.sleep(0.5)
            if chainwork(attacker) > chainwork(victim):
                race.kind = "published"
                return race
            mining(True)


def _settle_published(net: Network, a_tip: str) -> None:
    """Gives the published branch time to reach the victim (as its tip or a side chain)."""
    victim, tl = net.roles.victim, net.timeline

    def settled() -> bool:
        if victim.try_call("getbestblockhash") == a_tip:
            return True
        known = victim.try_call("getchaintips") or []
        return any(t["hash"] == a_tip for t in known)

    try:
        net.wait_for(settled, net.args.settle, "the victim to hear of the private branch")
    except ScenarioError:
        tl.mark(victim.name, "has not heard of the private branch")
    time.sleep(max(1.0, net.monitor.interval * 4))


def _settle_rejoined(net: Network) -> None:
    """Gives the attacker, its branch abandoned, time to follow the honest chain again."""
    attacker, victim = net.roles.attacker, net.roles.victim
    try:
        net.wait_for(lambda: attacker.try_call("getbestblockhash")
                   == victim.try_call("getbestblockhash"), net.args.settle,
                   "the attacker to rejoin the honest chain")
    except ScenarioError:
        net.timeline.mark(attacker.name, "still off the honest chain")


def _verdict(out: Outcome, after: dict[str, Any], kind: str, give_up: int, victim: str) -> str:
    d = out.details
    q, depth = d["hashrate_share"], d["finality_depth"]
    branch = d["attacker_height"] - d["fork_height"]
    history = " → ".join(d["victim_status_history"])
    if out.success:
        return (f"majority: SUCCESS — with q = {q:g} the private branch "
                f"({branch} blocks) outworked the honest one; the victim "
                f"reorganised {out.reorg_depth} blocks and its payment went {history} "
                f"(it had {confirmations(out.victim_confirmations_seen)}, finality depth "
                f"{depth}).")
    if d["chain_split"]:
        return (f"majority: CHAIN SPLIT, no reversal — the victim enforces finality and "
                f"refused the heavier private branch ({branch} blocks "
                f"from the fork, reorg depth {d['honest_height'] - d['fork_height']} ≥ "
                f"{depth}); getchaintips on {victim} shows it as "
                f"'{d['attacker_tip_status_at_victim']}', not active. The payment stays "
                f"{after.get('status')}.")
    if kind == "gave up":
        return (f"majority: FAILED — with q = {q:g} the attacker fell "
                f"{d['honest_height'] - d['attacker_height']} blocks behind and gave up "
                f"(--give-up {give_up}); the payment is {after.get('status')} with "
                f"{confirmations(after.get('confirmations'))}.")
    return (f"majority: FAILED ({kind}) — the payment is "
            f"{after.get('status')} with {confirmations(after.get('confirmations'))}.")


def theory(q: float, z: int, give_up: int) -> dict[str, Any]:
    """What the theory predicts for this very race. The private branch starts with one block
    mined for free (the double spend) and must then overtake; that is the catch-up race with
    one more block of slack before giving up (see tests/test_sim_vs_live.py)."""
    from consensus.attack_theory import exact_probability, nakamoto_probability

    try:
        return {
            "nakamoto": nakamoto_probability(q, z),
            "catch_up": exact_probability(q, z, "catch-up"),
            "this_attack": exact_probability(q, z, "catch-up", give_up=give_up + 1),
            "this_attack_model": f"catch-up from one free block, giving up {give_up} behind",
        }
    except ValueError:
        return {}
