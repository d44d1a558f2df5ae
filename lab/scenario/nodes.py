"""Node processes a scenario starts, stops and reconfigures: restarting a testnet node with
other options (`--no-listen`, `--connect`, limits, a seeded address book) and starting extra
nodes beside the testnet (an attacker's sybil identities). Process testnets only.

Every function takes the scenario's `Network`. What they change is remembered per network and
undone by :func:`restore_nodes` (extra nodes stopped, restarted nodes started again from their
own configuration and address book), which a scenario calls in a ``finally``::

    from lab.scenario.nodes import restart_node, restore_nodes, start_nodes

    try:
        sybils = start_nodes(net, 4, connect=[net.attacker])
        restart_node(net, net.victim, no_listen=True, max_outbound=2)
        ...
    finally:
        restore_nodes(net)

A restarted node keeps its data directory (chain, wallet, key, so its node id) and gets a new
RPC cookie; its `Node` in `net.nodes` is pointed at it, so calls go on working. Its options
file is DIR/NODE/powlab.toml.scenario (the testnet's own powlab.toml with the options changed),
a name that contains the original's, so `powlab testnet status` and `down` still recognise the
process. Extra nodes live in DIR/scenario-nodes/NAME on SUBNET.200, SUBNET.201, ... (loopback
only, like the testnet), with the testnet's P2P and RPC ports.
"""

from __future__ import annotations

import contextlib
import json
import tomllib
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.client import datadir_endpoint
from lab.scenario.engine import NetNode, ScenarioError
from lab.testnet.manifest import Manifest, NodeEntry, load_manifest, resolve_dir
from lab.testnet.nodeconfig import node_defaults, parse_node_options, render_toml
from lab.testnet.processes import NodeProcess, NodeProcessError, node_process

EXTRA_DIR = "scenario-nodes"
EXTRA_HOST_BASE = 200  # extra node k binds SUBNET.(200 + k)
MAX_EXTRA = 50
OVERRIDE_SUFFIX = ".scenario"
PEERS_FILE = "peers.json"  # the node's address book (node/daemon.py)
START_TIMEOUT = 60.0


@dataclass
class _State:
    manifest: Manifest
    extra: list[tuple[NetNode, NodeProcess]] = field(default_factory=list)
    restarted: dict[str, bytes | None] = field(default_factory=dict)  # name -> saved peers.json


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def process_manifest(net: Any) -> Manifest:
    """The process testnet `net` runs on (its manifest), or a ScenarioError saying why these
    operations need one: compose networks and bare RPC endpoints have no node processes here.
    The directory is `net.directory` if the Network has one, else the scenario's `--dir`
    (else POWLAB_TESTNET_DIR, else ./testnet); the manifest must list `net`'s nodes at the
    same RPC addresses."""
    state = _STATES.get(net)
    if state is not None:
        return state.manifest
    from lab.testnet.cli import is_docker

    raw = getattr(net, "directory", None) or getattr(net.args, "dir", None)
    directory = resolve_dir(raw)
    if getattr(net.args, "docker", False) or is_docker(directory):
        raise ScenarioError("restarting nodes and starting extra ones works on process "
                            "testnets only (`powlab testnet up`), not on a compose network")
    try:
        manifest = load_manifest(directory)
    except Exception as exc:
        raise ScenarioError(f"restarting nodes needs a process testnet: {exc}") from None
    for name, node in net.nodes.items():
        entry = _entry(manifest, name)
        if _hostport(entry.url) != _hostport(node.endpoint.url):
            raise ScenarioError(f"node {name} is not the testnet at {directory}'s {name} "
                                f"({node.endpoint.url} vs {entry.url}): pass its --dir")
    _STATES[net] = _State(manifest)
    return manifest


def restart_node(net: Any, node: str | NetNode, *, book: Sequence[dict[str, Any]] | None = None,
                 keep_book: bool = True, timeout: float = START_TIMEOUT,
                 **options: Any) -> None:
    """Stop a testnet node (SIGTERM: it saves its address book) and start it again with
    `options` (node options by their config names, e.g. ``no_listen=True``,
    ``connect=["NODEID@HOST:PORT"]``, ``allow_peer=[...]``, ``max_inbound=4``,
    ``max_outbound=2``) over its own configuration; the options of an earlier restart are
    not kept. `book` replaces its address book (records ``{host, port, node_id,
    last_seen}``); ``keep_book=False`` empties it. Returns once it answers RPC."""
    manifest = process_manifest(net)
    state = _STATES[net]
    target = _node(net, node)
    entry = _entry(manifest, target.name)
    peers_path = Path(entry.datadir) / PEERS_FILE
    if target.name not in state.restarted:
        state.restarted[target.name] = _read(peers_path)
    _stop(entry)
    if book is not None:
        peers_path.write_text(json.dumps({"version": 1, "addresses": list(book)}))
    elif not keep_book:
        peers_path.unlink(missing_ok=True)
    values = tomllib.loads(Path(entry.config).read_text())
    values.update(options)
    override = Path(entry.config + OVERRIDE_SUFFIX)
    override.write_text(render_toml(values))
    process = NodeProcess(Path(entry.datadir), config=override, log=Path(entry.log),
                          cwd=manifest.directory, own_session=True)
    _start(manifest, entry, process, target, timeout)


def restore_nodes(net: Any, timeout: float = START_TIMEOUT) -> None:
    """Undo this module's changes to `net`: stop the extra nodes, and start every restarted
    node again from its own configuration with the address book it had. Safe to call twice
    or when nothing was changed."""
    state = _STATES.get(net)
    if state is None:
        return
    errors = []
    for _, process in state.extra:
        with contextlib.suppress(NodeProcessError, OSError):
            process.shut_down()
    state.extra.clear()
    for name, saved in list(state.restarted.items()):
        entry = _entry(state.manifest, name)
        try:
            _stop(entry)
            peers_path = Path(entry.datadir) / PEERS_FILE
            if saved is None:
                peers_path.unlink(missing_ok=True)
            else:
                peers_path.write_bytes(saved)
            Path(entry.config + OVERRIDE_SUFFIX).unlink(missing_ok=True)
            process = node_process(entry, state.manifest.directory)
            process.pid = None
            _start(state.manifest, entry, process, _node(net, name), timeout)
        except (NodeProcessError, ScenarioError, OSError) as exc:
            errors.append(f"{name}: {exc}")
        del state.restarted[name]
    if errors:
        raise ScenarioError("could not restore " + "; ".join(errors))


def start_nodes(net: Any, count: int, *, connect: Iterable[str | NetNode] = (),
                mesh: bool = False, prefix: str = "s", timeout: float = START_TIMEOUT,
                **options: Any) -> list[NetNode]:
    """Start `count` extra nodes (fresh data directories, so fresh node ids), each
    connect-only (`--connect`) to the nodes in `connect` and, with `mesh`, to each other:
    they dial nobody else and, being connect-only, ask nobody for addresses, so their address
    books hold only those they are linked with. `options` override their configuration. They
    are `NetNode`s (``call``, ``try_call``) named PREFIX1, PREFIX2, …, with role "sybil", not
    in `net.nodes`; they are stopped by :func:`restore_nodes`."""
    manifest = process_manifest(net)
    state = _STATES[net]
    first = len(state.extra)
    if first + count > MAX_EXTRA:
        raise ScenarioError(f"at most {MAX_EXTRA} extra nodes")
    targets = [_entry(manifest, _node(net, n).name).p2p for n in connect]
    p2p_port = manifest.nodes[0].p2p.rsplit(":", 1)[1]
    rpc_port = manifest.nodes[0].rpc.rsplit(":", 1)[1]
    hosts = [f"{manifest.subnet}.{EXTRA_HOST_BASE + first + k}" for k in range(count)]
    p2p = [f"{h}:{p2p_port}" for h in hosts]
    base = dict(node_defaults())
    base.pop("params", None)
    base.update(parse_node_options(manifest.node_options))
    started: list[tuple[NetNode, NodeProcess]] = []
    for k, host in enumerate(hosts):
        name = f"{prefix}{first + k + 1}"
        datadir = manifest.directory / EXTRA_DIR / name
        peers = targets + ([a for j, a in enumerate(p2p) if j != k] if mesh else [])
        values = dict(base)
        values.update(datadir=str(datadir), network=manifest.network, p2p_bind=p2p[k],
                      rpc_bind=f"{host}:{rpc_port}", connect=peers,
                      max_outbound=max(1, len(peers)), mine=False, miner_processes=1,
                      finality_depth=manifest.finality_depth, log_format="json")
        values.update(options)
        datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = datadir.parent / f"{name}.toml"
        config.write_text(render_toml(values))
        process = NodeProcess(datadir, config=config, cwd=manifest.directory,
                              own_session=True)
        process.start(wait=False)
        journal = getattr(getattr(net, "switches", None), "journal", None)
        if journal is not None and process.pid:
            # A runner killed outright leaves them running: the next run stops them.
            journal.record("processes", str(process.pid), process.marker)
        started.append((NetNode(name, "sybil", datadir_endpoint(datadir)), process))
        state.extra.append(started[-1])
    for node, process in started:
        try:
            process.wait_ready(timeout)
        except (NodeProcessError, TimeoutError) as exc:
            raise ScenarioError(f"extra node {node.name} did not start: {exc}") from None
        node.endpoint = process.endpoint()
    return [node for node, _ in started]


def extra_nodes(net: Any) -> list[NetNode]:
    """The extra nodes started on `net` and still running."""
    state = _STATES.get(net)
    return [node for node, _ in state.extra] if state else []


def p2p_address(net: Any, node: str | NetNode) -> str:
    """A testnet node's P2P HOST:PORT, as its manifest entry gives it."""
    return _entry(process_manifest(net), _node(net, node).name).p2p


# --------------------------------------------------------------------------- helpers


def _node(net: Any, node: str | NetNode) -> NetNode:
    name = node if isinstance(node, str) else node.name
    found = net.nodes.get(name)
    if found is None:
        raise ScenarioError(f"no node {name!r} in the network")
    return found


def _entry(manifest: Manifest, name: str) -> NodeEntry:
    for entry in manifest.nodes:
        if entry.name == name:
            return entry
    raise ScenarioError(f"no node {name!r} in the testnet at {manifest.directory}")


def _hostport(url: str) -> str:
    return url.split("//", 1)[-1].split("@")[-1].rstrip("/")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _stop(entry: NodeEntry) -> None:
    process = node_process(entry)
    if entry.config and not process.alive():
        # Restarted by us: the command line names the override file.
        process = NodeProcess(Path(entry.datadir), config=Path(entry.config + OVERRIDE_SUFFIX),
                              own_session=True, pid=entry.pid)
    if process.shut_down() == "killed":
        raise ScenarioError(f"{entry.name} did not stop")


def _start(manifest: Manifest, entry: NodeEntry, process: NodeProcess, node: NetNode,
           timeout: float) -> None:
    process.start(wait=False)
    entry.pid = process.pid
    manifest.save()  # `powlab testnet down` must find the new pid whatever happens next
    try:
        process.wait_ready(timeout)
    except (NodeProcessError, TimeoutError) as exc:
        raise ScenarioError(f"{entry.name} did not come back: {exc}") from None
    node.endpoint = datadir_endpoint(entry.datadir, entry.url)
