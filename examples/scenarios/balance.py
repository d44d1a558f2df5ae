"""Balance attack (Natoli & Gramoli 2017): delay the links between two halves, mine with one.

The honest hash power is split into two halves of equal power (default: the manifest's nodes cut
in two in order, so scripts/run's line n1-n2-n3-n4 with miners n1 and n3 becomes n1,n2 | n3,n4).
Each trial: every link between the halves gets a one-way delay (net.link_fault); the attacker's
coin pays the merchant (tx1) in the merchant's half, the *transaction half*, and goes back to the
attacker (tx2) in the other, the *block half*, where the attacker mines with its share q next to
that half's honest miners. Each half's miners get (1 − q)/2 of the hash rate. As soon as the
merchant's node shows tx1 with z confirmations every miner stops and the delay is lifted;
every node then settles on the most work (a tie is broken by one block from a half drawn by its
power) and the trial succeeds when tx1 is not in that chain. A trial also ends when every node
already holds the same payment (tx2 everywhere: the merchant never saw z confirmations).

Per (delay, q) cell: the success rate with its Wilson 95% interval, next to `powlab simulate
balance --json`'s figure for the same delay, q, z and block interval (lab/simulate/balance.py,
the same model in virtual time), run once per experiment as a command.

    powlab scenario run examples/scenarios/balance.py [--dir D | --docker] [--json] \\
        -- --delay 0,2 --q 0.2,0.4 --trials 5 --confirmations 2

On the compose network give the halves, each with one honest miner, e.g.
`-- --halves miner1,merchant,observer miner2,attacker` (by default its five nodes are cut in
order, which puts both honest miners in the merchant's half and leaves the block half's honest
share to the attacker's node).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lab.scenario
from lab.scenario import Network, ScenarioError, parallel, survey, wilson_interval

# The outcomes, named as `powlab simulate balance --json` names them (a scenario imports only
# lab.scenario: the simulator's figures come from the command, run once per experiment).
SUCCESS = "success"  # tx1 had z confirmations for the merchant and is not in the final chain
SURVIVED = "survived"  # tx1 is in the final chain
NOT_CONFIRMED = "not_confirmed"  # tx2 won before the merchant saw z confirmations of tx1
TIMED_OUT = "timed_out"  # neither outcome within --trial-timeout: not counted as a trial
SETTLED = ("confirmed", "final")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,2: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay", type=_floats, default=[0.0, 2.0],
                        help="one-way delays on the links between the halves, seconds "
                             "(default 0,2)")
    parser.add_argument("--q", type=_floats, default=[0.2, 0.4],
                        help="attacker hash-rate shares (default 0.2,0.4)")
    parser.add_argument("--trials", type=int, default=5, help="attacks per cell (default 5)")
    parser.add_argument("--confirmations", "-z", dest="z", type=int, default=2,
                        help="confirmations the merchant waits for (default 2)")
    parser.add_argument("--block-interval", type=float, default=1.0,
                        help="mean seconds between blocks while attacking (default 1)")
    parser.add_argument("--halves", nargs=2, metavar="NODES",
                        help="the two halves, comma-separated node names (default: the "
                             "manifest's nodes cut in two in order)")
    parser.add_argument("--amount", type=int, default=100_000,
                        help="the payment, smallest units (default 100000)")
    parser.add_argument("--trial-timeout", type=float, default=120.0,
                        help="seconds a trial may take before it is given up (default 120)")
    parser.add_argument("--sim-trials", type=int, default=2000,
                        help="simulated attacks per cell for the figure next to it "
                             "(default 2000)")


def _honest_half(q: float) -> float:
    """Each half's honest share of the hash rate (the model of lab/simulate/balance.py)."""
    return (1.0 - q) / 2


def _simulate(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """`powlab simulate balance --json` for the same cells, delay, q, z and interval."""
    root = Path(lab.scenario.__file__).resolve().parents[2]
    command = [sys.executable, "-m", "lab", "simulate", "balance", "--json",
               "--delay", ",".join(f"{d:g}" for d in args.delay),
               "--q", ",".join(f"{q:g}" for q in args.q), "--z", str(args.z),
               "--block-interval", f"{args.block_interval:g}",
               "--trials", str(args.sim_trials), "--seed", str(seed)]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH"))
                                         if p)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise ScenarioError(f"powlab simulate balance failed: {done.stderr.strip()[-300:]}")
    return dict(json.loads(done.stdout))


class Plan:
    """Who is where: the halves, their honest miners and the attacker."""

    def __init__(self, net: Network, given: list[str] | None) -> None:
        names = list(net.nodes)
        if given:
            groups = [[x.strip() for x in g.split(",") if x.strip()] for g in given]
            for name in (x for g in groups for x in g):
                net.node(name)  # unknown names fail here
            if set(groups[0]) & set(groups[1]):
                raise ScenarioError("--halves overlap")
            missing = [n for n in names if n not in groups[0] + groups[1]]
            if missing:
                raise ScenarioError(f"--halves must name every node; missing: "
                                    f"{', '.join(missing)}")
        else:
            cut = math.ceil(len(names) / 2)
            groups = [names[:cut], names[cut:]]
        victim = net.victim.name
        if victim not in groups[0] + groups[1]:
            raise ScenarioError(f"the merchant {victim} is in neither half")
        self.tx_half, self.block_half = (groups if victim in groups[0] else groups[::-1])
        attacker = net.attacker.name
        if attacker not in self.block_half:
            # The attacker must mine with the block half: the block half's first node that is
            # neither a miner of the manifest nor the merchant plays it.
            spare = [n for n in self.block_half if net.node(n).role != "miner"]
            attacker = (spare or self.block_half)[0]
        self.attacker = attacker
        self.tx_miners = [n for n in self.tx_half if net.node(n).role == "miner"
                          and n != attacker] or [n for n in self.tx_half if n != victim][:1] \
            or [victim]
        self.block_miners = [n for n in self.block_half if net.node(n).role == "miner"
                             and n != attacker] or [attacker]
        if not self.tx_half or not self.block_half:
            raise ScenarioError("both halves need at least one node")

    def miners(self) -> list[str]:
        return list(dict.fromkeys([*self.tx_miners, *self.block_miners, self.attacker]))

    def shares(self, q: float) -> dict[str, float]:
        honest_half = _honest_half(q)
        out: dict[str, float] = {}
        for group in (self.tx_miners, self.block_miners):
            for n in group:
                out[n] = out.get(n, 0.0) + honest_half / len(group)
        if q > 0:
            out[self.attacker] = out.get(self.attacker, 0.0) + q
        return out

    def to_json(self) -> dict[str, Any]:
        return {"transaction_half": self.tx_half, "block_half": self.block_half,
                "attacker": self.attacker, "transaction_half_miners": self.tx_miners,
                "block_half_miners": self.block_miners}


def _confirmations(status: dict[str, Any]) -> int:
    if status.get("status") not in SETTLED:
        return 0
    return int(status.get("confirmations") or 0)


def _cross_links(net: Network, plan: Plan) -> list[tuple[str, str]]:
    sv = survey(list(net.nodes.values()))
    if sv is None:
        raise ScenarioError("cannot see the P2P links (a node reports no node id, or two "
                            "share a host address)")
    return sorted((a, b) for a in plan.tx_half for b in plan.block_half if b in sv.adj.get(a, ()))


class _Settled:
    """Once every node is at the same height twice in a row (whatever was mined before the
    lift has landed, the blocks still behind the delay included): the tips, one per node.
    None before. (Not "every node knows every tip": a node that reorganises to a branch of
    equal height does not announce it, so a neighbour may never learn of it.)"""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.last: list[str] | None = None

    def __call__(self) -> list[str] | None:
        infos = [n.try_call("getblockchaininfo") for n in self.net.nodes.values()]
        if any(info is None for info in infos):
            return None
        tips = [str(info["bestblockhash"]) for info in infos if info is not None]
        heights = {info["blocks"] for info in infos if info is not None}
        stable = tips if len(heights) == 1 and tips == self.last else None
        self.last = tips
        return stable


def _halt(net: Network, plan: Plan) -> float:
    """Stops every miner of the experiment at once; the seconds it took. (net.stop_mining()
    stops only the nodes that mined when the run started, and then waits a second: the
    attacker, which mines only for the experiment, would go on mining after the lift.)"""
    started = time.monotonic()
    parallel([lambda n=n: net.set_mining(n, False) for n in plan.miners()])
    return time.monotonic() - started


def trial(net: Network, plan: Plan, delay: float, q: float, index: int) -> dict[str, Any]:
    args = net.args
    victim = net.victim
    _halt(net, plan)
    net.clear_link_faults()
    net.sync_blocks(timeout=args.trial_timeout)
    links = _cross_links(net, plan)
    if not links:
        raise ScenarioError(f"no link between the halves {plan.tx_half} and {plan.block_half}")
    ds = net.double_spend(plan.attacker, victim, args.amount)
    net.timeline.mark("*", "trial", delay=delay, q=q, trial=index,
                      tx1=ds.txid1[:16], tx2=ds.txid2[:16])
    if delay > 0:
        for a, b in links:
            net.link_fault(a, b, delay=delay)
    net.send(victim, ds.tx1, "tx1")
    net.send(plan.attacker, ds.tx2, "tx2")
    def holds(nodes: list[str], txid: str) -> bool:
        return all(net.tx_status(m, txid).get("status") == "mempool" for m in nodes)

    if delay > 0:
        # The model's start: each half's miners hold their own half's payment (the other
        # one, a double spend, comes three delays later and is refused).
        net.wait_for(lambda: holds(plan.tx_miners, ds.txid1)
                     and holds([*plan.block_miners, plan.attacker], ds.txid2),
                     timeout=args.trial_timeout,
                     what="each half's miners to hold their half's payment")
    else:
        # No delay: a race inside one network, each miner holds whichever came first.
        miners = [*plan.tx_miners, *plan.block_miners, plan.attacker]
        net.wait_for(lambda: all(holds([m], ds.txid1) or holds([m], ds.txid2)
                                 for m in miners),
                     timeout=args.trial_timeout, what="each miner to hold one of the payments")
    net.set_hashrates(plan.shares(q), block_interval=args.block_interval)

    polls = 0

    def state() -> str | None:
        # The merchant's node every poll (the lift must follow its z-th confirmation
        # closely); whether one payment is already everywhere only every tenth.
        nonlocal polls
        polls += 1
        if _confirmations(net.tx_status(victim, ds.txid1)) >= args.z:
            return "lift"
        if polls % 10:
            return None
        everywhere = [(net.tx_status(n, ds.txid1), net.tx_status(n, ds.txid2))
                      for n in net.nodes.values()]
        if all(_confirmations(t2) >= 1 for _, t2 in everywhere):
            return NOT_CONFIRMED
        if all(_confirmations(t1) >= 1 for t1, _ in everywhere):
            return SURVIVED
        return None

    try:
        seen = net.wait_for(state, timeout=args.trial_timeout, interval=0.02,
                            what=f"tx1 to reach {args.z} confirmations or one payment to be "
                                 "everywhere")
    except ScenarioError:
        _halt(net, plan)
        net.clear_link_faults()
        net.timeline.mark("*", "trial timed out", delay=delay, q=q, trial=index)
        return {"delay": delay, "q": q, "outcome": TIMED_OUT, "txid1": ds.txid1}
    halt_s = _halt(net, plan)
    net.clear_link_faults()
    if seen == "lift":
        net.timeline.mark(victim.name, "delay lifted", confirmations=args.z,
                          mining_stopped_in_s=round(halt_s, 3))
        tips = net.wait_for(_Settled(net), timeout=args.trial_timeout, interval=0.5,
                            what="every node to reach the same height")
        if len(set(tips)) > 1:
            # A tie at the top: the next block decides, from a half drawn by its power.
            tx_share = _honest_half(q)
            finder = (plan.tx_miners[0] if net.rng.random() < tx_share
                      else plan.block_miners[0])
            net.mine(finder, 1, "tie broken")
            net.timeline.mark(finder, "tie", tips=len(set(tips)))
        net.sync_blocks(timeout=args.trial_timeout, tie_breaker=plan.tx_miners[0])
        final = net.tx_status(victim, ds.txid1)
        outcome = SURVIVED if _confirmations(final) >= 1 else SUCCESS
    else:
        outcome = str(seen)
    net.timeline.mark("*", "trial result", delay=delay, q=q, trial=index, outcome=outcome)
    return {"delay": delay, "q": q, "outcome": outcome, "txid1": ds.txid1,
            "cross_links": [f"{a}-{b}" for a, b in links], "mining_stopped_in_s": halt_s}


def run(net: Network) -> None:
    args = net.args
    if args.trials < 1 or args.z < 1 or args.block_interval <= 0:
        raise ScenarioError("--trials and --confirmations must be at least 1, the block "
                            "interval positive")
    if any(not 0 <= q < 1 for q in args.q) or any(d < 0 for d in args.delay):
        raise ScenarioError("q must be within [0, 1) and delays 0 or more")
    plan = Plan(net, args.halves)
    simulated = _simulate(args, net.seed)  # first: a broken simulator fails before any trial
    net.timeline.mark("*", "halves", transaction_half=",".join(plan.tx_half),
                      block_half=",".join(plan.block_half), attacker=plan.attacker)
    trials: list[dict[str, Any]] = []
    with net.staged():
        for q in args.q:
            for delay in args.delay:
                for k in range(args.trials):
                    trials.append(trial(net, plan, delay, q, k))
    sim_rows = {(r["delay"], r["q"]): r for r in simulated["rows"]}
    rows = [_row(args, delay, q, [t for t in trials if t["delay"] == delay and t["q"] == q],
                 sim_rows[(delay, q)])
            for q in args.q for delay in args.delay]
    done = sum(r["trials"] for r in rows)
    wins = sum(r["successes"] for r in rows)
    if not args.json:
        print(_table(rows))
    summary = "; ".join(f"delay {r['delay']:g} s, q {r['q']:g}: {r['successes']}/{r['trials']}"
                        f" (sim {r['simulator']['success_rate']:.0%})" for r in rows)
    verdict = (f"balance: {'SUCCESS' if wins else 'FAILED'} — {wins} of {done} payments "
               f"confirmed {args.z} deep in the merchant's half were reversed; {summary}")
    net.report(verdict=verdict, success=wins > 0, trials=done, successes=wins, rows=rows,
               halves=plan.to_json(), confirmations=args.z, block_interval=args.block_interval,
               paper=simulated["paper"], simulator_model={
                   k: simulated[k] for k in ("seed", "trials", "payment_trips")},
               trial_results=trials,
               # The roles this attack played, which may differ from the manifest's (the
               # attacker must sit in the block half).
               roles={"attacker": plan.attacker, "victim": net.victim.name,
                      "honest": plan.tx_miners + plan.block_miners})


def _row(args: argparse.Namespace, delay: float, q: float, results: list[dict[str, Any]],
         sim: dict[str, Any]) -> dict[str, Any]:
    counted = [t for t in results if t["outcome"] != TIMED_OUT]
    outcomes = {o: sum(t["outcome"] == o for t in counted)
                for o in (SUCCESS, SURVIVED, NOT_CONFIRMED)}
    wins = outcomes[SUCCESS]
    lo, hi = wilson_interval(wins, len(counted))
    return {
        "delay": delay, "q": q, "confirmations": args.z, "block_interval": args.block_interval,
        "trials": len(counted), "successes": wins,
        "success_rate": wins / len(counted) if counted else 0.0, "ci95": [lo, hi],
        "outcomes": outcomes, "timed_out": len(results) - len(counted),
        "simulator": {k: sim[k] for k in ("trials", "successes", "success_rate", "ci95",
                                          "outcomes")},
        "partition_limit": sim["partition_limit"],
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'delay s':>7}  {'q':>4}  {'testnet':>9}  {'95% CI':>12}  {'simulator':>9}  "
            f"{'95% CI':>12}  {'not confirmed':>13}  {'timed out':>9}")
    lines = ["", head]
    for r in rows:
        s = r["simulator"]
        lines.append(
            f"{r['delay']:>7g}  {r['q']:>4g}  {str(r['successes']) + '/' + str(r['trials']):>9}  "
            f"{_ci(r['ci95']):>12}  {s['success_rate']:>9.3f}  {_ci(s['ci95']):>12}  "
            f"{r['outcomes'][NOT_CONFIRMED]:>13}  {r['timed_out']:>9}")
    return "\n".join(lines)


def build_figure(data: dict[str, Any]) -> Any:
    """`--plot`: the testnet's success rate per delay with its Wilson 95% interval, one
    series per attacker share, next to the simulator's for the same cells."""
    import matplotlib  # the runner calls this only when matplotlib is installed

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.6))
    colours = plt.get_cmap("tab10")
    rows = data["rows"]
    for i, q in enumerate(sorted({r["q"] for r in rows})):
        cells = sorted((r for r in rows if r["q"] == q), key=lambda r: r["delay"])
        xs = [r["delay"] for r in cells]
        colour = colours(i % 10)
        for key, label, style, shift in (
                ("testnet", "testnet", "o-", -0.03), ("simulator", "simulator", "s--", 0.03)):
            points = [r if key == "testnet" else r["simulator"] for r in cells]
            ys = [p["success_rate"] for p in points]
            err = [[max(0.0, y - p["ci95"][0]) for y, p in zip(ys, points, strict=True)],
                   [max(0.0, p["ci95"][1] - y) for y, p in zip(ys, points, strict=True)]]
            n = points[0]["trials"] if points else 0
            # A small horizontal shift keeps the two intervals of one cell apart.
            ax.errorbar([x + shift * max(xs or [1]) for x in xs], ys, yerr=err, fmt=style,
                        color=colour, capsize=4, linewidth=2 if key == "testnet" else 1.5,
                        markersize=7 if key == "testnet" else 5,
                        alpha=1.0 if key == "testnet" else 0.7,
                        label=f"q = {q:g}, {label}: {n:,} trials per point, 95 % CI")
    ax.set_ylim(0, 1)
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xticks(sorted({r["delay"] for r in rows}))
    ax.tick_params(labelsize=11)
    ax.set_xlabel(f"one-way delay on the links between the halves (s; mean block interval "
                  f"{data.get('block_interval', 1):g} s)", fontsize=12)
    ax.set_ylabel("P(payment confirmed, then reversed)", fontsize=12)
    done, wins = data.get("trials", 0), data.get("successes", 0)
    ax.set_title(f"balance attack on the testnet: {wins} of {done} payments confirmed "
                 f"{data.get('confirmations')} deep were reversed\n(the simulator's figure for "
                 "the same cells dashed)", fontsize=12)
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


__all__ = ["add_arguments", "run"]
