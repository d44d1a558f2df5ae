"""`powlab attack race|finney|vector76|majority|selfish|split`: argument parsing and the runner."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from typing import Any

from lab.attack.common import (
    DEFAULT_AMOUNT,
    Monitor,
    Network,
    Timeline,
    load_nodes,
    params_of,
    plot_path,
    resolve_roles,
)
from lab.attack.context import Context
from lab.attack.report import line_echo, plot_attack, print_report
from lab.client import run_reporting_failures

SCENARIOS: dict[str, str] = {
    "race": "tx1 to the victim and tx2 to the miners at once; accepted at 0 confirmations",
    "finney": "withhold a block holding tx2, pay the victim with tx1, release the block",
    "vector76": "show a withheld block paying the victim to the victim alone; reorg it away",
    "majority": "mine a private branch with tx2 at share Q until it outworks Z confirmations",
    "selfish": "Eyal–Sirer selfish mining at share α over K blocks (seeded lottery)",
    "split": "partition into two mining halves, pay the coin differently on each, heal: "
             "which payment survives",
}


def scenario(name: str) -> Callable[[Context], Any]:
    # One module per scenario, imported only when it runs.
    from importlib import import_module

    return import_module(f"lab.attack.{name}").run


def execute(args: argparse.Namespace) -> dict[str, Any]:
    """Runs one scenario and returns the `--json` document."""
    nodes = load_nodes(args.dir)
    roles = resolve_roles(nodes, args.attacker, args.victim, args.honest)
    live = not args.json and not args.quiet
    timeline = Timeline(echo=line_echo() if live else None)
    if live:
        print(f"powlab attack {args.attack_command}: attacker {roles.attacker.name}, victim "
              f"{roles.victim.name}, honest miners "
              f"{', '.join(n.name for n in roles.honest) or '-'}")
        print("timeline:")
    rng = random.Random(args.seed)
    monitor = Monitor(timeline, roles)
    if args.attack_command == "selfish":
        monitor.track_all_txs = False
    network = Network(roles, timeline)
    network.before_restore = monitor.stop
    ctx = Context(args, roles, timeline, network, monitor, rng)
    with monitor:
        outcome = scenario(args.attack_command)(ctx)
    data = outcome.to_json(timeline, roles, params_of(args))
    path = plot_path(args)
    if path is not None:
        plot_attack(data, path)
        data["plot"] = str(path)
    return data


def cmd_attack(args: argparse.Namespace) -> int:
    return run_reporting_failures("attack", lambda: _run_attack(args))


def _run_attack(args: argparse.Namespace) -> int:
    data = execute(args)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data, timeline_printed=not args.quiet)
        if data.get("plot"):
            print(f"  plot: {data['plot']}")
    return 0


def _common(p: argparse.ArgumentParser, confirmations_help: str) -> None:
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="the testnet's directory (default ./testnet, env POWLAB_TESTNET_DIR)")
    p.add_argument("--attacker", metavar="NODE",
                   help="default: the node with role attacker, else the last miner")
    p.add_argument("--victim", metavar="NODE",
                   help="default: the node with role merchant, else the last non-miner")
    p.add_argument("--honest", metavar="NODE,…", help="honest miners (default: the other miners)")
    p.add_argument("--amount", type=int, default=DEFAULT_AMOUNT,
                   help=f"payment to the victim in smallest units (default {DEFAULT_AMOUNT})")
    p.add_argument("--confirmations", type=int, default=None, metavar="Z",
                   help=confirmations_help)
    p.add_argument("--hashrate-share", type=float, default=None, metavar="Q",
                   help="the attacker's share of the total hash rate (split: the share of the "
                        "half without the victim)")
    p.add_argument("--seed", type=int, default=1, help="seeds every random choice (default 1)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for any one step (blocks reaching nodes, …)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE.png", help="draw heights and confirmations over time")
    p.add_argument("--quiet", action="store_true", help="no live timeline, only the report")


def add_attack_parser(sub: Any) -> None:
    attack = sub.add_parser("attack", help="stage a double-spend or mining attack on a testnet",
                            description="Stage an attack on a running powlab network through "
                                        "RPC; print a timeline and a verdict.")
    asub = attack.add_subparsers(dest="attack_command", required=True, metavar="ATTACK")

    def add(name: str, confirmations_help: str) -> argparse.ArgumentParser:
        p = asub.add_parser(name, help=SCENARIOS[name], description=SCENARIOS[name])
        _common(p, confirmations_help)
        p.set_defaults(func=cmd_attack)
        return p

    race = add("race", "blocks the honest miners mine after the race (default 1)")
    race.add_argument("--delay", type=float, default=0.0, metavar="S",
                      help="send tx2 S seconds after tx1 (negative: before; default 0)")
    race.add_argument("--wait", type=float, default=2.0, metavar="S",
                      help="seconds for propagation and alerts before anyone mines (default 2)")
    race.add_argument("--victim-latency", type=float, default=0.0, metavar="MS",
                      help="delay the victim node's outgoing P2P traffic during the race "
                           "(setlinkfault), as for a poorly connected merchant (default 0)")

    finney = add("finney", "unused: the victim accepts at 0 confirmations")
    finney.add_argument("--wait", type=float, default=2.0, metavar="S",
                        help="seconds between paying the victim and releasing (default 2)")
    finney.add_argument("--release-to", choices=("victim", "attacker"), default="victim",
                        help="node the withheld block is submitted to (default victim)")
    finney.add_argument("--honest-block-first", action="store_true",
                        help="an honest block is mined before the release (the attack fails)")

    v76 = add("vector76", "unused: the attack shows the victim exactly one confirmation")
    v76.add_argument("--wait", type=float, default=1.0, metavar="S",
                     help="seconds the victim looks at its confirmed payment (default 1)")

    majority = add("majority", "confirmations the victim waits for "
                               "(default: its node's finality depth)")
    majority.add_argument("--give-up", type=int, default=10, metavar="N",
                          help="abandon the private branch N blocks behind (default 10)")
    majority.add_argument("--block-interval", type=float, default=1.0, metavar="S",
                          help="mean seconds per block at the total hash rate (default 1)")
    majority.add_argument("--settle", type=float, default=30.0, metavar="S",
                          help="seconds for the published branch to reach the victim")
    majority.set_defaults(timeout=300.0)

    selfish = add("selfish", "unused")
    selfish.add_argument("--alpha", type=float, default=None,
                         help="attacker's share α (default --hashrate-share, else 0.4)")
    selfish.add_argument("--gamma", type=float, default=0.0,
                         help="fraction of honest miners mining on the attacker's block in a "
                              "tie (default 0)")
    selfish.add_argument("--blocks", type=int, default=100, metavar="K",
                         help="lottery rounds: blocks found in total (default 100)")

    split = add("split", "confirmations each half mines on its own payment before the heal "
                         "(default 2)")
    split.add_argument("--halves", nargs=2, metavar="NODES",
                       help="the two halves, e.g. n1,n2 n3,n4 (default: the victim and its "
                            "nearest nodes, half of the network, against the rest)")
    split.add_argument("--block-interval", type=float, default=1.0, metavar="S",
                       help="mean seconds per block at the total hash rate (default 1)")
    split.set_defaults(timeout=120.0)
