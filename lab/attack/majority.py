"""Majority (51 %) attack: the attacker, holding a share Q of the hash rate, cuts itself off
at the block before the payment, mines a private branch that starts with tx2 while tx1 pays
the victim on the public chain, waits until the victim's payment has Z confirmations, keeps
mining until its branch has more work (or gives up N blocks behind) and then reconnects,
publishing the branch. Against nodes running `--enforce-finality` a reorganisation that deep
is refused: the network splits instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.attack.common import (
    AttackError,
    DoubleSpend,
    NetNode,
    Outcome,
    chainwork,
    finality_depth,
    hashes_per_block,
    make_double_spend,
    parallel,
    send_tx,
    staged,
    wait_converged,
    wait_until,
)
from lab.attack.context import Context
from lab.attack.race import tx_state
from lab.attack.report import deepest_reorg, warned_before_loss
from lab.text import confirmations


def honest_rates(honest: list[NetNode], total: float) -> dict[str, float]:
    """Splits the honest hash rate by the manifest's shares (equally when it has none)."""
    shares = [max(n.hashrate_share, 0.0) for n in honest]
    if sum(shares) <= 0:
        shares = [1.0] * len(honest)
    scale = total / sum(shares)
    return {n.name: s * scale for n, s in zip(honest, shares, strict=True)}


def run(ctx: Context) -> Outcome:
    roles, args, tl = ctx.roles, ctx.args, ctx.timeline
    if not roles.honest:
        raise AttackError("the majority attack needs honest miners to race (see --honest)")
    q = args.hashrate_share if args.hashrate_share is not None else 0.7
    if not 0 < q < 1:
        raise AttackError("--hashrate-share must be between 0 and 1")
    attacker, victim = roles.attacker, roles.victim
    depth = finality_depth(victim)
    z = args.confirmations if args.confirmations is not None else depth
    chain_info = victim.call("getblockchaininfo")
    enforcing = bool(chain_info.get("enforce_finality"))
    published_tip: str | None = None
    with staged(ctx.net):
        fork = wait_converged(roles.nodes, tie_breaker=roles.honest[0])
        fork_height = victim.call("getblockcount")
        ds = _prepare(ctx, fork, fork_height)
        total = hashes_per_block(victim) / args.block_interval
        mining = _mining_switch(ctx, q * total, honest_rates(roles.honest, (1 - q) * total))
        race = _race(ctx, ds.txid1, z, mining)
        mining(False)
        a_tip = attacker.call("getbestblockhash")
        a_height = attacker.call("getblockcount")
        h_height = victim.call("getblockcount")
        ctx.net.reconnect(attacker)
        if race.kind == "published":
            published_tip = a_tip
            tl.add(attacker.name, "private branch published", tip=a_tip[:16], height=a_height,
                   branch_length=a_height - fork_height, honest_height=h_height)
            _settle_published(ctx, a_tip)
        else:
            _settle_rejoined(ctx)
        ctx.monitor.poll()
        after = tx_state(victim, ds.txid1)
        victim_tips = victim.try_call("getchaintips") or []
        victim_tip = victim.call("getbestblockhash")

    attacker_tip_status = next((t["status"] for t in victim_tips if t["hash"] == a_tip), None)
    split = bool(published_tip and victim_tip != published_tip)
    statuses = ctx.monitor.victim_statuses
    out = Outcome("majority")
    out.success = after.get("status") == "conflicted"
    out.victim_confirmations_seen = ctx.monitor.max_victim_conf
    out.reorg_depth = deepest_reorg(ctx.timeline.events, [victim.name])
    out.detected = split or warned_before_loss(ctx.timeline.events, victim.name)
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
    return out


@dataclass
class _Race:
    """How the private branch's race against the public one ended."""

    kind: str = "timeout"  # or "published", "gave up"
    reached_z_at: float | None = None  # when the victim's payment reached Z confirmations


def _prepare(ctx: Context, fork: str, fork_height: int) -> DoubleSpend:
    """The double spend; the attacker cut off with a private block holding tx2, while tx1
    pays the victim and reaches the honest miners' mempools."""
    roles, tl = ctx.roles, ctx.timeline
    attacker, victim = roles.attacker, roles.victim
    ds = make_double_spend(attacker, victim, ctx.args.amount, ctx.rng)
    ctx.monitor.track("tx1", ds.txid1)
    ctx.monitor.track("tx2", ds.txid2)
    tl.add(attacker.name, "double spend prepared", tx1=ds.txid1[:16], tx2=ds.txid2[:16],
           fork=fork[:16], fork_height=fork_height)
    ctx.net.isolate(attacker)
    private = attacker.call("generateblock", attacker.call("getnewaddress"), [ds.tx2])
    tl.add(attacker.name, "private block (tx2)", hash=private["hash"][:16],
           height=fork_height + 1)
    send_tx(victim, ds.tx1, tl, "tx1")
    wait_until(lambda: all(tx_state(h, ds.txid1).get("status") == "mempool"
                           for h in roles.honest), 20, "tx1 to reach the honest miners")
    return ds


def _mining_switch(ctx: Context, attacker_rate: float,
                   rates: dict[str, float]) -> Callable[[bool], None]:
    """Switches the attacker (at `attacker_rate`) and every honest miner (at its rate) on or
    off at once."""
    attacker, honest = ctx.roles.attacker, ctx.roles.honest

    def mining(on: bool) -> None:
        calls = [lambda: ctx.net.set_mining(attacker, on, attacker_rate)] + [
            lambda h=h: ctx.net.set_mining(h, on, rates[h.name]) for h in honest]
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


def _race(ctx: Context, txid1: str, z: int, mining: Callable[[bool], None]) -> _Race:
    """Both sides mine until the private branch, the payment having Z confirmations, has
    more work (published), falls --give-up blocks behind (gave up) or time runs out."""
    args, tl = ctx.args, ctx.timeline
    attacker, victim = ctx.roles.attacker, ctx.roles.victim
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
            tl.add(victim.name, f"payment has {confirmations(conf)} (Z = {z})",
                   status=view.get("status"))
        seen = max(conf, z) if race.reached_z_at is not None else conf
        step = race_step(a_height, h_height, seen, z, args.give_up, lambda: (
            chainwork(attacker), chainwork(victim)))
        if step == "gave up":
            race.kind = "gave up"
            tl.add(attacker.name, "gives up", behind=h_height - a_height,
                   attacker_height=a_height, honest_height=h_height)
            return race
        if time.monotonic() > deadline:
            tl.add(attacker.name, "gives up (timeout)", attacker_height=a_height,
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


def _settle_published(ctx: Context, a_tip: str) -> None:
    """Gives the published branch time to reach the victim (as its tip or a side chain)."""
    victim, tl = ctx.roles.victim, ctx.timeline

    def settled() -> bool:
        if victim.try_call("getbestblockhash") == a_tip:
            return True
        known = victim.try_call("getchaintips") or []
        return any(t["hash"] == a_tip for t in known)

    try:
        wait_until(settled, ctx.args.settle, "the victim to hear of the private branch")
    except AttackError:
        tl.add(victim.name, "has not heard of the private branch")
    time.sleep(max(1.0, ctx.monitor.interval * 4))


def _settle_rejoined(ctx: Context) -> None:
    """Gives the attacker, its branch abandoned, time to follow the honest chain again."""
    attacker, victim = ctx.roles.attacker, ctx.roles.victim
    try:
        wait_until(lambda: attacker.try_call("getbestblockhash")
                   == victim.try_call("getbestblockhash"), ctx.args.settle,
                   "the attacker to rejoin the honest chain")
    except AttackError:
        ctx.timeline.add(attacker.name, "still off the honest chain")


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
