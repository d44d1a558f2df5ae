"""`powlab testnet`: a local multi-node network of real `powlab node` processes on loopback.

Every node gets its own loopback address (127.0.0.2, 127.0.0.3, …) with the same P2P and RPC
ports, so a ban or a partition can target one node by host, exactly as it would across
machines. The testnet lives in one directory (default ``./testnet``):

    DIR/testnet.json     the manifest: layout, roles, rates, pids, the current partition
    DIR/nK/              node K's data directory (chain, wallet, cookie, rpc.url)
    DIR/nK/powlab.toml   node K's configuration (``powlab node --config`` reads it)
    DIR/nK.log           node K's log (JSON lines)

This module holds the subcommands and hands them to the docker compose testnet
(lab/testnet/docker.py) when the testnet runs there; manifest.py, nodeconfig.py,
processes.py, control.py and tables.py do the work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.client import NodeEndpoint, run_reporting_failures
from lab.testnet import forkserver
from lab.testnet.control import (
    FUND_ALL_LIMIT,
    PROGRESS_FROM,
    apply_partition,
    call,
    clear_bans,
    collect_status,
    converge,
    endpoint,
    fund,
    funded_nodes,
    resolve_finality_splits,
    resolve_splits,
    set_mining_rates,
    start_miners,
    wait_connected,
    wait_ready,
)
from lab.testnet.manifest import (
    DEFAULT_DEGREE,
    DEFAULT_DIR,
    DEFAULT_P2P_PORT,
    DEFAULT_RPC_PORT,
    DEFAULT_SUBNET,
    DIR_ENV_VAR,
    LAUNCHERS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    NETWORKS,
    TOPOLOGIES,
    Manifest,
    NodeEntry,
    TestnetError,
    check_subnet,
    load_manifest,
    new_manifest,
    parse_groups,
    parse_shares,
    read_manifest_json,
    resolve_dir,
    split_names,
)
from lab.testnet.nodeconfig import collect_node_options, parse_node_options, write_node_config
from lab.testnet.processes import (
    STOP_TIMEOUT,
    node_alive,
    process_group,
    raise_open_files_limit,
    spawn_node,
    stop_node,
)
from lab.testnet.progress import progress
from lab.testnet.tables import console, dir_flag, print_nodes, status_table

# `--launcher auto` forks the nodes from a fork server from this many nodes on.
FORK_FROM = 50
DEFAULT_BLOCK_TIME = 10.0  # seconds (`up --block-time`)
DEFAULT_IMAGE = "powlab:latest"  # `up --swarm --image`


def cmd_up(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.swarm or is_swarm(directory):
        return _swarm_up(args, directory)
    if args.docker or is_docker(directory):
        return _docker_up(args, directory)
    timeout = args.timeout
    manifest: Manifest
    existing = read_manifest_json(directory)
    if existing is not None:
        manifest = load_manifest(directory)
        _warn_if_layout_differs(args, manifest)
        _apply_new_node_options(args, manifest)
    else:
        manifest = _new_process_manifest(args, directory)

    raise_open_files_limit()
    many = len(manifest.nodes) > PROGRESS_FROM
    states: dict[str, str] = {}
    started: list[NodeEntry] = []
    # A new large testnet comes up in two phases: the funded nodes first, funded while the
    # others are still down (the funding blocks then cost a handful of nodes each, not all of
    # them), then the rest, which fetch those blocks in bulk, headers first, from their peers
    # instead of each validating and relaying them one by one as they are mined.
    two_phase = (not manifest.funded and not manifest.partition
                 and len(manifest.nodes) > FUND_ALL_LIMIT)
    first = funded_nodes(manifest) if two_phase else list(manifest.nodes)
    _start_nodes(manifest, first, states, started, many, timeout,
                 "starting the funded nodes" if two_phase else "starting")
    if two_phase:
        funder = manifest.nodes[0]
        for entry in first[1:]:  # their graph neighbours may not be up yet: link them to n1
            call(entry, "addnode", funder.p2p, "onetry")
        fund(manifest, timeout, among=first)
        chosen = {e.name for e in first}
        _start_nodes(manifest, [e for e in manifest.nodes if e.name not in chosen], states,
                     started, many, timeout, "starting the others")
    if many:
        counts = Counter(states.values())
        console().print(", ".join(f"{n} {state}" for state, n in counts.items())
                        + f" (logs in {manifest.directory}/nK.log"
                        + (", forked by the fork server" if manifest.launcher == "fork" else "")
                        + ")")
    else:
        for entry in manifest.nodes:
            console().print(f"{entry.name}: {states[entry.name]} (pid {entry.pid}, "
                            f"log {entry.log})")

    if manifest.partition and started:
        apply_partition(manifest, started)
    with progress("nodes connected to their neighbours", len(manifest.nodes), many) as bar:
        wait_connected(manifest, timeout, bar.update)
    if not manifest.funded:
        if two_phase:
            converge(manifest.nodes, timeout)
        else:
            fund(manifest, timeout)
        set_mining_rates(manifest, manifest.nodes[0])
        manifest.funded = True
        manifest.save()
        start_miners(manifest, manifest.nodes)
    else:
        start_miners(manifest, started)
    manifest.save()
    print_nodes(manifest, states, args.hints)
    if not args.hints:
        return 0
    first = manifest.nodes[-1].name if len(manifest.nodes) > 1 else manifest.nodes[0].name
    flag = dir_flag(manifest)
    console().print(
        f"\n  powlab testnet status{flag}\n"
        f"  powlab testnet send{flag} {manifest.nodes[0].name} {first} 100000\n"
        f"  powlab watch TXID --node {first}{flag}\n"
        f"  powlab testnet down{flag}",
        soft_wrap=True,
    )
    return 0


def _start_nodes(manifest: Manifest, entries: list[NodeEntry], states: dict[str, str],
                 started: list[NodeEntry], many: bool, timeout: float, label: str) -> None:
    """Start those of `entries` not running (noted in `states` and `started`), then wait
    until all of them answer RPC."""
    try:
        with progress(label, len(entries), many) as bar:
            for k, entry in enumerate(entries, start=1):
                if node_alive(entry):
                    states[entry.name] = "already running"
                else:
                    states[entry.name] = "restarted" if entry.pid else "started"
                    # Rewritten each start so a resumed testnet runs with this version's
                    # settings.
                    write_node_config(manifest, entry)
                    spawn_node(manifest, entry)
                    started.append(entry)
                bar.update(k)
    finally:
        # Saved before waiting: if start-up fails, `down` must still find these pids.
        manifest.save()
    with progress("nodes answering RPC", len(entries), many) as bar:
        wait_ready(entries, timeout, bar.update)


def _new_process_manifest(args: argparse.Namespace, directory: Path) -> Manifest:
    """The layout of a new process testnet from `up`'s options, written to `directory`."""
    if args.nodes is None:
        args.nodes = 4
    miners = args.miners if args.miners is not None else min(2, args.nodes)
    miner_names = split_names(args.miner_nodes) if args.miner_nodes else None
    shares = parse_shares(args.hashrates, len(miner_names) if miner_names else miners)
    if args.block_time is None:
        args.block_time = DEFAULT_BLOCK_TIME
    if args.block_time <= 0:
        raise TestnetError("--block-time must be positive")
    subnet = check_subnet(args.subnet or DEFAULT_SUBNET)  # before anything is created
    directory.mkdir(parents=True, exist_ok=True)
    launcher = args.launcher
    if launcher == "auto":
        launcher = "fork" if args.nodes >= FORK_FROM else "exec"
    manifest = new_manifest(
        directory, args.nodes, miners, shares, args.topology or "line",
        args.network or "regtest",
        args.block_time, args.finality_depth, subnet, args.p2p_port, args.rpc_port,
        miner_names, args.degree, args.seed, launcher,
    )
    manifest.node_options = collect_node_options(args)
    parse_node_options(manifest.node_options)  # refuse bad options before starting anything
    for entry in manifest.nodes:
        write_node_config(manifest, entry)
    manifest.save()
    return manifest


def _apply_new_node_options(args: argparse.Namespace, manifest: Manifest) -> None:
    """`--node-option` on an existing testnet adds to (or changes) its options: every node
    started from here on runs with them; one still running keeps its old ones until restarted."""
    given = collect_node_options(args)
    if not given:
        return
    parse_node_options(given)  # refuse bad options before changing anything
    manifest.node_options.update(given)
    manifest.save()
    running = [e.name for e in manifest.nodes if node_alive(e)]
    if running:
        console().print(
            f"[yellow]{', '.join(running)} already running with the options they started with;"
            " `powlab testnet down` then `up` to restart them with "
            + ", ".join(f"{k}={v}" for k, v in given.items())
        )


def _warn_if_layout_differs(args: argparse.Namespace, manifest: Manifest) -> None:
    given = {
        "--nodes": (args.nodes, len(manifest.nodes)),
        "--topology": (args.topology, manifest.topology),
        "--network": (args.network, manifest.network),
        "--subnet": (args.subnet and check_subnet(args.subnet), manifest.subnet),
    }
    differing = [flag for flag, (want, have) in given.items()
                 if want is not None and want != have]
    if differing:
        console().print(
            f"[yellow]a testnet already exists in {manifest.directory}; keeping its layout "
            f"(ignoring {', '.join(differing)}). `powlab testnet down --purge` to start over."
        )


def cmd_status(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    docker = args.docker or is_docker(directory)
    if not docker:
        load_manifest(directory)  # fail early, with the hint, when there is no testnet

    def snapshot() -> tuple[str, list[list[str]] | None, list[dict[str, Any]]]:
        if docker:
            rows = docker_do(directory, args, lambda net: net.status())
            return "powlab docker testnet", None, rows
        # Re-read each time: another shell may have partitioned, healed or restarted nodes.
        manifest = load_manifest(directory)
        return (f"powlab testnet in {manifest.directory}", manifest.partition,
                collect_status(manifest))

    if args.json:
        print(json.dumps(snapshot()[2], indent=2))
        return 0
    if not args.watch:
        console().print(status_table(*snapshot()))
        return 0
    from rich.live import Live

    try:
        with Live(status_table(*snapshot()), console=console(), refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                live.update(status_table(*snapshot()))
    except KeyboardInterrupt:
        return 0


def cmd_down(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or is_docker(directory):
        return _docker_down(args, directory)
    if read_manifest_json(directory) is None:
        console().print(f"no testnet in {directory}")
        if args.purge and directory.exists():
            raise TestnetError(f"{directory} has no {MANIFEST_NAME}; not deleting it")
        return 0
    manifest = load_manifest(directory)
    # SIGTERM all first, then wait: nodes shut down in parallel rather than one by one.
    was_up = {e.name: node_alive(e) for e in manifest.nodes}
    for entry in manifest.nodes:
        if was_up[entry.name]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry.pid or 0, signal.SIGTERM)
    failed = False
    many = len(manifest.nodes) > PROGRESS_FROM
    outcomes: Counter[str] = Counter()
    for entry in manifest.nodes:
        outcome = stop_node(entry, args.timeout, was_up[entry.name])
        if entry.pid and (node_alive(entry) or process_group(entry.pid)):
            failed = True
            outcome = "STILL RUNNING"
        if not many or outcome == "STILL RUNNING":
            console().print(f"{entry.name}: {outcome}")
        outcomes[outcome] += 1
        if not failed:
            entry.pid = None
    if many:
        console().print(", ".join(f"{n} {outcome}" for outcome, n in outcomes.items()))
    if manifest.launcher == "fork" or forkserver.server_pid(directory):
        console().print(f"fork server: {forkserver.stop_server(directory)}")
    if args.purge:
        if failed:
            raise TestnetError(f"not deleting {directory}: some nodes are still running")
        shutil.rmtree(directory)
        console().print(f"deleted {directory}")
    else:
        manifest.save()
    return 1 if failed else 0


def cmd_logs(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if is_docker(directory):
        docker_do(directory, args,
                  lambda net: net.logs(args.node, lines=args.lines or 0, follow=args.follow))
        return 0
    manifest = _local_manifest(args, "logs")
    entry = manifest.node(args.node)
    path = Path(entry.log)
    if not path.exists():
        raise TestnetError(f"no log yet at {path}")
    with open(path, errors="replace") as fh:
        lines = fh.readlines()
        start = 0 if args.lines is None or args.lines <= 0 else max(0, len(lines) - args.lines)
        sys.stdout.writelines(lines[start:])
        sys.stdout.flush()
        if not args.follow:
            return 0
        try:
            while True:
                line = fh.readline()
                if line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0


def cmd_partition(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or is_docker(directory):
        groups = [split_names(g) for g in args.groups]
        docker_do(directory, args, lambda net: net.partition(groups))
        return 0
    manifest = load_manifest(directory)
    groups = parse_groups(manifest, args.groups)
    if manifest.partition:
        clear_bans(manifest)
    manifest.partition = groups
    manifest.save()
    apply_partition(manifest, manifest.nodes)
    console().print("partitioned: " + " | ".join(",".join(g) for g in groups))
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or is_docker(directory):
        docker_do(directory, args, lambda net: net.heal())
        if args.resolve:
            _report_resolved(docker_do(directory, args, lambda net: resolve_splits({
                c.node: (lambda method, *params, n=c.node: net.rpc(n, method, *params))
                for c in net.containers() if c.running})))
        return 0
    manifest = load_manifest(directory)
    clear_bans(manifest)
    manifest.partition = None
    manifest.save()
    console().print("healed: bans lifted; nodes redial their connect lists")
    if args.wait:
        wait_connected(manifest, args.timeout)
        console().print("all nodes reconnected to their neighbours")
    if args.resolve:
        _report_resolved(resolve_finality_splits(manifest))
    return 0


def _report_resolved(actions: list[str]) -> None:
    for line in actions:
        console().print("resolved: " + line)
    if not actions:
        console().print("no chain split left by a refused reorganisation")


def cmd_mine(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if is_docker(directory):
        def mine(net: Any) -> Any:
            address = net.rpc(args.node, "getnewaddress")
            return net.rpc(args.node, "generatetoaddress", args.blocks, address, timeout=600)

        for block_hash in docker_do(directory, args, mine):
            print(block_hash)
        return 0
    manifest = _local_manifest(args, "mine")
    entry = manifest.node(args.node)
    address = call(entry, "getnewaddress")
    hashes = call(entry, "generatetoaddress", args.blocks, address, timeout=600)
    for block_hash in hashes:
        print(block_hash)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if is_docker(directory):
        def send(net: Any) -> Any:
            address = net.rpc(args.recipient, "getnewaddress")
            return net.rpc(args.sender, "sendtoaddress", address, args.amount)

        print(docker_do(directory, args, send))
        return 0
    manifest = _local_manifest(args, "send")
    payer, payee = manifest.node(args.sender), manifest.node(args.recipient)
    address = call(payee, "getnewaddress")
    print(call(payer, "sendtoaddress", address, args.amount))
    return 0


# --------------------------------------------------------------------------- docker
# `--docker` hands every action to lab/testnet/docker.py (compose does the process work).
# `up --docker` leaves a small marker manifest (mode "docker") in DIR, so later commands and
# `--node NAME` find the compose project without being told `--docker` again.


def _docker_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a compose ("docker") or swarm testnet in `directory`, else None."""
    data = read_manifest_json(directory)
    return data if data and data.get("mode") in ("docker", "swarm") else None


def is_docker(directory: Path) -> bool:
    """True when `directory` holds a Docker testnet, compose or swarm."""
    return _docker_marker(directory) is not None


def is_swarm(directory: Path) -> bool:
    marker = _docker_marker(directory)
    return marker is not None and marker.get("mode") == "swarm"


def _compose_location(args: argparse.Namespace | None, directory: Path) -> tuple[Path, Path]:
    marker = _docker_marker(directory)
    given = getattr(args, "compose_file", None) if args is not None else None
    if given:
        compose = Path(given).resolve()
    elif marker:
        compose = Path(marker["compose_file"])
    else:
        candidates = [Path.cwd() / "docker-compose.yml",
                      Path(__file__).resolve().parents[2] / "docker-compose.yml"]
        compose = next((c for c in candidates if c.exists()), candidates[0])
    return compose.parent, compose


def compose_testnet(directory: Path) -> Any:
    """The `DockerTestnet` of the compose network that `directory` names (its compose file),
    else of ./docker-compose.yml or the repository's."""
    from lab.testnet import docker

    if is_swarm(directory):
        return _swarm_testnet(directory)
    project_dir, compose = _compose_location(None, directory)
    return docker.DockerTestnet(project_dir, compose)


def _swarm_testnet(directory: Path, stack: str | None = None) -> Any:
    from lab.testnet import swarm

    marker = _docker_marker(directory) or {}
    return swarm.SwarmTestnet(directory, stack or str(marker.get("stack")),
                              log=lambda m: print(m, file=sys.stderr))


def docker_do(directory: Path, args: argparse.Namespace | None,
              action: Callable[[Any], Any]) -> Any:
    """Runs `action(DockerTestnet)`, turning the docker module's errors into TestnetError."""
    try:
        from lab.testnet import docker
    except ImportError as exc:
        raise TestnetError(f"Docker mode is unavailable in this installation ({exc})") from None
    if is_swarm(directory):
        net = _swarm_testnet(directory)
    else:
        project_dir, compose = _compose_location(args, directory)
        net = docker.DockerTestnet(project_dir, compose,
                                   log=lambda m: print(m, file=sys.stderr))
    try:
        return action(net)
    except (docker.DockerError, *docker.RPC_FAILURES, ValueError) as exc:
        raise TestnetError(f"docker: {docker.describe(exc)}") from None


def _docker_up(args: argparse.Namespace, directory: Path) -> int:
    existing = read_manifest_json(directory)
    if existing is not None and existing.get("mode") != "docker":
        raise TestnetError(f"{directory} holds a process testnet; `powlab testnet down --dir "
                           f"{directory}` it first, or use another --dir")
    ignored = [flag for flag, value in (
        ("--nodes", args.nodes), ("--miners", args.miners), ("--hashrates", args.hashrates),
        ("--topology", args.topology), ("--miner-nodes", args.miner_nodes),
        ("--finality-depth", args.finality_depth), ("--subnet", args.subnet),
    ) if value is not None]
    if ignored:
        console().print(f"[yellow]--docker: the compose file defines the nodes; ignoring "
                        f"{', '.join(ignored)}")
    project_dir, compose = _compose_location(args, directory)
    # Written first, so that `down` finds the project even if start-up fails. (No password
    # is kept here: each node's is its own cookie, read with `docker exec` when needed.)
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"version": MANIFEST_VERSION, "mode": "docker", "project_dir": str(project_dir),
              "compose_file": str(compose), "created": time.time()}
    (directory / MANIFEST_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    docker_do(directory, args, lambda net: net.up(wait=args.timeout))
    rows = docker_do(directory, args, lambda net: net.status())
    console().print(status_table(f"powlab docker testnet ({compose})", None, rows))
    return 0


def _swarm_up(args: argparse.Namespace, directory: Path) -> int:
    """`up --swarm`: the testnet as a stack (lab/testnet/swarm.py); DIR keeps the stack file,
    the nodes' passwords and a marker manifest (mode "swarm")."""
    import secrets as secrets_module

    from lab.testnet import swarm

    existing = read_manifest_json(directory)
    if existing is not None and existing.get("mode") != "swarm":
        kind = existing.get("mode") or "processes"
        raise TestnetError(f"{directory} holds another testnet ({kind}); `powlab testnet "
                           f"down --dir {directory}` it first, or use another --dir")
    ignored = [flag for flag, value in (
        ("--topology", args.topology), ("--miner-nodes", args.miner_nodes),
        ("--finality-depth", args.finality_depth), ("--subnet", args.subnet),
    ) if value is not None]
    if ignored:
        console().print(f"[yellow]--swarm: ignoring {', '.join(ignored)}")
    if existing is not None:
        stack = str(existing["stack"])
        nodes: list[Any] = []
        _refuse_other_swarm_layout(args, directory, existing)
    else:
        stack = args.stack or f"powlab{secrets_module.token_hex(3)}"
        miners = args.miners if args.miners is not None else 2
        count = args.nodes if args.nodes is not None else miners + 3
        shares = parse_shares(args.hashrates, miners + 1) if args.hashrates else None
        try:
            nodes = swarm.layout(count, miners, shares, args.block_time or DEFAULT_BLOCK_TIME,
                                 swarm.free_ports(count, args.swarm_rpc_port))
            swarm.apply_constraints(nodes, args.constraint)
        except ValueError as exc:
            raise TestnetError(str(exc)) from None
    try:
        swarm.ensure_swarm(args.swarm_init, lambda m: print(m, file=sys.stderr))
    except swarm.DockerError as exc:
        raise TestnetError(f"swarm: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"version": MANIFEST_VERSION, "mode": "swarm", "stack": stack,
              "created": time.time()}
    (directory / MANIFEST_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    docker_do(directory, args, lambda net: net.deploy(nodes, args.image or DEFAULT_IMAGE,
                                                      wait=args.timeout))
    rows = docker_do(directory, args, lambda net: net.status())
    console().print(status_table(f"powlab swarm testnet (stack {stack})", None, rows))
    return 0


def _refuse_other_swarm_layout(args: argparse.Namespace, directory: Path,
                               marker: dict[str, Any]) -> None:
    """`up --swarm` on a directory whose stack exists: options that would change its layout
    are refused (they used to be ignored silently)."""
    from lab.testnet import swarm

    state = swarm.SwarmTestnet(directory, str(marker["stack"]))._state()
    try:
        miners = args.miners if args.miners is not None else sum(
            1 for n in state.get("nodes") or [] if n.get("role") == "miner")
        shares = parse_shares(args.hashrates, miners + 1) if args.hashrates else None
        differences = swarm.layout_differences(
            state, nodes=args.nodes, miners=args.miners, shares=shares,
            block_time=args.block_time, image=args.image, constraints=args.constraint)
    except ValueError as exc:
        raise TestnetError(str(exc)) from None
    if args.stack and args.stack != marker["stack"]:
        differences.insert(0, f"--stack {args.stack} (it is {marker['stack']})")
    if differences:
        raise TestnetError(
            f"{directory} holds swarm stack {marker['stack']} with another layout: "
            + "; ".join(differences) + f". Run `powlab testnet up --swarm --dir {directory}` "
            f"without them to start it as it is, or `powlab testnet down --purge --dir "
            f"{directory}` first, or use another --dir")


def _docker_down(args: argparse.Namespace, directory: Path) -> int:
    docker_do(directory, args, lambda net: net.down(args.purge))
    with contextlib.suppress(FileNotFoundError):
        (directory / MANIFEST_NAME).unlink()
    if args.purge:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if nothing else lives there
    return 0


def testnet_endpoint(directory: str | None, name: str) -> NodeEndpoint:
    """`--node NAME [--dir DIR]`: the node's RPC URL and credentials, from the manifest."""
    path = resolve_dir(directory)
    if is_docker(path):
        url, auth = docker_do(path, None, lambda net: net.endpoint(name))
        return NodeEndpoint(url, (auth[0], auth[1]) if auth else None)
    manifest = load_manifest(path)
    return endpoint(manifest.node(name))


# --------------------------------------------------------------------------- argparse


def _dir_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "dir", None)


def _local_manifest(args: argparse.Namespace, command: str) -> Manifest:
    """The manifest of a local (process) testnet; a Docker one gets a clear refusal."""
    if is_docker(resolve_dir(_dir_arg(args))):
        tool = "docker-compose logs" if command == "logs" else "powlab rpc --rpc URL …"
        raise TestnetError(
            f"`testnet {command}` works on local testnets; on the Docker one use `{tool}`"
        )
    return load_manifest(_dir_arg(args))


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS so `powlab testnet --dir X status` and `powlab testnet status --dir X` both
    # work: the inner parser must not overwrite the outer value with its default.
    parser.add_argument("--dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"where the testnet lives (default {DEFAULT_DIR}, "
                             f"env {DIR_ENV_VAR})")


def add_testnet_parser(sub: Any) -> Callable[..., argparse.ArgumentParser]:
    """The `testnet` subcommands; returns the helper that adds one more (the dashboard's,
    lab/dashboard/cli.py, which builds on this module and so is added from lab/cli.py)."""
    testnet = sub.add_parser(
        "testnet", help="a local multi-node network: up, status, down, partition, heal, …"
    )
    add_dir_argument(testnet)
    tsub = testnet.add_subparsers(dest="testnet_command", required=True, metavar="ACTION")

    def action(name: str, text: str, func: Callable[[argparse.Namespace], int],
               docker: bool = False) -> argparse.ArgumentParser:
        p = tsub.add_parser(name, help=text, description=text)
        add_dir_argument(p)
        if docker:
            p.add_argument("--docker", action="store_true",
                           help="the testnet runs under docker compose (lab/testnet/docker.py)")
            p.add_argument("--compose-file", metavar="FILE",
                           help="with --docker: the compose file (default ./docker-compose.yml, "
                                "else the repository's)")
        p.set_defaults(func=lambda a, f=func: run(f, a), docker=False)
        return p

    up = action("up", "start (or resume) the testnet; idempotent", cmd_up, docker=True)
    up.add_argument("--swarm", action="store_true",
                    help="deploy the testnet as a Docker Swarm stack (lab/testnet/swarm.py)")
    up.add_argument("--swarm-init", action="store_true",
                    help="with --swarm: make this engine a single-node swarm if it is in none")
    up.add_argument("--stack", help="with --swarm: the stack's name (default powlab + random)")
    up.add_argument("--image",
                    help=f"with --swarm: the node image, present on every engine "
                         f"(default {DEFAULT_IMAGE})")
    up.add_argument("--swarm-rpc-port", type=int, default=18601, metavar="PORT",
                    help="with --swarm: first host port to publish the nodes' RPC on")
    up.add_argument("--constraint", action="append", default=[], metavar="NODE:EXPR",
                    help="with --swarm: a placement constraint for NODE (* for all), e.g. "
                         "miner1:node.hostname==host-a; repeatable")
    up.add_argument("--nodes", type=int, help="number of nodes (default 4)")
    up.add_argument("--miners", type=int, help="the first M nodes mine (default 2)")
    up.add_argument("--miner-nodes", metavar="NAMES",
                    help="mine on these nodes instead, e.g. n1,n5 (overrides --miners)")
    up.add_argument("--hashrates", metavar="SHARES",
                    help="each miner's share of the hash rate, e.g. 0.5,0.3,0.2 "
                         "(default: equal)")
    # No defaults here: on a re-run, only options actually given are compared with the
    # existing layout.
    up.add_argument("--topology", choices=TOPOLOGIES, help="default line")
    up.add_argument("--degree", type=int, default=DEFAULT_DEGREE, metavar="D",
                    help="with --topology random: links per node, about (default 8; each "
                         "node dials D/2)")
    up.add_argument("--seed", type=int, metavar="N",
                    help="with --topology random: the graph's seed (default random; kept in "
                         "the manifest)")
    up.add_argument("--launcher", choices=("auto", *LAUNCHERS), default="auto",
                    help="fork: nodes forked by a fork server (python -m node.forkserver) "
                         "that shares the daemon's imported code; exec: one new python per "
                         f"node; auto (default): fork from {FORK_FROM} nodes on")
    up.add_argument("--network", choices=NETWORKS, help="default regtest")
    up.add_argument("--block-time", type=float, metavar="S",
                    help=f"target seconds between blocks; sets the miners' total hash rate "
                         f"(default {DEFAULT_BLOCK_TIME:g})")
    up.add_argument("--finality-depth", type=int, metavar="D",
                    help="confirmations after which a block counts as final (node default)")
    up.add_argument("--subnet", metavar="A.B.C",
                    help=f"node K listens on A.B.C.(K+1); loopback only, 127.B.C "
                         f"(default {DEFAULT_SUBNET})")
    up.add_argument("--p2p-port", type=int, default=DEFAULT_P2P_PORT)
    up.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT)
    up.add_argument("--node-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a `powlab node` option for every node, e.g. double_spend_alerts=1 "
                    "or listening_period=5; repeatable")
    up.add_argument("--double-spend-alerts", action="store_true",
                    help="every node relays and acts on double-spend proofs")
    up.add_argument("--enforce-finality", action="store_true",
                    help="every node refuses reorganisations deeper than the finality depth")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds to wait for start-up, connections and funding")
    up.add_argument("--no-hints", dest="hints", action="store_false",
                    help="end without the list of next commands (scripts/run prints its own)")

    status = action("status", "one row per node: height, tip, peers, mempool, hash rate",
                    cmd_status, docker=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")

    down = action("down", "stop every node (SIGTERM, then SIGKILL)", cmd_down, docker=True)
    down.add_argument("--purge", action="store_true", help="also delete the testnet directory")
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT,
                      help="seconds to wait for a clean exit before SIGKILL")

    logs = action("logs", "print (or follow) a node's log", cmd_logs)
    logs.add_argument("node", metavar="NODE")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=100,
                      help="last N lines (0: all; default 100)")

    part = action("partition", "split the network: every node bans the other groups' hosts",
                  cmd_partition, docker=True)
    part.add_argument("groups", nargs="+", metavar="GROUP", help="comma-separated node names")

    heal = action("heal", "lift the partition (clearbanned everywhere)", cmd_heal, docker=True)
    heal.add_argument("--no-wait", dest="wait", action="store_false",
                      help="return without waiting for the nodes to reconnect")
    heal.add_argument("--timeout", type=float, default=60.0)
    heal.add_argument("--resolve", action="store_true",
                      help="also end chain splits left by reorganisations refused beyond "
                           "finality: on each node not on the most-work tip, invalidateblock "
                           "its own first block after the fork, reconsiderblock the heavier tip")

    mine = action("mine", "mine N blocks on NODE now (generatetoaddress)", cmd_mine)
    mine.add_argument("node", metavar="NODE")
    mine.add_argument("blocks", type=int, metavar="N")

    send = action("send", "pay AMOUNT from FROM's wallet to a new address of TO", cmd_send)
    send.add_argument("sender", metavar="FROM")
    send.add_argument("recipient", metavar="TO")
    send.add_argument("amount", type=int, metavar="AMOUNT")

    return action


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs one action: testnet and RPC failures become messages, not tracebacks."""
    return run_reporting_failures("testnet", lambda: func(args))
