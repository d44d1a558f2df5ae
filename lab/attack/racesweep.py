"""Race-attack success against the share of full-RBF nodes, with and without defences.

Each trial draws every node's policy afresh: full RBF with probability F (the cell's share,
drawn with the seeded generator), else `--base` (first-seen by default); only nodes whose
policy changes since the last trial are restarted, on one testnet for the whole sweep. Then
one race (lab/attack/race.py, `race_trial`): by default the attacker outbids (tx1 to the
victim, tx2 paying the higher fee to the honest miners once tx1 is in every mempool), one
honest miner mines a block. Defences "on": every node runs `--double-spend-alerts` and the
merchant's node a `--listening-period` (all nodes get it; only the victim's answer matters).

Per cell (defences × share) the figures are: trials, the mean number of full-RBF nodes, tx2
mined (the double spend got confirmed), the merchant defrauded (its node showed the payment as
accepted at 0 confirmations before any block, and tx2 was mined), the merchant warned (its
node flagged tx1 as double-spent or replaced before the block), each with a 95 % Wilson
interval, and the median trial time.

    powlab scenario run examples/scenarios/race_rbf.py --dir D -- --trials 20
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from lab.attack.race import RacePlan, check_durations, race_trial
from lab.attack.replacement import FIRST_SEEN, FULL, OPT_IN, apply_policies, fraction
from lab.scenario import Network, ScenarioError
from lab.scenario.engine import DOUBLE_SPEND_FEE
from lab.stats import percentile, wilson_interval

DEFAULT_SHARES = (0.0, 0.1, 0.5, 1.0)
DEFENCES = ("off", "on")
MAX_TRIALS = 1000  # per cell: a sweep is bounded in time and in coins spent
# Small, so that the attacker's coins last: every trial the victim's payment wins costs the
# attacker the amount (tx2 winning gives the whole coin back).
SWEEP_AMOUNT = 10_000_000


def shares(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated shares in [0, 1]."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one share, e.g. 0,0.1,0.5,1")
    return tuple(fraction(s) for s in items)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=5,
                        help=f"trials per cell (1..{MAX_TRIALS}; default 5)")
    parser.add_argument("--shares", type=shares, default=DEFAULT_SHARES, metavar="F,…",
                        help="probabilities that a node runs full RBF, one cell each "
                             "(default 0,0.1,0.5,1)")
    parser.add_argument("--defences", choices=(*DEFENCES, "compare"), default="compare",
                        help="off: no alerts, no listening period; on: both; compare: off "
                             "then on (default)")
    parser.add_argument("--listening-period", type=float, default=2.0, metavar="S",
                        help="the merchant's listening period with defences on (default 2)")
    parser.add_argument("--base", choices=(FIRST_SEEN, OPT_IN), default=FIRST_SEEN,
                        help="the policy of the nodes not drawn for full RBF (default "
                             "first-seen)")
    parser.add_argument("--strategy", choices=("outbid", "race"), default="outbid",
                        help="outbid: tx2 once tx1 is in every mempool; race: tx1 and tx2 at "
                             "once (default outbid)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S",
                        help="seconds between tx1 (everywhere, when outbidding) and tx2 "
                             "(default 0)")
    parser.add_argument("--wait", type=float, default=1.0, metavar="S",
                        help="seconds after tx2 before the block, on top of the listening "
                             "period when defences are on (default 1)")
    parser.add_argument("--amount", type=int, default=SWEEP_AMOUNT,
                        help=f"the payment in smallest units (default {SWEEP_AMOUNT})")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds for any one step (default 60)")


def check(args: argparse.Namespace) -> None:
    if not 1 <= args.trials <= MAX_TRIALS:
        raise ScenarioError(f"--trials must be 1..{MAX_TRIALS}")
    check_durations(**{"--listening-period": args.listening_period, "--wait": args.wait,
                       "--delay": args.delay, "--timeout": args.timeout})
    if args.listening_period < 0 or args.wait < 0 or args.delay < 0:
        raise ScenarioError("--listening-period, --wait and --delay must be 0 or more")
    if args.amount <= 0:
        raise ScenarioError("--amount must be positive")


def run(net: Network) -> None:
    args = net.args
    check(args)
    if not net.roles.honest:
        raise ScenarioError("the race needs at least one honest miner (see --honest)")
    chosen = DEFENCES if args.defences == "compare" else (args.defences,)
    count = len(chosen) * len(args.shares) * args.trials
    balance = int(net.roles.attacker.call("getbalance"))
    # Per trial at most the payment plus the larger of the two spends' fees.
    if balance < count * (args.amount + DOUBLE_SPEND_FEE):
        raise ScenarioError(f"{net.roles.attacker.name} holds {balance}, not enough for "
                            f"{count} payments of {args.amount}: lower --amount or fund it")
    trials: list[dict[str, Any]] = []
    current, stopped = "the setup, before any trial", None
    try:
        with net.staged():
            for defences in chosen:
                options = defence_options(defences, args.listening_period)
                first = True
                for share in args.shares:
                    for k in range(args.trials):
                        current = f"trial {k + 1} of share {share:g} (defences {defences})"
                        trials.append(one_trial(net, share, defences, options, first, k + 1))
                        first = False
    except BaseException as exc:
        # A trial that errors (a timeout, a node down, Ctrl-C) ends the sweep; the finished
        # trials are still reported (the runner keeps them next to the error), it is not.
        stopped = f"stopped at {current}, not counted: {type(exc).__name__}: {exc}"
        raise
    finally:
        report(net, trials, chosen, stopped)


def report(net: Network, trials: list[dict[str, Any]], chosen: tuple[str, ...],
           stopped: str | None) -> None:
    args = net.args
    cells = [summary(cell, d, s) for d in chosen for s in args.shares
             if (cell := [t for t in trials if t["defences"] == d and t["share"] == s])]
    text = verdict(cells, args) + (f"\n{stopped}" if stopped else "")
    net.report(verdict=text, success=any(t["defrauded"] for t in trials), cells=cells,
               trials=trials, table=table(cells), **({"stopped": stopped} if stopped else {}))


def defence_options(defences: str, listening_period: float) -> dict[str, Any]:
    """Node options every restarted node gets (a restart keeps none of an earlier one)."""
    on = defences == "on"
    return {"double_spend_alerts": on, "listening_period": listening_period if on else 0.0}


def one_trial(net: Network, share: float, defences: str, options: dict[str, Any],
              restart_all: bool, number: int) -> dict[str, Any]:
    args = net.args
    full = [name for name in net.nodes if net.rng.random() < share]
    policies: dict[str, str | None] = {n: FULL if n in full else args.base for n in net.nodes}
    net.timeline.mark("*", "trial", defences=defences, share=share, number=number,
                      full_rbf=",".join(full) or "-")
    started = time.monotonic()
    staging = apply_policies(net, policies, options, restart_all=restart_all)
    if staging.restarted:
        net.stop_mining()  # a restarted miner comes back mining, as its configuration says
    on = defences == "on"
    plan = RacePlan(amount=args.amount, delay=args.delay,
                    wait=args.wait + (args.listening_period if on else 0.0),
                    outbid=args.strategy == "outbid",
                    replaceable=OPT_IN in staging.policies.values(), timeout=args.timeout)
    result = race_trial(net, plan, staging.policies)
    return {"defences": defences, "share": share, "number": number, "full_rbf": full,
            "restarted": staging.restarted, "mined": result["mined"],
            "tx2_mined": result["success"],
            "accepted": result["victim_accepted_zero_conf"],
            "defrauded": result["victim_defrauded"], "warned": result["detected"],
            "seconds": round(time.monotonic() - started, 3)}


def rate(trials: list[dict[str, Any]], key: str) -> dict[str, Any]:
    k = sum(1 for t in trials if t[key])
    lo, hi = wilson_interval(k, len(trials))
    return {"k": k, "n": len(trials), "rate": round(k / len(trials), 4),
            "ci95": [round(lo, 4), round(hi, 4)]}


def summary(trials: list[dict[str, Any]], defences: str, share: float) -> dict[str, Any]:
    return {"defences": defences, "share": share, "trials": len(trials),
            "mean_full_rbf_nodes": round(sum(len(t["full_rbf"]) for t in trials)
                                         / len(trials), 2),
            "tx2_mined": rate(trials, "tx2_mined"), "defrauded": rate(trials, "defrauded"),
            "warned": rate(trials, "warned"),
            "median_trial_s": round(percentile([t["seconds"] for t in trials], 0.5), 2)}


def _cell(r: dict[str, Any]) -> str:
    return f"{r['k']}/{r['n']} [{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}]"


def table(cells: list[dict[str, Any]]) -> str:
    """The sweep as a Markdown table (what docs/attacks.md shows)."""
    lines = ["| defences | full-RBF share | full-RBF nodes (mean) | tx2 mined | merchant "
             "defrauded | merchant warned | median trial |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['defences']} | {c['share']:.0%} | {c['mean_full_rbf_nodes']} | "
                     f"{_cell(c['tx2_mined'])} | {_cell(c['defrauded'])} | "
                     f"{_cell(c['warned'])} | {c['median_trial_s']} s |")
    return "\n".join(lines)


def verdict(cells: list[dict[str, Any]], args: argparse.Namespace) -> str:
    total = sum(c["defrauded"]["k"] for c in cells)
    n = sum(c["trials"] for c in cells)
    head = (f"race-rbf: {total} of {n} trials defrauded the merchant ({args.strategy}, base "
            f"{args.base}, 95 % Wilson intervals per cell)")
    return head + "\n" + table(cells)
