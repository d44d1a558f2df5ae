"""`powlab simulate network|doublespend|selfish`: argument parsing, tables, JSON and plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from consensus.attack_theory import MODELS


def parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,0.2: {text!r}") from None


def parse_ints(text: str) -> list[int]:
    """'1..10', '1,2,6' or '1..10,20'."""
    values: list[int] = []
    try:
        for part in text.split(","):
            if ".." in part:
                lo, hi = part.split("..")
                values.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1..10 or 1,2: {text!r}") from None
    return values


def add_simulate_parser(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="deterministic experiments in virtual time")
    ssub = sim.add_subparsers(dest="simulation", required=True, metavar="EXPERIMENT")

    net = ssub.add_parser("network", help="many nodes, latency, stale rate and reorgs")
    net.add_argument("--nodes", type=int, default=200)
    net.add_argument("--blocks", type=int, default=1000)
    net.add_argument("--block-interval", type=float, default=10.0, help="seconds (mean)")
    net.add_argument("--latency", default="100ms",
                     help="per link: 100ms, uniform:50ms,150ms, exp:100ms, normal:100ms,20ms")
    net.add_argument("--degree", type=int, default=8, help="peers per node (random graph)")
    net.add_argument("--miners", type=int, default=10)
    net.add_argument("--hashrates", type=parse_floats, help="shares per miner, e.g. 0.5,0.3,0.2")
    net.add_argument("--bandwidth", help="per link, e.g. 10Mbps (default: unlimited)")
    net.add_argument("--block-size", default="1MB", help="bytes per block for bandwidth")
    net.add_argument("--validation-ms", type=float, default=0.0, help="delay per hop")
    net.add_argument("--topology-file", type=Path,
                     help='JSON {"edges": [[a, b, "120ms"], ...]} instead of a random graph')
    net.add_argument("--finality-depth", type=int, default=6)
    net.add_argument("--enforce-finality", action="store_true")
    net.add_argument("--finality-target", type=float, default=1e-6,
                     help="reversal probability for 'blocks needed'")
    net.add_argument("--assumed-attacker-share", type=float, default=0.1)
    net.add_argument("--sweep", help="block-interval=1,2,5,10,30: one run per value, a table")
    _common(net)
    net.set_defaults(func=_cmd_network)

    ds = ssub.add_parser("doublespend", help="Monte Carlo double spends vs Nakamoto/Rosenfeld")
    ds.add_argument("--q", type=parse_floats, default=[0.1, 0.2, 0.3],
                    help="attacker shares, e.g. 0.1,0.2,0.3")
    ds.add_argument("--z", type=parse_ints, default=list(range(1, 11)),
                    help="confirmations, e.g. 1..10")
    ds.add_argument("--trials", type=int, default=10_000)
    ds.add_argument("--model", choices=MODELS, default="catch-up")
    ds.add_argument("--give-up", type=int, default=None, metavar="N",
                    help="the attacker abandons once N blocks behind, as `powlab attack "
                         "majority --give-up N` does (default: never)")
    _common(ds)
    ds.set_defaults(func=_cmd_doublespend)

    sf = ssub.add_parser("selfish", help="selfish mining revenue vs Eyal & Sirer")
    sf.add_argument("--alpha", type=parse_floats, default=[0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45])
    sf.add_argument("--gamma", type=parse_floats, default=[0.0, 0.5, 1.0])
    sf.add_argument("--blocks", type=int, default=200_000)
    _common(sf)
    sf.set_defaults(func=_cmd_selfish)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a PNG plot")


def _emit(args: argparse.Namespace, data: Any, table: Table) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        Console().print(table)


# ----------------------------------------------------------------- network


def _network_config(args: argparse.Namespace) -> Any:
    from lab.simulate.network import NetworkConfig, parse_bandwidth, parse_bytes

    return NetworkConfig(
        nodes=args.nodes,
        blocks=args.blocks,
        block_interval=args.block_interval,
        latency=args.latency,
        degree=args.degree,
        miners=args.miners,
        hashrates=args.hashrates,
        bandwidth_bps=parse_bandwidth(args.bandwidth) if args.bandwidth else None,
        block_size=parse_bytes(args.block_size),
        validation_delay=args.validation_ms / 1000,
        finality_depth=args.finality_depth,
        enforce_finality=args.enforce_finality,
        finality_target=args.finality_target,
        assumed_attacker_share=args.assumed_attacker_share,
        topology_file=args.topology_file,
        seed=args.seed,
    )


def _cmd_network(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lab.simulate.network import simulate_network

    try:
        cfg = _network_config(args)
        if args.sweep:
            key, _, values = args.sweep.partition("=")
            if key.replace("_", "-") != "block-interval":
                raise ValueError("only block-interval can be swept, e.g. block-interval=1,2,5,10")
            runs = [simulate_network(replace(cfg, block_interval=v)) for v in parse_floats(values)]
        else:
            runs = [simulate_network(cfg)]
    except ValueError as exc:
        print(f"powlab simulate network: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"network: {cfg.nodes} nodes, {cfg.blocks} blocks, latency "
                        f"{cfg.latency}, seed {cfg.seed}")
    for column in ("interval s", "stale rate", "prop p50 ms", "prop p90 ms", "prop max ms",
                   "reorgs (depth: count)", "safe depth", f"z for {cfg.finality_target:g}"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            f"{run['block_interval']:g}", f"{run['stale_rate']:.4f}",
            str(run["propagation_ms"]["p50"]), str(run["propagation_ms"]["p90"]),
            str(run["propagation_ms"]["max"]),
            ", ".join(f"{d}: {c}" for d, c in run["reorg_depths"].items()) or "none",
            str(run["finality"]["observed_safe_depth"]),
            str(run["finality"]["blocks_for_target"]),
        )
    data: Any = runs[0] if len(runs) == 1 else {"sweep": "block_interval", "runs": runs}
    _emit(args, data, table)
    if args.plot:
        from lab.simulate.plots import plot_stale_rate

        plot_stale_rate(runs, args.plot)
    return 0


# ----------------------------------------------------------------- doublespend


def _cmd_doublespend(args: argparse.Namespace) -> int:
    from lab.simulate.doublespend import simulate_doublespend

    try:
        data = simulate_doublespend(args.q, args.z, args.trials, args.seed, args.model,
                                    args.give_up)
    except ValueError as exc:
        print(f"powlab simulate doublespend: {exc}", file=sys.stderr)
        return 2
    give_up = "never gives up" if args.give_up is None else f"gives up {args.give_up} behind"
    table = Table(title=f"double spend, model {args.model}, attacker {give_up}, "
                        f"{args.trials} trials per cell, seed {args.seed}",
                  caption=data["model_notes"])
    columns = ["q", "z", "successes", "empirical", "95% CI", "nakamoto", "exact"]
    if args.give_up is not None:
        columns.append("exact, never gives up")
    for column in columns:
        table.add_column(column, justify="right")
    for row in data["rows"]:
        lo, hi = row["ci95"]
        cells = [f"{row['q']:g}", str(row["z"]), str(row["successes"]),
                 f"{row['empirical']:.5f}", f"[{lo:.5f}, {hi:.5f}]",
                 f"{row['nakamoto']:.5f}", f"{row['exact']:.5f}"]
        if args.give_up is not None:
            cells.append(f"{row['exact_never_gives_up']:.5f}")
        table.add_row(*cells)
    _emit(args, data, table)
    if args.plot:
        from lab.simulate.plots import plot_doublespend

        plot_doublespend(data, args.plot)
    return 0


# ----------------------------------------------------------------- selfish


def _cmd_selfish(args: argparse.Namespace) -> int:
    from lab.simulate.selfish import simulate_selfish_grid

    try:
        data = simulate_selfish_grid(args.alpha, args.gamma, args.blocks, args.seed)
    except ValueError as exc:
        print(f"powlab simulate selfish: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"selfish mining, {args.blocks} blocks per run, seed {args.seed}")
    for column in ("alpha", "gamma", "attacker share", "95% CI", "Eyal-Sirer", "profitable"):
        table.add_column(column, justify="right")
    for row in data["rows"]:
        lo, hi = row["ci95"]
        table.add_row(f"{row['alpha']:g}", f"{row['gamma']:g}", f"{row['attacker_share']:.4f}",
                      f"[{lo:.4f}, {hi:.4f}]", f"{row['eyal_sirer']:.4f}",
                      "yes" if row["profitable"] else "no")
    _emit(args, data, table)
    if args.plot:
        from lab.simulate.plots import plot_selfish

        plot_selfish(data, args.plot)
    return 0
