"""Running one scenario: load its file (or a built-in attack), parse its own arguments, drive
the network, print the live timeline and the report, and hand the network back as found."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from lab.client import RPCError
from lab.plotting import save_figure
from lab.scenario.engine import UNREACHABLE, NetNode, ScenarioError, Timeline, load_nodes
from lab.scenario.journal import Journal, journal_path, orphans, undo
from lab.scenario.network import Network, Node, as_node
from lab.scenario.nodes import back_on_own_config
from lab.scenario.report import deepest_reorg, line_echo, plot_attack, print_report
from lab.scenario.runlog import RunLock, RunLog

BUILTIN_PACKAGE = "lab.attack"
BUILTINS = ("race", "finney", "vector76", "majority", "selfish", "split")
# Options of the runner itself: left out of a document's "params".
RUNNER_KEYS = frozenset({"func", "command", "attack_command", "scenario_command", "json",
                         "plot", "dir", "docker", "rpc", "quiet", "file", "scenario_args",
                         "repeat"})


@dataclass
class Scenario:
    """A loaded scenario: its name, its module (with `run(net)` and optionally
    `add_arguments(parser)`) and where it came from."""

    name: str
    module: ModuleType
    origin: str

    @property
    def description(self) -> str:
        return first_line(self.module.__doc__)

    def parser(self, prog: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog, description=self.module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add = getattr(self.module, "add_arguments", None)
        if add is not None:
            add(parser)
        return parser


def first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def load_builtin(name: str) -> Scenario:
    if name not in BUILTINS:
        raise ScenarioError(f"no built-in scenario {name!r} (built-in: {', '.join(BUILTINS)})")
    module = importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
    return Scenario(name, module, f"built-in ({BUILTIN_PACKAGE}.{name})")


def load_file(path: str | Path) -> Scenario:
    """Imports a scenario file as a module of its own (a unique name, so two files called
    the same do not collide); it must define `run(net)`."""
    file = Path(path)
    if not file.is_file():
        raise ScenarioError(f"no scenario file {str(path)!r}")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"powlab_scenario_{file.stem}_{digest}", file)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: dataclasses and pickling look the module up.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(spec.name, None)
        raise ScenarioError(f"{path} failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(module, "run", None)):
        raise ScenarioError(f"{path} defines no run(net) function")
    return Scenario(file.stem, module, str(file))


def add_runner_arguments(parser: argparse.ArgumentParser, timeout: bool = False) -> None:
    """What every run takes: where the network is, roles, the seed and the output."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", default=None, metavar="DIR",
                       help="the testnet's directory (default ./testnet, env POWLAB_TESTNET_DIR)")
    where.add_argument("--docker", action="store_true",
                       help="the compose network of ./docker-compose.yml")
    where.add_argument("--rpc", action="append", metavar="NAME=URL[,ROLE]",
                       help="any node by its RPC URL, http://user:password@host:port; repeat "
                            "for each node")
    parser.add_argument("--attacker", metavar="NODE",
                        help="default: the node with role attacker, else the last miner")
    parser.add_argument("--victim", metavar="NODE",
                        help="default: the node with role merchant, else the last non-miner")
    parser.add_argument("--honest", metavar="NODE,…",
                        help="honest miners (default: the other miners)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seeds every random choice; logged, so a run can be repeated "
                             "(default 1)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw heights and confirmations over time")
    parser.add_argument("--quiet", action="store_true", help="no live timeline, only the report")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run N times with seeds SEED, SEED+1, …; report the success rate "
                             "with its 95%% Wilson interval (default 1)")


def params_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in RUNNER_KEYS and not callable(v)}


def execute(scenario: Scenario, args: argparse.Namespace, command: str = "scenario",
            out: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs `scenario` on the network `args` names and returns the --json document. On an
    error the document carries it under "error" (with the timeline so far) and the network
    is still handed back as found."""
    nodes = [as_node(n) for n in load_nodes(args.dir, args.docker, args.rpc or ())]
    lock = run_lock(args)
    try:
        return _execute(scenario, args, command, out, nodes)
    finally:
        if lock is not None:
            lock.release()


def _execute(scenario: Scenario, args: argparse.Namespace, command: str,
             out: Callable[[str], None], nodes: list[Node]) -> dict[str, Any]:
    live = not args.json and not args.quiet
    record = run_log(args, scenario.name)
    printer = line_echo() if live else None

    def echo(event: dict[str, Any]) -> None:
        if printer is not None:
            printer(event)
        if record is not None:
            record.event(event)

    timeline = Timeline(echo=echo)
    net = Network(nodes, args, args.seed, timeline)
    if record is not None:
        record.write({"type": "start", "scenario": scenario.name, "command": command,
                      "seed": args.seed, "origin": scenario.origin,
                      "roles": net.roles.names() if describe_roles(net) else None,
                      "nodes": list(net.nodes), "started": time.time()})
    if live:
        out(f"powlab {command} {scenario.name}: seed {args.seed}, nodes "
            f"{', '.join(net.nodes)}" + (f"; {describe_roles(net)}" if describe_roles(net)
                                         else ""))
        out("timeline:")
    timeline.mark("*", "start", scenario=scenario.name, seed=args.seed)
    error: BaseException | None = None
    try:
        try:
            if record is not None:
                recover_killed_runs(record.directory, net, lambda: load_nodes(
                    args.dir, args.docker, args.rpc or ()))
                net.switches.journal = Journal(journal_path(record.directory))
            net.switches.save()
            with net.monitor:
                scenario.module.run(net)
        except (Exception, KeyboardInterrupt) as exc:
            error = exc
            timeline.mark("*", "error", message=f"{type(exc).__name__}: {exc}")
    finally:  # whatever ended the run (SystemExit from a scenario too)
        try:
            net.restore()
        except Exception as exc:  # e.g. a restarted node that did not come back
            timeline.mark("*", "not handed back", message=f"{type(exc).__name__}: {exc}")
            error = error or exc
    if error is None and net.outcome is None:
        error = ScenarioError(f"{scenario.origin}: run(net) returned without net.report(...)")
    data = document(scenario, net, args, command, error)
    if record is not None:
        record.write({"type": "end", "verdict": data["verdict"], "success": data["success"],
                      **({"error": data["error"]} if "error" in data else {})})
        record.close()
    if args.plot:
        own = getattr(scenario.module, "build_figure", None)
        if own is not None and error is None:
            # A scenario of many trials draws its own figure (rates with their intervals).
            save_figure(own(data), Path(args.plot))
        else:
            plot_attack(data, Path(args.plot))
        data["plot"] = args.plot
    return data


def recover_killed_runs(runs: Path, net: Network,
                        reload: Callable[[], list[NetNode]]) -> None:
    """Undoes what an earlier run on this testnet left when it was killed before it could
    (its journal is still there and its process is gone). A node the undo restarts has a
    new RPC cookie: `reload` reads the endpoints again."""
    def refresh() -> None:
        fresh = {n.name: n.endpoint for n in reload()}
        for name, node in net.nodes.items():
            if name in fresh:
                node.endpoint = fresh[name]

    def call(name: str, method: str, params: tuple[Any, ...]) -> bool:
        node = net.nodes.get(name)
        if node is None:
            return False
        for attempt in (1, 2):
            try:
                node.call(method, *params, timeout=10)
            except RPCError:
                return True  # it answered: nothing of that kind to undo any more
            except UNREACHABLE:
                if attempt == 2:
                    return False
                refresh()
                continue
            return True
        return False

    def restart(testnet_dir: Path, name: str, peers: bytes | None) -> None:
        from lab.testnet.manifest import load_manifest

        back_on_own_config(load_manifest(testnet_dir), name, peers)

    paths = orphans(runs)
    for path in paths:
        done = undo(path, call, restart)
        net.timeline.mark("*", "recovered a killed run", journal=path.name, undone=len(done))
        print(f"powlab: an earlier run ({path.name}) ended without handing the network back; "
              f"undone: {'; '.join(done) or 'nothing'}", file=sys.stderr)
    if paths:
        refresh()  # this run starts from the endpoints as they are now


def run_lock(args: argparse.Namespace) -> RunLock | None:
    """One run at a time on a testnet (none for --rpc: there is no directory to hold it)."""
    if args.rpc:
        return None
    from lab.testnet.manifest import resolve_dir

    directory = resolve_dir(args.dir)
    if not directory.is_dir():
        return None
    lock = RunLock(directory)
    lock.acquire()
    return lock


def run_log(args: argparse.Namespace, name: str) -> RunLog | None:
    """The live record for the dashboard, in the testnet's directory (none for --rpc)."""
    if args.rpc:
        return None
    from lab.testnet.manifest import resolve_dir

    directory = resolve_dir(args.dir)
    return RunLog(directory, name) if directory.is_dir() else None


def describe_roles(net: Network) -> str:
    try:
        roles = net.roles
    except ScenarioError:
        return ""
    return (f"attacker {roles.attacker.name}, victim {roles.victim.name}, honest miners "
            f"{', '.join(n.name for n in roles.honest) or '-'}")


def document(scenario: Scenario, net: Network, args: argparse.Namespace, command: str,
             error: BaseException | None) -> dict[str, Any]:
    outcome = dict(net.outcome or {})
    try:
        roles: dict[str, Any] | None = net.roles.names()
        watched = [net.victim.name]
    except ScenarioError:
        roles, watched = None, list(net.nodes)
    data: dict[str, Any] = {
        "attack": scenario.name,
        "scenario": scenario.name,
        "command": command,
        "origin": scenario.origin,
        "seed": net.seed,
        "success": bool(outcome.pop("success", False)),
        "reorg_depth": outcome.pop("reorg_depth", deepest_reorg(net.timeline.events, watched)),
        "victim_confirmations_seen": outcome.pop("victim_confirmations_seen",
                                                 net.monitor.max_victim_conf),
        "detected": bool(outcome.pop("detected", False)),
        "verdict": outcome.pop("verdict", ""),
        "roles": roles,
        "params": params_of(net.args),
        **outcome,
    }
    if error is not None:
        data["success"] = False
        data["error"] = f"{type(error).__name__}: {error}"
        data["verdict"] = f"{scenario.name}: ERROR — {error}"
        if not isinstance(error, ScenarioError | KeyboardInterrupt):
            data["traceback"] = "".join(traceback.format_exception(error))
    data["timeline"] = net.timeline.events
    data["samples"] = net.timeline.samples
    return data


def run_and_report(scenario: Scenario, args: argparse.Namespace, command: str) -> int:
    """One run, printed as a report; or with --repeat N, N runs and their success rate."""
    if args.repeat < 1:
        raise ScenarioError("--repeat must be at least 1")
    if args.repeat == 1:
        return print_document(execute(scenario, args, command), args)
    if args.plot:
        raise ScenarioError("--plot draws one run: leave out --repeat, or give the run's --seed")
    runs = []
    for i in range(args.repeat):
        one = argparse.Namespace(**{**vars(args), "seed": args.seed + i, "quiet": True,
                                    "json": True})
        data = execute(scenario, one, command)
        runs.append({k: v for k, v in data.items() if k not in ("timeline", "samples")})
        if not args.json:
            print(f"run {i + 1}/{args.repeat} seed {one.seed}: {data['verdict']}", flush=True)
    summary = repeat_summary(scenario, runs, command)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print()
        print(f"verdict: {summary['verdict']}")
    return 1 if any(r.get("error") for r in runs) else 0


def repeat_summary(scenario: Scenario, runs: list[dict[str, Any]],
                   command: str) -> dict[str, Any]:
    from consensus.attack_theory import wilson_interval

    successes = sum(1 for r in runs if r.get("success"))
    lo, hi = wilson_interval(successes, len(runs))
    errors = sum(1 for r in runs if r.get("error"))
    rate = successes / len(runs)
    verdict = (f"{scenario.name}: {successes} of {len(runs)} runs succeeded, rate {rate:.2f} "
               f"[95 % CI {lo:.2f}–{hi:.2f}]" + (f"; {errors} ended in an error" if errors
                                                  else ""))
    return {"attack": scenario.name, "scenario": scenario.name, "command": command,
            "origin": scenario.origin, "trials": len(runs), "successes": successes,
            "rate": rate, "ci95": [lo, hi], "errors": errors, "verdict": verdict,
            "params": runs[0].get("params") if runs else {}, "runs": runs}


def print_document(data: dict[str, Any], args: argparse.Namespace) -> int:
    """Prints the report (or the JSON document); 1 when the scenario failed with an error."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print_report(data, timeline_printed=not args.quiet)
        if data.get("plot"):
            print(f"  plot: {data['plot']}")
        if data.get("error"):
            if data.get("traceback"):
                print(data["traceback"], file=sys.stderr, end="")
            print(f"error: {data['error']} (the network was handed back as found: cuts "
                  "lifted, link faults cleared, mining restored)", file=sys.stderr)
    return 1 if data.get("error") else 0
