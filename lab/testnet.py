"""`powlab testnet`: a local multi-node network of real `powlab node` processes on loopback.

Every node gets its own loopback address (127.0.0.2, 127.0.0.3, …) with the same P2P and RPC
ports, so a ban or a partition can target one node by host, exactly as it would across
machines. The testnet lives in one directory (default ``./testnet``):

    DIR/testnet.json     the manifest: layout, roles, rates, pids, the current partition
    DIR/nK/              node K's data directory (chain, wallet, cookie, rpc.url)
    DIR/nK/powlab.toml   node K's configuration (``powlab node --config`` reads it)
    DIR/nK.log           node K's log (JSON lines)

The manifest is the only state this module keeps; every command re-reads it, so commands can
be run from different shells and `up` can be repeated safely.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import waiting
from lab.client import (
    CookieError,
    EndpointError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    datadir_endpoint,
    run_reporting_failures,
)

MANIFEST_NAME = "testnet.json"
MANIFEST_VERSION = 1
DEFAULT_DIR = "./testnet"
DIR_ENV_VAR = "POWLAB_TESTNET_DIR"
TOPOLOGIES = ("line", "ring", "mesh", "star")
NETWORKS = ("regtest", "testnet")
DEFAULT_SUBNET = "127.0.0"
DEFAULT_P2P_PORT = 18444
DEFAULT_RPC_PORT = 18443
FUND_BLOCKS_PER_NODE = 2
# A partition must outlast any experiment; `heal` lifts it explicitly.
PARTITION_BAN_SECONDS = 10 * 365 * 24 * 3600
STOP_TIMEOUT = 20.0
# Rich is slow to import; only commands that draw tables pay for it.
_console: Any = None

# Popen objects of nodes this process started: polling them reaps exited children, so a
# long-lived caller (a test run) never mistakes a zombie for a running node.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class TestnetError(EndpointError):
    """The testnet directory, a node name or a node is not in the state a command needs."""


# --------------------------------------------------------------------------- manifest


@dataclass
class NodeEntry:
    name: str
    role: str
    host: str
    p2p: str
    rpc: str
    datadir: str
    config: str
    log: str
    connect: list[str] = field(default_factory=list)
    hashrate_share: float = 0.0
    mining_rate: float | None = None  # hashes per second given to setmining
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.rpc}/"

    @property
    def is_miner(self) -> bool:
        return self.hashrate_share > 0


@dataclass
class Manifest:
    directory: Path
    network: str
    block_time: float
    topology: str
    finality_depth: int | None
    nodes: list[NodeEntry]
    funded: bool = False
    partition: list[list[str]] | None = None
    created: float = field(default_factory=time.time)
    mode: str = "process"
    # `powlab node` options for every node, as KEY=VALUE text (validated by node.config).
    node_options: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        names = ", ".join(e.name for e in self.nodes)
        raise TestnetError(f"no node {name!r} in the testnet at {self.directory} (nodes: {names})")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "mode": self.mode,
            "network": self.network,
            "block_time": self.block_time,
            "topology": self.topology,
            "finality_depth": self.finality_depth,
            "funded": self.funded,
            "partition": self.partition,
            "created": self.created,
            "node_options": self.node_options,
            "nodes": [asdict(e) for e in self.nodes],
        }

    def save(self) -> None:
        from node.fsutil import write_atomic

        text = json.dumps(self.to_json(), indent=2) + "\n"
        write_atomic(self.path, text.encode(), 0o644)


def resolve_dir(directory: str | os.PathLike[str] | None) -> Path:
    raw = directory or os.environ.get(DIR_ENV_VAR) or DEFAULT_DIR
    return Path(os.path.expanduser(os.fspath(raw))).resolve()


def read_manifest_json(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TestnetError(f"cannot read {directory / MANIFEST_NAME}: {exc}") from None
    if not isinstance(data, dict):
        raise TestnetError(f"{directory / MANIFEST_NAME} is not a testnet manifest")
    return data


def load_manifest(directory: str | os.PathLike[str] | None) -> Manifest:
    path = resolve_dir(directory)
    data = read_manifest_json(path)
    if data is None:
        raise TestnetError(
            f"no testnet in {path} (start one with `powlab testnet up --dir {path}`)"
        )
    try:
        return Manifest(
            directory=path,
            network=data["network"],
            block_time=float(data["block_time"]),
            topology=data["topology"],
            finality_depth=data.get("finality_depth"),
            nodes=[NodeEntry(**n) for n in data["nodes"]],
            funded=bool(data.get("funded")),
            partition=data.get("partition"),
            created=float(data.get("created", 0)),
            mode=data.get("mode", "process"),
            node_options=dict(data.get("node_options") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TestnetError(f"{path / MANIFEST_NAME} is malformed: {exc!r}") from None


def topology_links(count: int, topology: str) -> dict[int, list[int]]:
    """Index -> indices it dials (its `connect` list)."""
    links: dict[int, list[int]] = {k: [] for k in range(count)}
    for k in range(1, count):
        if topology in ("line", "ring"):
            links[k].append(k - 1)
        elif topology == "mesh":
            links[k].extend(range(k))
        elif topology == "star":
            links[k].append(0)
        else:
            raise TestnetError(f"unknown topology {topology!r}; use one of {', '.join(TOPOLOGIES)}")
    # Two nodes already form a ring as a line; a second link between them would be refused
    # ("already connected") and only make noise.
    if topology == "ring" and count > 2:
        links[0].append(count - 1)
    return links


def neighbours(manifest: Manifest) -> dict[str, set[str]]:
    """Undirected adjacency from the connect lists: who should be peered with whom."""
    by_p2p = {e.p2p: e.name for e in manifest.nodes}
    adj: dict[str, set[str]] = {e.name: set() for e in manifest.nodes}
    for entry in manifest.nodes:
        for addr in entry.connect:
            other = by_p2p.get(addr)
            if other is not None:
                adj[entry.name].add(other)
                adj[other].add(entry.name)
    return adj


def parse_shares(text: str | None, miners: int) -> list[float]:
    if not text:
        return [1.0 / miners] * miners
    try:
        shares = [float(piece) for piece in text.split(",") if piece.strip()]
    except ValueError:
        raise TestnetError(f"--hashrates {text!r}: expected numbers like 0.5,0.3,0.2") from None
    if len(shares) != miners:
        raise TestnetError(f"--hashrates gives {len(shares)} shares for {miners} miners")
    if any(s <= 0 for s in shares):
        raise TestnetError("--hashrates: every share must be positive")
    total = sum(shares)
    # Shares are relative weights: 2,1,1 means the same as 0.5,0.25,0.25.
    return [s / total for s in shares]


def new_manifest(
    directory: Path,
    nodes: int,
    miners: int,
    shares: list[float],
    topology: str,
    network: str,
    block_time: float,
    finality_depth: int | None,
    subnet: str = DEFAULT_SUBNET,
    p2p_port: int = DEFAULT_P2P_PORT,
    rpc_port: int = DEFAULT_RPC_PORT,
    miner_names: Sequence[str] | None = None,
) -> Manifest:
    if not 1 <= nodes <= 250:
        raise TestnetError("--nodes must be between 1 and 250 (one loopback address each)")
    names = [f"n{k}" for k in range(1, nodes + 1)]
    if miner_names:
        unknown = [m for m in miner_names if m not in names]
        if unknown:
            raise TestnetError(f"--miner-nodes names unknown nodes: {', '.join(unknown)}")
        mining = list(dict.fromkeys(miner_names))
    else:
        if not 0 <= miners <= nodes:
            raise TestnetError("--miners must be between 0 and --nodes")
        mining = names[:miners]
    if mining and len(shares) != len(mining):
        raise TestnetError(f"--hashrates gives {len(shares)} shares for {len(mining)} miners")
    share_of = dict(zip(mining, shares, strict=False))
    links = topology_links(nodes, topology)
    entries = []
    for k, name in enumerate(names, start=1):
        host = f"{subnet}.{k + 1}"
        datadir = directory / name
        entries.append(NodeEntry(
            name=name,
            role="miner" if name in share_of else "node",
            host=host,
            p2p=f"{host}:{p2p_port}",
            rpc=f"{host}:{rpc_port}",
            datadir=str(datadir),
            config=str(datadir / "powlab.toml"),
            log=str(directory / f"{name}.log"),
            hashrate_share=share_of.get(name, 0.0),
        ))
    for k, entry in enumerate(entries):
        entry.connect = [entries[j].p2p for j in links[k]]
    return Manifest(directory, network, block_time, topology, finality_depth, entries)


def collect_node_options(args: argparse.Namespace) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in args.node_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TestnetError(f"--node-option wants KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    if args.double_spend_alerts:
        options["double_spend_alerts"] = "true"
    if args.enforce_finality:
        options["enforce_finality"] = "true"
    return options


def parse_node_options(options: dict[str, str]) -> dict[str, Any]:
    """Validate KEY=VALUE node options with the node's own config rules; typed values back."""
    from node.config import ConfigError, NodeConfig, load_config

    names = {key.replace("-", "_"): value for key, value in options.items()}
    known = {f.name for f in dataclasses.fields(NodeConfig)} - {"params"}
    unknown = sorted(set(names) - known)
    if unknown:
        raise TestnetError(f"--node-option: unknown option {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known))}")
    reserved = set(names) & {"datadir", "network", "p2p_bind", "rpc_bind", "connect"}
    if reserved:
        raise TestnetError(f"--node-option cannot set {', '.join(sorted(reserved))}: the "
                           "testnet lays those out itself")
    try:
        parsed = load_config({"datadir": "/", **names}, {"HOME": "/"})
    except ConfigError as exc:
        raise TestnetError(f"--node-option: {exc}") from None
    return {name: getattr(parsed, name) for name in names}


def write_node_config(manifest: Manifest, entry: NodeEntry) -> None:
    from node.config import NodeConfig

    mining = manifest.funded and entry.mining_rate is not None
    config = NodeConfig(
        datadir=Path(entry.datadir),
        network=manifest.network,  # type: ignore[arg-type]
        p2p_bind=entry.p2p,
        rpc_bind=entry.rpc,
        connect=tuple(entry.connect),
        # A node without a connect list would otherwise dial every address gossip tells it
        # of (n1 of a line would end up peered with everyone); with one, gossip dialling is off.
        max_outbound=len(entry.connect),
        max_inbound=max(32, len(manifest.nodes)),
        # Written only once funded, so a restarted miner resumes at its rate on its own.
        mine=mining,
        hashrate=entry.mining_rate if mining else None,
        miner_processes=1,  # several nodes share few cores
        finality_depth=manifest.finality_depth,
        log_format="json",
    )
    if manifest.node_options:
        config = dataclasses.replace(config, **parse_node_options(manifest.node_options))
    Path(entry.datadir).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(entry.config).write_text(config.to_toml())


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return text[text.rfind(")") + 2:].split()


def process_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether `pid` is a live (non-zombie) process, and, given `marker`, one whose command
    line contains it: pids are reused, so a stale manifest must not make us signal a stranger."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        if marker is not None:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                return False
            return marker.encode() in cmdline
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_group(pgid: int) -> list[int]:
    """Live members of a process group (a node and its miner workers)."""
    members = []
    proc = Path("/proc")
    if not proc.exists():
        return members
    for child in proc.iterdir():
        if not child.name.isdigit():
            continue
        fields = _proc_stat(int(child.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(child.name))
    return members


def node_alive(entry: NodeEntry) -> bool:
    return process_alive(entry.pid, entry.config)


def spawn_node(manifest: Manifest, entry: NodeEntry) -> int:
    datadir = Path(entry.datadir)
    # After a crash these are stale: waiting for them must mean waiting for the new process.
    for stale in (".cookie", "rpc.url", "p2p.addr"):
        with contextlib.suppress(FileNotFoundError):
            (datadir / stale).unlink()
    # POWLAB_* variables outrank the config file; a stray POWLAB_CONNECT in the user's shell
    # would silently rewire the topology.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(entry.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", entry.config],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=manifest.directory,
            env=env,
            # Own session: no terminal signals (Ctrl-C in the shell that ran `up`), and one
            # process group per node so `down` can also sweep up its miner workers.
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    entry.pid = proc.pid
    return proc.pid


def stop_node(entry: NodeEntry, timeout: float = STOP_TIMEOUT, was_up: bool | None = None) -> str:
    """SIGTERM, wait, then SIGKILL the node's whole process group. Returns what happened.

    `was_up` tells a node the caller already sent SIGTERM to apart from one that was down."""
    pid = entry.pid
    if not pid:
        return "not started"
    outcome = "stopped"
    if was_up is None:
        was_up = node_alive(entry)
    if was_up:
        with contextlib.suppress(ProcessLookupError):
            if node_alive(entry):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while node_alive(entry) and time.monotonic() < deadline:
            time.sleep(0.1)
        if node_alive(entry):
            outcome = "killed"
    else:
        outcome = "was down"
    # The group outlives its leader while any member (a miner worker) does; the pid cannot be
    # reused while the group exists, so signalling the group is safe.
    if process_group(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_group(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if outcome == "stopped":
            outcome = "stopped (leftover workers killed)"
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(1)
    return outcome


def log_tail(entry: NodeEntry, lines: int = 20) -> str:
    try:
        return "\n".join(Path(entry.log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- RPC


def endpoint(entry: NodeEntry) -> NodeEndpoint:
    """The node's URL (as it wrote it, else from the manifest) and its current cookie."""
    return datadir_endpoint(entry.datadir, entry.url)


def call(entry: NodeEntry, method: str, *params: Any, timeout: float = 60) -> Any:
    return endpoint(entry).call(method, *params, timeout=timeout)


def try_call(entry: NodeEntry, method: str, *params: Any, timeout: float = 10) -> Any:
    """Like `call`, but None when the node cannot be reached (it may be restarting)."""
    try:
        return call(entry, method, *params, timeout=timeout)
    except (RPCConnectionError, RPCAuthError, CookieError, OSError):
        return None


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    return waiting.wait_until(predicate, timeout, what, interval, TestnetError)


def wait_ready(entries: Iterable[NodeEntry], timeout: float) -> None:
    pending = list(entries)

    def ready() -> bool:
        for entry in list(pending):
            if not node_alive(entry):
                raise TestnetError(
                    f"{entry.name} exited during start-up; last lines of {entry.log}:\n"
                    f"{log_tail(entry)}"
                )
            if not (Path(entry.datadir) / "rpc.url").exists():
                continue
            if try_call(entry, "getblockcount", timeout=5) is not None:
                pending.remove(entry)
        return not pending

    wait_until(ready, timeout, "the nodes' RPC servers")


def wait_connected(manifest: Manifest, timeout: float) -> None:
    """Every live node has at least as many established peers as it has live neighbours in
    the topology (partitioned neighbours excluded)."""
    adj = neighbours(manifest)
    group_of = _group_index(manifest)
    live = {e.name for e in manifest.nodes if node_alive(e)}

    def expected(name: str) -> int:
        return sum(1 for other in adj[name]
                   if other in live and group_of.get(other) == group_of.get(name))

    def connected() -> bool:
        for entry in manifest.nodes:
            if entry.name not in live:
                continue
            count = try_call(entry, "getconnectioncount")
            if count is None or count < expected(entry.name):
                return False
        return True

    wait_until(connected, timeout, "the nodes to connect to their neighbours")


def wait_converged(entries: Sequence[NodeEntry], timeout: float) -> str:
    """Until every node reports the same best block; returns its hash."""

    def same_tip() -> str | None:
        tips = {try_call(e, "getbestblockhash") for e in entries}
        if len(tips) == 1:
            tip = tips.pop()
            return tip if tip else None
        return None

    return wait_until(same_tip, timeout, f"{', '.join(e.name for e in entries)} to converge")


def hashes_per_block(entry: NodeEntry) -> float:
    """Expected hashes to find a block at the tip's difficulty: 2**256 / (target + 1)."""
    from consensus.pow import bits_to_target

    header = call(entry, "getblockheader", call(entry, "getbestblockhash"))
    target = bits_to_target(int(header["bits"], 16))
    return 2**256 / (target + 1)


def _group_index(manifest: Manifest) -> dict[str, int]:
    if not manifest.partition:
        return {}
    return {name: k for k, group in enumerate(manifest.partition) for name in group}


# --------------------------------------------------------------------------- output


def console() -> Any:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console()
    return _console


def _dir_flag(manifest: Manifest) -> str:
    """`--dir X` when the testnet is not the one commands find by default."""
    return "" if manifest.directory == resolve_dir(None) else f" --dir {manifest.directory}"


def print_nodes(manifest: Manifest, states: dict[str, str] | None = None) -> None:
    from rich.table import Table

    table = Table(title=f"powlab testnet ({manifest.network}, {manifest.topology}, "
                        f"block time {manifest.block_time:g}s) in {manifest.directory}")
    for col in ("node", "role", "state", "RPC", "P2P", "mining H/s"):
        table.add_column(col)
    for entry in manifest.nodes:
        rate = "" if entry.mining_rate is None else (
            f"{entry.mining_rate:.4g} ({entry.hashrate_share:.0%})")
        table.add_row(entry.name, entry.role, (states or {}).get(entry.name, ""), entry.url,
                      entry.p2p, rate)
    console().print(table)
    console().print(
        f"Call a node by name (URL and cookie come from {MANIFEST_NAME}):\n"
        f"  powlab rpc --node {manifest.nodes[-1].name}{_dir_flag(manifest)} getblockchaininfo",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- commands


def _mining_rates(manifest: Manifest, funder: NodeEntry) -> None:
    per_block = hashes_per_block(funder)
    total = per_block / manifest.block_time
    for entry in manifest.nodes:
        entry.mining_rate = entry.hashrate_share * total if entry.is_miner else None


def fund(manifest: Manifest, timeout: float) -> None:
    """A few blocks to each node's own wallet, then enough more that they mature."""
    from consensus.params import network_params

    funder = manifest.nodes[0]
    maturity = network_params(manifest.network).coinbase_maturity
    addresses = {e.name: call(e, "getnewaddress") for e in manifest.nodes}
    console().print(f"funding: {FUND_BLOCKS_PER_NODE} blocks to each node's wallet, then "
                    f"{maturity} more so they mature (mined on {funder.name})")
    for entry in manifest.nodes:
        call(funder, "generatetoaddress", FUND_BLOCKS_PER_NODE, addresses[entry.name],
             timeout=600)
    # The maturing blocks are spread too, so every wallet keeps gaining spendable coins as
    # the chain grows.
    base, extra = divmod(maturity, len(manifest.nodes))
    for k, entry in enumerate(manifest.nodes):
        count = base + (1 if k < extra else 0)
        if count:
            call(funder, "generatetoaddress", count, addresses[entry.name], timeout=600)
    tip = wait_converged(manifest.nodes, timeout)
    console().print(f"all {len(manifest.nodes)} nodes at {tip[:16]}… "
                    f"(height {call(funder, 'getblockcount')})")


def start_miners(manifest: Manifest, entries: Iterable[NodeEntry]) -> None:
    for entry in entries:
        if entry.mining_rate is None:
            continue
        call(entry, "setmining", True, entry.mining_rate)
        write_node_config(manifest, entry)


def cmd_up(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or _docker_manifest(directory):
        return _docker_up(args, directory)
    timeout = args.timeout
    manifest: Manifest
    existing = read_manifest_json(directory)
    if existing is not None:
        manifest = load_manifest(directory)
        _warn_if_layout_differs(args, manifest)
    else:
        if args.nodes is None:
            args.nodes = 4
        miners = args.miners if args.miners is not None else min(2, args.nodes)
        miner_names = _split_names(args.miner_nodes) if args.miner_nodes else None
        shares = parse_shares(args.hashrates, len(miner_names) if miner_names else miners)
        if args.block_time <= 0:
            raise TestnetError("--block-time must be positive")
        directory.mkdir(parents=True, exist_ok=True)
        manifest = new_manifest(
            directory, args.nodes, miners, shares, args.topology or "line",
            args.network or "regtest",
            args.block_time, args.finality_depth, args.subnet, args.p2p_port, args.rpc_port,
            miner_names,
        )
        manifest.node_options = collect_node_options(args)
        parse_node_options(manifest.node_options)  # refuse bad options before starting anything
        for entry in manifest.nodes:
            write_node_config(manifest, entry)
        manifest.save()

    states: dict[str, str] = {}
    started: list[NodeEntry] = []
    for entry in manifest.nodes:
        if node_alive(entry):
            states[entry.name] = "already running"
            continue
        states[entry.name] = "restarted" if entry.pid else "started"
        # Rewritten each start so a resumed testnet runs with this version's settings.
        write_node_config(manifest, entry)
        spawn_node(manifest, entry)
        started.append(entry)
    # Saved before waiting: if start-up fails, `down` must still find these pids.
    manifest.save()
    for entry in manifest.nodes:
        console().print(f"{entry.name}: {states[entry.name]} (pid {entry.pid}, log {entry.log})")

    wait_ready(manifest.nodes, timeout)
    if manifest.partition and started:
        _apply_partition(manifest, started)
    wait_connected(manifest, timeout)
    if not manifest.funded:
        fund(manifest, timeout)
        _mining_rates(manifest, manifest.nodes[0])
        manifest.funded = True
        manifest.save()
        start_miners(manifest, manifest.nodes)
    else:
        start_miners(manifest, started)
    manifest.save()
    print_nodes(manifest, states)
    first = manifest.nodes[-1].name if len(manifest.nodes) > 1 else manifest.nodes[0].name
    flag = _dir_flag(manifest)
    console().print(
        f"\n  powlab testnet status{flag}\n"
        f"  powlab testnet send{flag} {manifest.nodes[0].name} {first} 100000\n"
        f"  powlab watch TXID --node {first}{flag}\n"
        f"  powlab testnet down{flag}",
        soft_wrap=True,
    )
    return 0


def _warn_if_layout_differs(args: argparse.Namespace, manifest: Manifest) -> None:
    given = {
        "--nodes": (args.nodes, len(manifest.nodes)),
        "--topology": (args.topology, manifest.topology),
        "--network": (args.network, manifest.network),
    }
    differing = [flag for flag, (want, have) in given.items()
                 if want is not None and want != have]
    if differing:
        console().print(
            f"[yellow]a testnet already exists in {manifest.directory}; keeping its layout "
            f"(ignoring {', '.join(differing)}). `powlab testnet down --purge` to start over."
        )


def _split_names(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",") if piece.strip()]


def node_status(manifest: Manifest, entry: NodeEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": entry.name, "role": entry.role, "rpc": entry.url, "height": None,
        "bestblockhash": None, "peers": None, "mempool": None, "hashrate": None,
        "up": False, "pid": entry.pid, "p2p": entry.p2p, "datadir": entry.datadir,
        "log": entry.log, "mining": None, "hashrate_limit": None,
        "group": _group_index(manifest).get(entry.name),
    }
    if not node_alive(entry):
        return row
    row["up"] = True
    try:
        info = call(entry, "getblockchaininfo", timeout=10)
        row["height"] = info["blocks"]
        row["bestblockhash"] = info["bestblockhash"]
        row["peers"] = call(entry, "getconnectioncount", timeout=10)
        row["mempool"] = call(entry, "getmempoolinfo", timeout=10)["size"]
        mining = call(entry, "getmininginfo", timeout=10)
        row["hashrate"] = mining.get("hashrate")
        row["hashrate_limit"] = mining.get("hashrate_limit")
        row["mining"] = mining.get("mining")
    except (RPCConnectionError, RPCAuthError, RPCError, CookieError, OSError) as exc:
        row["error"] = str(exc)
    return row


def collect_status(manifest: Manifest) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(8, len(manifest.nodes))) as pool:
        return list(pool.map(lambda e: node_status(manifest, e), manifest.nodes))


def status_table(title: str, partition: list[list[str]] | None,
                 rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    if partition:
        title += " — PARTITIONED: " + " | ".join(",".join(g) for g in partition)
    table = Table(title=title)
    for col in ("node", "role", "up", "height", "best hash", "peers", "mempool", "hash rate",
                "RPC"):
        table.add_column(col, justify="right" if col in ("height", "peers", "mempool") else "left")
    tips = [r["bestblockhash"] for r in rows if r["bestblockhash"]]
    common = max(set(tips), key=tips.count) if tips else None
    for r in rows:
        best = r["bestblockhash"] or ""
        best_text = best[:12]
        if best and best != common:
            best_text = f"[yellow]{best_text}"  # not on the majority's tip: a fork or lag
        if r.get("hashrate") is None:
            rate = "-"
        elif r.get("mining", True):
            limit = r.get("hashrate_limit")
            rate = f"{r['hashrate']:.3g}" + (f" / {limit:.3g}" if limit else "")
        else:
            rate = "off"
        up = "[green]up" if r["up"] and "error" not in r else (
            "[yellow]no rpc" if r["up"] else "[red]down")
        table.add_row(
            r["node"], r["role"], up, _cell(r["height"]), best_text, _cell(r["peers"]),
            _cell(r["mempool"]), rate, _cell(r["rpc"]),
        )
    return table


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def cmd_status(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    docker = args.docker or _docker_manifest(directory)
    if not docker:
        load_manifest(directory)  # fail early, with the hint, when there is no testnet

    def snapshot() -> tuple[str, list[list[str]] | None, list[dict[str, Any]]]:
        if docker:
            rows = _docker_do(directory, args, lambda net: net.status())
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
    if args.docker or _docker_manifest(directory):
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
    for entry in manifest.nodes:
        outcome = stop_node(entry, args.timeout, was_up[entry.name])
        if entry.pid and (node_alive(entry) or process_group(entry.pid)):
            failed = True
            outcome = "STILL RUNNING"
        console().print(f"{entry.name}: {outcome}")
        if not failed:
            entry.pid = None
    if args.purge:
        if failed:
            raise TestnetError(f"not deleting {directory}: some nodes are still running")
        shutil.rmtree(directory)
        console().print(f"deleted {directory}")
    else:
        manifest.save()
    return 1 if failed else 0


def cmd_logs(args: argparse.Namespace) -> int:
    manifest = load_manifest(_dir_arg(args))
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


def parse_groups(manifest: Manifest, groups: Sequence[str]) -> list[list[str]]:
    """`n1,n2 n3,n4` -> [[n1, n2], [n3, n4]]; nodes named nowhere form one more group."""
    parsed = [_split_names(g) for g in groups]
    seen: set[str] = set()
    for group in parsed:
        for name in group:
            manifest.node(name)
            if name in seen:
                raise TestnetError(f"{name} is in more than one group")
            seen.add(name)
    rest = [e.name for e in manifest.nodes if e.name not in seen]
    if rest:
        parsed.append(rest)
    parsed = [g for g in parsed if g]
    if len(parsed) < 2:
        raise TestnetError("a partition needs at least two groups, e.g. `partition n1,n2 n3,n4`")
    return parsed


def _apply_partition(manifest: Manifest, entries: Iterable[NodeEntry]) -> None:
    group_of = _group_index(manifest)
    for entry in entries:
        if not node_alive(entry):
            console().print(f"[yellow]{entry.name} is down; it gets its bans when `up` "
                            "restarts it")
            continue
        for other in manifest.nodes:
            if group_of.get(other.name) != group_of.get(entry.name):
                call(entry, "setban", other.host, "add", PARTITION_BAN_SECONDS)


def cmd_partition(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or _docker_manifest(directory):
        groups = [_split_names(g) for g in args.groups]
        _docker_do(directory, args, lambda net: net.partition(groups))
        return 0
    manifest = load_manifest(directory)
    groups = parse_groups(manifest, args.groups)
    if manifest.partition:
        _clear_bans(manifest)
    manifest.partition = groups
    manifest.save()
    _apply_partition(manifest, manifest.nodes)
    console().print("partitioned: " + " | ".join(",".join(g) for g in groups))
    return 0


def _clear_bans(manifest: Manifest) -> None:
    for entry in manifest.nodes:
        if node_alive(entry):
            call(entry, "clearbanned")


def cmd_heal(args: argparse.Namespace) -> int:
    directory = resolve_dir(_dir_arg(args))
    if args.docker or _docker_manifest(directory):
        _docker_do(directory, args, lambda net: net.heal())
        return 0
    manifest = load_manifest(directory)
    _clear_bans(manifest)
    manifest.partition = None
    manifest.save()
    console().print("healed: bans lifted; nodes redial their connect lists")
    if args.wait:
        wait_connected(manifest, args.timeout)
        console().print("all nodes reconnected to their neighbours")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    manifest = load_manifest(_dir_arg(args))
    entry = manifest.node(args.node)
    address = call(entry, "getnewaddress")
    hashes = call(entry, "generatetoaddress", args.blocks, address, timeout=600)
    for block_hash in hashes:
        print(block_hash)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    manifest = load_manifest(_dir_arg(args))
    payer, payee = manifest.node(args.sender), manifest.node(args.recipient)
    address = call(payee, "getnewaddress")
    print(call(payer, "sendtoaddress", address, args.amount))
    return 0


# --------------------------------------------------------------------------- docker
# `--docker` hands every action to node/testnet_docker.py (compose does the process work).
# `up --docker` leaves a small marker manifest (mode "docker") in DIR, so later commands and
# `--node NAME` find the compose project without being told `--docker` again.


def _docker_marker(directory: Path) -> dict[str, Any] | None:
    data = read_manifest_json(directory)
    return data if data and data.get("mode") == "docker" else None


def _docker_manifest(directory: Path) -> bool:
    return _docker_marker(directory) is not None


def _compose_location(args: argparse.Namespace | None, directory: Path) -> tuple[Path, Path]:
    marker = _docker_marker(directory)
    given = getattr(args, "compose_file", None) if args is not None else None
    if given:
        compose = Path(given).resolve()
    elif marker:
        compose = Path(marker["compose_file"])
    else:
        candidates = [Path.cwd() / "docker-compose.yml",
                      Path(__file__).resolve().parent.parent / "docker-compose.yml"]
        compose = next((c for c in candidates if c.exists()), candidates[0])
    return compose.parent, compose


def _docker(directory: Path, args: argparse.Namespace | None = None) -> Any:
    try:
        from lab.testnet_docker import DockerTestnet
    except ImportError as exc:
        raise TestnetError(f"Docker mode is unavailable in this installation ({exc})") from None
    project_dir, compose = _compose_location(args, directory)
    return DockerTestnet(project_dir, compose, log=lambda m: print(m, file=sys.stderr))


def _docker_do(directory: Path, args: argparse.Namespace | None,
               action: Callable[[Any], Any]) -> Any:
    """Runs `action(DockerTestnet)`, turning the docker module's errors into TestnetError."""
    net = _docker(directory, args)
    from lab import testnet_docker as td

    try:
        return action(net)
    except (td.DockerError, *td.RPC_FAILURES, ValueError) as exc:
        raise TestnetError(f"docker: {td.describe(exc)}") from None


def _docker_up(args: argparse.Namespace, directory: Path) -> int:
    existing = read_manifest_json(directory)
    if existing is not None and existing.get("mode") != "docker":
        raise TestnetError(f"{directory} holds a process testnet; `powlab testnet down --dir "
                           f"{directory}` it first, or use another --dir")
    ignored = [flag for flag, value in (
        ("--nodes", args.nodes), ("--miners", args.miners), ("--hashrates", args.hashrates),
        ("--topology", args.topology), ("--miner-nodes", args.miner_nodes),
        ("--finality-depth", args.finality_depth),
    ) if value is not None]
    if ignored:
        console().print(f"[yellow]--docker: the compose file defines the nodes; ignoring "
                        f"{', '.join(ignored)}")
    project_dir, compose = _compose_location(args, directory)
    _docker_do(directory, args, lambda net: net.up(wait=args.timeout))
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"version": MANIFEST_VERSION, "mode": "docker", "project_dir": str(project_dir),
              "compose_file": str(compose), "created": time.time()}
    (directory / MANIFEST_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    rows = _docker_do(directory, args, lambda net: net.status())
    console().print(status_table(f"powlab docker testnet ({compose})", None, rows))
    return 0


def _docker_down(args: argparse.Namespace, directory: Path) -> int:
    _docker_do(directory, args, lambda net: net.down(args.purge))
    with contextlib.suppress(FileNotFoundError):
        (directory / MANIFEST_NAME).unlink()
    if args.purge:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if nothing else lives there
    return 0


def testnet_endpoint(directory: str | None, name: str) -> NodeEndpoint:
    """`--node NAME [--dir DIR]`: the node's RPC URL and credentials, from the manifest."""
    path = resolve_dir(directory)
    if _docker_manifest(path):
        url, auth = _docker_do(path, None, lambda net: net.endpoint(name))
        return NodeEndpoint(url, (auth[0], auth[1]) if auth else None)
    manifest = load_manifest(path)
    return endpoint(manifest.node(name))


# --------------------------------------------------------------------------- argparse


def _dir_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "dir", None)


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS so `powlab testnet --dir X status` and `powlab testnet status --dir X` both
    # work: the inner parser must not overwrite the outer value with its default.
    parser.add_argument("--dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"where the testnet lives (default {DEFAULT_DIR}, "
                             f"env {DIR_ENV_VAR})")


def add_testnet_parser(sub: Any) -> None:
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
                           help="the testnet runs under docker compose (node/testnet_docker.py)")
            p.add_argument("--compose-file", metavar="FILE",
                           help="with --docker: the compose file (default ./docker-compose.yml, "
                                "else the repository's)")
        p.set_defaults(func=lambda a, f=func: run(f, a), docker=False)
        return p

    up = action("up", "start (or resume) the testnet; idempotent", cmd_up, docker=True)
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
    up.add_argument("--network", choices=NETWORKS, help="default regtest")
    up.add_argument("--block-time", type=float, default=10.0, metavar="S",
                    help="target seconds between blocks; sets the miners' total hash rate")
    up.add_argument("--finality-depth", type=int, metavar="D",
                    help="confirmations after which a block counts as final (node default)")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, metavar="A.B.C",
                    help="node K listens on A.B.C.(K+1) (default 127.0.0)")
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

    mine = action("mine", "mine N blocks on NODE now (generatetoaddress)", cmd_mine)
    mine.add_argument("node", metavar="NODE")
    mine.add_argument("blocks", type=int, metavar="N")

    send = action("send", "pay AMOUNT from FROM's wallet to a new address of TO", cmd_send)
    send.add_argument("sender", metavar="FROM")
    send.add_argument("recipient", metavar="TO")
    send.add_argument("amount", type=int, metavar="AMOUNT")


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs one action: testnet and RPC failures become messages, not tracebacks."""
    return run_reporting_failures("testnet", lambda: func(args))
