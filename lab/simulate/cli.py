"""`powlab simulate network|doublespend|selfish|balance`: arguments, tables, JSON and plots."""

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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" on every option that has a default (not on None or off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_simulate_parser(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="deterministic experiments in virtual time",
                         description="Deterministic experiments in virtual time (same --seed, "
                                     "same output).")
    ssub = sim.add_subparsers(dest="simulation", required=True, metavar="EXPERIMENT")
    _add_network(ssub)
    _add_doublespend(ssub)
    _add_selfish(ssub)
    _add_balance(ssub)


def _add_network(ssub: Any) -> None:
    net = ssub.add_parser(
        "network", help="many nodes, latency, stale rate and reorgs",
        formatter_class=_DefaultsFormatter,
        description="Many nodes in virtual time, each running the daemon's chain selection: "
                    "stale rate, propagation, reorganisations. --preset bitcoin replaces the "
                    "network options with a Bitcoin network calibrated to Gervais et al. 2016 "
                    "(see lab/simulate/presets.py).")
    net.add_argument("--preset", choices=["bitcoin"],
                     help="a calibrated network: block size, bandwidth, latency, validation "
                          "delay, nodes, miners and blocks come from the preset (only "
                          "--block-interval, --sweep, --blocks and --seed still apply); without "
                          "--block-interval or --sweep it runs every reference interval")
    net.add_argument("--nodes", type=int, default=200, help="number of nodes")
    net.add_argument("--blocks", type=int, default=None,
                     help="blocks mined per run (default: 1000; with --preset, enough for "
                          "about 150 stale blocks, at most 6000)")
    net.add_argument("--block-interval", type=float, default=None,
                     help="mean seconds between blocks (default: 10; with --preset, 600)")
    net.add_argument("--latency", default="100ms",
                     help="one-way delay per link: 100ms, uniform:50ms,150ms, exp:100ms, "
                          "normal:100ms,20ms")
    net.add_argument("--degree", type=int, default=8, help="peers per node (random graph)")
    net.add_argument("--miners", type=int, default=10, help="nodes that mine")
    net.add_argument("--hashrates", type=parse_floats,
                     help="hash-rate share per miner, e.g. 0.5,0.3,0.2 (default: equal)")
    net.add_argument("--bandwidth",
                     help="per link, e.g. 10Mbps; a block takes size ÷ bandwidth per hop "
                          "(default: unlimited)")
    net.add_argument("--block-size", default="1MB",
                     help="bytes per block, for the bandwidth (e.g. 500KB)")
    net.add_argument("--validation-ms", type=float, default=0.0,
                     help="validation delay per hop, milliseconds")
    net.add_argument("--topology-file", type=Path,
                     help='JSON {"edges": [[a, b, "120ms"], ...]} instead of a random graph')
    net.add_argument("--finality-depth", type=int, default=6,
                     help="depth for --enforce-finality")
    net.add_argument("--enforce-finality", action="store_true",
                     help="nodes refuse reorganisations of --finality-depth blocks or more")
    net.add_argument("--finality-target", type=float, default=1e-6,
                     help="reversal probability for the 'z needed' column")
    net.add_argument("--assumed-attacker-share", type=float, default=0.1,
                     help="attacker hash-rate share for 'z needed'; the stale rate measured "
                          "raises it to its effective share")
    net.add_argument("--sweep", help="block-interval=1,2,5,10,30: one run per value, a table")
    _common(net)
    net.set_defaults(func=_cmd_network)


def _add_doublespend(ssub: Any) -> None:
    ds = ssub.add_parser(
        "doublespend", help="Monte Carlo double spends vs Nakamoto/Rosenfeld",
        formatter_class=_DefaultsFormatter,
        description="Monte Carlo double-spend races next to Nakamoto's and the exact formula.")
    ds.add_argument("--q", type=parse_floats, default="0.1,0.2,0.3",
                    help="attacker hash-rate shares, e.g. 0.1,0.2,0.3")
    ds.add_argument("--z", type=parse_ints, default="1..10",
                    help="confirmations the merchant waits for, e.g. 1..10 or 1,2,6")
    ds.add_argument("--trials", type=int, default=10_000, help="races per (q, z) cell")
    ds.add_argument("--model", choices=MODELS, default="catch-up",
                    help="catch-up: the attacker wins on a tie in length; overtake: it needs "
                         "more work (what a powlab node requires); premined: it starts one "
                         "block ahead")
    ds.add_argument("--give-up", type=int, default=None, metavar="N",
                    help="the attacker abandons once its branch is N blocks shorter than the "
                         "honest one since the fork (default: never). The live `powlab attack "
                         "majority --give-up N` is `--model catch-up --give-up N+1` here (its "
                         "branch starts with the double spend mined for free; see "
                         "lab/attack/majority.py theory() and docs/attacks.md)")
    ds.add_argument("--full-rbf", type=float, default=None, metavar="F",
                    help="zero confirmations under replacement: the share F in [0, 1] of the "
                         "honest hash power that runs full RBF and mines tx2 in place of tx1 "
                         "(changes the z = 0 rows only; default: no replacement model)")
    ds.add_argument("--fee-bump", type=float, default=None, metavar="R",
                    help="units/byte tx2 pays above tx1 (with --full-rbf; below the incremental "
                         "relay fee rate no miner replaces; default 50, the live race's)")
    _common(ds)
    ds.set_defaults(func=_cmd_doublespend)


def _add_selfish(ssub: Any) -> None:
    sf = ssub.add_parser(
        "selfish", help="selfish mining revenue vs Eyal & Sirer",
        formatter_class=_DefaultsFormatter,
        description="Selfish mining (Eyal & Sirer 2014) simulated next to their closed form.")
    sf.add_argument("--alpha", type=parse_floats, default="0.1,0.2,0.25,0.3,0.35,0.4,0.45",
                    help="selfish miner's hash-rate shares")
    sf.add_argument("--gamma", type=parse_floats, default="0,0.5,1",
                    help="share of honest miners that mine on the selfish block in a tie")
    sf.add_argument("--blocks", type=int, default=200_000, help="blocks per (alpha, gamma) run")
    _common(sf)
    sf.set_defaults(func=_cmd_selfish)


def _add_balance(ssub: Any) -> None:
    from lab.simulate import balance

    bal = ssub.add_parser(
        "balance", help="balance attack: delay between two halves vs success",
        formatter_class=_DefaultsFormatter,
        description="The balance attack (Natoli & Gramoli 2017): the attacker delays the links "
                    "between two halves of equal honest hash power, pays the merchant in one "
                    "half and mines with the other; success is the payment, confirmed z deep "
                    "for the merchant, gone once the delay is lifted. See "
                    "lab/simulate/balance.py for the model.")
    bal.add_argument("--delay", type=parse_floats,
                     default=",".join(f"{d:g}" for d in balance.DEFAULT_DELAYS),
                     help="one-way delay on the links between the halves, seconds, e.g. 0,1,2")
    bal.add_argument("--q", type=parse_floats,
                     default=",".join(f"{q:g}" for q in balance.DEFAULT_QS),
                     help="attacker hash-rate shares, e.g. 0,0.2,0.4")
    bal.add_argument("--z", "--confirmations", dest="z", type=int,
                     default=balance.DEFAULT_CONFIRMATIONS,
                     help="confirmations the merchant waits for before the delay is lifted")
    bal.add_argument("--block-interval", type=float, default=balance.DEFAULT_BLOCK_INTERVAL,
                     help="mean seconds between blocks (only delay ÷ interval matters)")
    bal.add_argument("--trials", type=int, default=balance.DEFAULT_TRIALS,
                     help="attacks per (delay, q) cell")
    bal.add_argument("--payment-trips", type=int, default=balance.DEFAULT_PAYMENT_TRIPS,
                     help="one-way delays the block carrying a half's payment takes across: "
                          "3 on powlab nodes (compact block, request for the transaction the "
                          "other half rejected, the transaction), 1 for plain latency")
    _common(bal)
    bal.set_defaults(func=_cmd_balance)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same output)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a PNG plot")


def _emit(args: argparse.Namespace, data: Any, table: Table) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        # Piped, rich would cut the table at 80 columns: give it room instead.
        Console(width=None if sys.stdout.isatty() else 200).print(table)


# ----------------------------------------------------------------- network


def _network_config(args: argparse.Namespace) -> Any:
    from lab.simulate.network import NetworkConfig, parse_bandwidth, parse_bytes

    return NetworkConfig(
        nodes=args.nodes,
        blocks=args.blocks if args.blocks is not None else 1000,
        block_interval=args.block_interval if args.block_interval is not None else 10.0,
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


def _intervals(args: argparse.Namespace) -> list[float] | None:
    """The swept block intervals, or None for a single run."""
    if not args.sweep:
        return None
    key, _, values = args.sweep.partition("=")
    if key.replace("_", "-") != "block-interval":
        raise ValueError("only block-interval can be swept, e.g. block-interval=1,2,5,10")
    return parse_floats(values)


def _network_runs(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    from dataclasses import replace

    from lab.simulate import presets
    from lab.simulate.network import simulate_network

    intervals = _intervals(args)
    if args.preset is None:
        cfg = _network_config(args)
        return cfg, [simulate_network(replace(cfg, block_interval=v))
                     for v in (intervals or [cfg.block_interval])]
    if intervals is None:
        intervals = ([args.block_interval] if args.block_interval is not None else
                     [r.block_interval for r in presets.REFERENCE_STALE_RATES])
    configs = [presets.bitcoin_config(v, args.seed, args.blocks) for v in intervals]
    return configs[0], [presets.annotate(simulate_network(c), args.preset) for c in configs]


def _cmd_network(args: argparse.Namespace) -> int:
    try:
        cfg, runs = _network_runs(args)
    except ValueError as exc:
        print(f"powlab simulate network: {exc}", file=sys.stderr)
        return 2
    title = (f"network: {cfg.nodes} nodes, latency {cfg.latency}, seed {cfg.seed}"
             + (f", preset {args.preset} (Gervais et al. 2016 reference)" if args.preset else
                f", {cfg.blocks} blocks"))
    caption = _NETWORK_CAPTION.format(target=cfg.finality_target, q=cfg.assumed_attacker_share)
    if args.preset:
        caption += (" size: bytes per block (1 MB per 10 min). ref.: Gervais et al. 2016; ratio: "
                    "simulated / reference, marked 'out' beyond ±30%.")
    table = Table(title=title, caption=caption)
    columns = ["interval s", "blocks", "stale rate", "p50 ms", "p90 ms", "reorgs", "safe",
               "z"]
    if args.preset:
        columns[3:5] = ["size B", "ref.", "ratio", "p50 ms"]
    for column in columns:
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(*_network_row(run, args.preset is not None))
    data: Any = runs[0] if len(runs) == 1 else {"sweep": "block_interval", "runs": runs}
    _emit(args, data, table)
    if args.plot:
        from lab.simulate.plots import plot_stale_rate

        plot_stale_rate(runs, args.plot)
    return 0


_NETWORK_CAPTION = (
    "p50/p90: propagation delay to a node. reorgs: distinct reorganisations of the network "
    "(one per abandoned branch, however many nodes left it), depth: count. safe: deepest + 1. "
    "z: confirmations for a reversal risk below {target:g} against an attacker with {q:g} of "
    "the hash rate, raised to its effective share by the stale rate.")


def _network_row(run: dict[str, Any], preset: bool) -> list[str]:
    cells = [
        f"{run['block_interval']:g}", str(run["blocks"]), f"{run['stale_rate']:.4f}",
        f"{run['propagation_ms']['p50']:.0f}", f"{run['propagation_ms']['p90']:.0f}",
        ", ".join(f"{d}: {c}" for d, c in run["reorg_depths"].items()) or "none",
        str(run["finality"]["observed_safe_depth"]),
        str(run["finality"]["blocks_for_target"]),
    ]
    if preset:
        ref = run.get("reference")
        cells[3:5] = [f"{run['block_size']:,}",
                      f"{ref['stale_rate']:.4f}" if ref else "—",
                      (f"{ref['ratio']:.2f}" + ("" if ref["within_tolerance"] else " out"))
                      if ref else "—",
                      f"{run['propagation_ms']['p50']:.0f}"]
    return cells


# ----------------------------------------------------------------- doublespend


def _cmd_doublespend(args: argparse.Namespace) -> int:
    from lab.simulate.doublespend import simulate_doublespend

    try:
        data = simulate_doublespend(args.q, args.z, args.trials, args.seed, args.model,
                                    args.give_up, args.full_rbf, args.fee_bump)
    except ValueError as exc:
        print(f"powlab simulate doublespend: {exc}", file=sys.stderr)
        return 2
    give_up = "never gives up" if args.give_up is None else f"gives up {args.give_up} behind"
    rbf = "" if data["full_rbf"] is None else (
        f", z = 0 with {data['full_rbf']:.0%} full-RBF honest hash power and a fee bump of "
        f"{data['fee_bump']:g}/byte ({'replaces' if data['replaces'] else 'too small to replace'})")
    table = Table(title=f"double spend, model {args.model}, attacker {give_up}{rbf}, "
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


# ----------------------------------------------------------------- balance


def _cmd_balance(args: argparse.Namespace) -> int:
    from lab.simulate.balance import simulate_balance

    try:
        data = simulate_balance(args.delay, args.q, args.z, args.trials, args.seed,
                                args.block_interval, args.payment_trips)
    except ValueError as exc:
        print(f"powlab simulate balance: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"balance attack, z = {args.z}, block interval {args.block_interval:g} s, "
                        f"payment blocks {args.payment_trips}× the delay, "
                        f"{args.trials} trials per cell, seed {args.seed}",
                  caption=_BALANCE_CAPTION)
    for column in ("q", "delay s", "delay ÷ interval", "successes", "success", "95% CI",
                   "not confirmed", "partition limit"):
        table.add_column(column, justify="right")
    for row in data["rows"]:
        lo, hi = row["ci95"]
        table.add_row(f"{row['q']:g}", f"{row['delay']:g}", f"{row['delay_in_blocks']:g}",
                      str(row["successes"]), f"{row['success_rate']:.3f}",
                      f"[{lo:.3f}, {hi:.3f}]", str(row["outcomes"]["not_confirmed"]),
                      f"{row['partition_limit']:.3f}")
    _emit(args, data, table)
    if args.plot:
        from lab.simulate.plots import plot_balance

        plot_balance(data, args.plot)
    return 0


_BALANCE_CAPTION = (
    "success: the payment had z confirmations in the merchant's half and is not in the final "
    "chain. not confirmed: the other half's branch won before the merchant saw z "
    "confirmations. partition limit: success as the delay grows without bound.")
