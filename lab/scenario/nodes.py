"""Node processes a scenario starts, stops and reconfigures: restarting a testnet node with
other options (`--no-listen`, `--connect`, limits, a seeded address book) and starting extra
nodes beside the testnet (an attacker's sybil identities). Process testnets and the compose
network (see "On a compose network" below).

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

On a compose network (`--docker`, or a --dir that `testnet up --docker` made) the same calls
work on containers. A restarted node's container is recreated from the compose file with the
options as POWLAB_* environment variables (an override file; its volume, so its chain, wallet
and node id, is kept; a new book is copied into it before it starts); at the end it is
recreated from the compose file alone. Extra nodes are containers PROJECT-sybil-NAME from the
project's image on the compose network, each with an address of its own, their RPC published
on a free port of 127.0.0.1 and the compose file's RPC credentials; they carry the label
powlab.extra=PROJECT, are not nodes of the project, and are removed with their data at the
end (or by `powlab testnet down`). A P2P address is the container's address on the compose
network, as the other containers dial it.
"""

from __future__ import annotations

import contextlib
import json
import time
import tomllib
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import waiting
from lab.client import NodeEndpoint, datadir_endpoint
from lab.scenario.engine import NetNode, ScenarioError
from lab.testnet.manifest import (
    FIRST_HOST,
    Manifest,
    NodeEntry,
    TestnetError,
    host_of,
    load_manifest,
    resolve_dir,
)
from lab.testnet.nodeconfig import node_defaults, parse_node_options, render_toml
from lab.testnet.processes import NodeProcess, NodeProcessError, node_process, with_launcher

EXTRA_DIR = "scenario-nodes"
EXTRA_HOST_BASE = 200  # extra node k binds SUBNET.(200 + k), or follows a larger testnet's last
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


@dataclass
class _Compose:
    testnet: Any  # lab.testnet.docker.DockerTestnet
    extra: list[tuple[NetNode, str]] = field(default_factory=list)  # node, container name
    restarted: dict[str, bytes | None] = field(default_factory=dict)  # name -> peers.json tar


_COMPOSE: weakref.WeakKeyDictionary[Any, _Compose] = weakref.WeakKeyDictionary()


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
    last_seen}``); ``keep_book=False`` empties it. Returns once it answers RPC. On a compose
    network the node's container is recreated with the options as environment variables."""
    compose = compose_state(net)
    if compose is not None:
        _refuse_on_swarm(compose, "net.restart_node")
        _compose_restart(net, compose, _node(net, node), book, keep_book, timeout, options)
        return
    manifest = process_manifest(net)
    state = _STATES[net]
    target = _node(net, node)
    entry = _entry(manifest, target.name)
    peers_path = Path(entry.datadir) / PEERS_FILE
    if target.name not in state.restarted:
        state.restarted[target.name] = _read(peers_path)
        _journal_restart(net, manifest, target.name, state.restarted[target.name])
    _stop(entry)
    if book is not None:
        peers_path.write_text(json.dumps({"version": 1, "addresses": list(book)}))
    elif not keep_book:
        peers_path.unlink(missing_ok=True)
    values = tomllib.loads(Path(entry.config).read_text())
    values.update(options)
    override = Path(entry.config + OVERRIDE_SUFFIX)
    override.write_text(render_toml(values))
    process = with_launcher(NodeProcess(Path(entry.datadir), config=override,
                                        log=Path(entry.log), cwd=manifest.directory,
                                        own_session=True), manifest)
    _start(manifest, entry, process, target, timeout)


def restore_nodes(net: Any, timeout: float = START_TIMEOUT) -> None:
    """Undo this module's changes to `net`: stop the extra nodes, and start every restarted
    node again from its own configuration with the address book it had. Safe to call twice
    or when nothing was changed."""
    compose = _COMPOSE.get(net)
    if compose is not None:
        _compose_restore(net, compose, timeout)
        return
    state = _STATES.get(net)
    if state is None:
        return
    errors = []
    for _, process in state.extra:
        with contextlib.suppress(NodeProcessError, OSError):
            process.shut_down()
    state.extra.clear()
    for name, saved in list(state.restarted.items()):
        try:
            back_on_own_config(state.manifest, name, saved, timeout)
            _node(net, name).endpoint = datadir_endpoint(_entry(state.manifest, name).datadir,
                                                         _entry(state.manifest, name).url)
        except (NodeProcessError, ScenarioError, OSError) as exc:
            errors.append(f"{name}: {exc}")
        del state.restarted[name]
    if errors:
        raise ScenarioError("could not restore " + "; ".join(errors))


def back_on_own_config(manifest: Manifest, name: str, peers: bytes | None,
                       timeout: float = START_TIMEOUT) -> None:
    """Restarts a process testnet's node from its own configuration with address book
    `peers` (None: none), whatever it runs now (also for a journal left by a killed run)."""
    entry = _entry(manifest, name)
    _stop(entry)
    peers_path = Path(entry.datadir) / PEERS_FILE
    if peers is None:
        peers_path.unlink(missing_ok=True)
    else:
        peers_path.write_bytes(peers)
    Path(entry.config + OVERRIDE_SUFFIX).unlink(missing_ok=True)
    process = with_launcher(node_process(entry, manifest.directory), manifest)
    process.pid = None
    _start(manifest, entry, process, None, timeout)


def _journal_restart(net: Any, manifest: Manifest, name: str, peers: bytes | None) -> None:
    """Journals the restart, with a copy of the node's address book beside the journal, so
    that the next run can put the node back if this one is killed."""
    journal = getattr(getattr(net, "switches", None), "journal", None)
    if journal is None or journal.path is None:
        return
    backup = ""
    if peers is not None:
        copy = journal.path.with_name(f"{journal.path.stem}-{name}-{PEERS_FILE}")
        with contextlib.suppress(OSError):
            copy.write_bytes(peers)
            backup = str(copy)
    journal.record("restarted", str(manifest.directory), name, backup)


def start_nodes(net: Any, count: int, *, connect: Iterable[str | NetNode] = (),
                mesh: bool = False, prefix: str = "s", timeout: float = START_TIMEOUT,
                **options: Any) -> list[NetNode]:
    """Start `count` extra nodes (fresh data directories, so fresh node ids), each
    connect-only (`--connect`) to the nodes in `connect` and, with `mesh`, to each other:
    they dial nobody else and, being connect-only, ask nobody for addresses, so their address
    books hold only those they are linked with. `options` override their configuration. They
    are `NetNode`s (``call``, ``try_call``) named PREFIX1, PREFIX2, …, with role "sybil", not
    in `net.nodes`; they are stopped by :func:`restore_nodes`. On a compose network they are
    containers (see the module's docstring)."""
    compose = compose_state(net)
    if compose is not None:
        _refuse_on_swarm(compose, "net.start_nodes")
        return _compose_start(net, compose, count, connect, mesh, prefix, timeout, options)
    manifest = process_manifest(net)
    state = _STATES[net]
    first = len(state.extra)
    if first + count > MAX_EXTRA:
        raise ScenarioError(f"at most {MAX_EXTRA} extra nodes")
    targets = [_entry(manifest, _node(net, n).name).p2p for n in connect]
    p2p_port = manifest.nodes[0].p2p.rsplit(":", 1)[1]
    rpc_port = manifest.nodes[0].rpc.rsplit(":", 1)[1]
    # SUBNET.200 on, or after the testnet's last node where it has more than 198.
    start = max(EXTRA_HOST_BASE - FIRST_HOST, len(manifest.nodes)) + first
    try:
        hosts = [host_of(manifest.subnet, start + k) for k in range(count)]
    except TestnetError as exc:
        raise ScenarioError(f"no loopback address for {count} extra nodes: {exc}") from None
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
    compose = _COMPOSE.get(net)
    if compose is not None:
        return [node for node, _ in compose.extra]
    state = _STATES.get(net)
    return [node for node, _ in state.extra] if state else []


def p2p_address(net: Any, node: str | NetNode) -> str:
    """A node's P2P HOST:PORT as the other nodes dial it: a testnet node's from its manifest
    entry, a container's from its address on the compose network; extra nodes too."""
    name = node if isinstance(node, str) else node.name
    compose = compose_state(net)
    if compose is not None:
        for extra, container in compose.extra:
            if extra.name == name:
                return _container_p2p(compose.testnet, container)
        testnet = compose.testnet
        return _container_p2p(testnet, _docker(lambda: testnet.container(
            _node(net, name).name).id))
    manifest = process_manifest(net)
    for extra, _ in _STATES[net].extra:
        if extra.name == name:
            return str(extra.call("getnetworkinfo")["p2p"])
    return _entry(manifest, _node(net, name).name).p2p


# --------------------------------------------------------------------------- compose networks


def compose_state(net: Any) -> _Compose | None:
    """What this module keeps for `net` if it runs on a compose network (else None): its
    `DockerTestnet`, checked to hold `net`'s nodes at the same RPC addresses."""
    state = _COMPOSE.get(net)
    if state is not None:
        return state
    if net in _STATES:
        return None
    from lab.testnet.cli import compose_testnet, is_docker

    directory = resolve_dir(getattr(net, "directory", None) or getattr(net.args, "dir", None))
    if not (getattr(net.args, "docker", False) or is_docker(directory)):
        return None
    testnet = compose_testnet(directory)
    found = _docker(lambda: {c.node: c for c in testnet.containers()})
    for name, node in net.nodes.items():
        c = found.get(name)
        if c is None or c.rpc_url is None:
            raise ScenarioError(f"node {name} is not a container of compose project "
                                f"{testnet.project!r} (its containers: {', '.join(found)})")
        if _hostport(c.rpc_url) != _hostport(node.endpoint.url):
            raise ScenarioError(f"node {name} is not compose project {testnet.project!r}'s "
                                f"{name} ({node.endpoint.url} vs {c.rpc_url})")
    state = _COMPOSE[net] = _Compose(testnet)
    return state


def _refuse_on_swarm(state: _Compose, what: str) -> None:
    """A swarm stack (lab/testnet/swarm.py) cannot do what a compose network does here."""
    stack = getattr(state.testnet, "stack", None)
    if stack is not None:
        raise ScenarioError(
            f"{what} is not available on a swarm testnet (stack {stack}): a node there is a "
            "service whose options, volume and address book the swarm manages, possibly on "
            "another engine, so the lab cannot recreate it with other options or start "
            "containers beside it; run this scenario on a process testnet (`powlab testnet "
            "up`) or a compose one (`powlab testnet up --docker`)")


def _docker(action: Any) -> Any:
    """`action()`, with Docker's errors as ScenarioError."""
    from lab.testnet.docker import RPC_FAILURES, DockerError, describe

    try:
        return action()
    except (DockerError, *RPC_FAILURES) as exc:
        raise ScenarioError(f"docker: {describe(exc)}") from None


def option_environment(options: dict[str, Any]) -> dict[str, str]:
    """Node options by their config names as POWLAB_* environment variables (lists
    comma-separated, an empty list clearing the setting; booleans true/false)."""
    env: dict[str, str] = {}
    for name, value in options.items():
        key = "POWLAB_" + name.replace("-", "_").upper()
        if isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list | tuple | set):
            env[key] = ",".join(str(v) for v in value)
        elif value is not None:
            env[key] = str(value)
    return env


def _container_env(testnet: Any, container: str) -> dict[str, str]:
    return dict(_docker(lambda: testnet.environment(container)))


def _container_p2p(testnet: Any, container: str) -> str:
    """The P2P HOST:PORT of a container (by name or id) on the compose network."""
    return str(_docker(lambda: testnet.p2p_address(container)))


def _book_archive(book: Sequence[dict[str, Any]], like: bytes | None) -> bytes:
    """peers.json holding `book`, as a tar archive for `docker cp`, owned like the one in
    `like` (the node's own, so it can replace it) or readable by all."""
    import io
    import tarfile

    data = json.dumps({"version": 1, "addresses": list(book)}).encode()
    info = tarfile.TarInfo(PEERS_FILE)
    info.mode = 0o644
    if like:
        with contextlib.suppress(tarfile.TarError, StopIteration), \
                tarfile.open(fileobj=io.BytesIO(like)) as old:
            member = next(iter(old))
            info.uid, info.gid, info.uname, info.gname = (member.uid, member.gid,
                                                          member.uname, member.gname)
            info.mode = member.mode
    info.size = len(data)
    info.mtime = int(time.time())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _compose_ready(node: NetNode, c: Any, testnet: Any, timeout: float) -> None:
    """Until the container's node answers RPC; `node` is pointed at it."""
    if c.rpc_url is None:
        raise ScenarioError(f"{c.container} publishes no RPC port")

    from lab.client import RPCAuthError
    from lab.testnet.docker import RPC_FAILURES, DockerError

    refused = [node.endpoint.auth is None or node.endpoint.url != c.rpc_url]

    def answers() -> bool:
        if refused[0]:
            # A recreated container's node writes a new cookie at the same URL.
            auth = _docker(lambda: testnet.credentials(c, fresh=True))
            node.endpoint = NodeEndpoint(c.rpc_url, (auth[0], auth[1]))
            refused[0] = False
        try:
            node.call("getblockcount", timeout=5)
        except RPCAuthError:
            refused[0] = True
            raise
        return True

    try:
        waiting.wait_until(answers, timeout, f"{node.name} to answer RPC", 0.5,
                           ignore=(*RPC_FAILURES, DockerError, OSError, ScenarioError))
    except TimeoutError as exc:
        raise ScenarioError(f"{node.name} ({c.container}) did not answer RPC: {exc}") from None


def _compose_restart(net: Any, state: _Compose, target: NetNode,
                     book: Sequence[dict[str, Any]] | None, keep_book: bool, timeout: float,
                     options: dict[str, Any]) -> None:
    testnet = state.testnet
    c = _docker(lambda: testnet.container(target.name))
    datadir = _container_env(testnet, c.id).get("POWLAB_DATADIR", "/data")
    if target.name not in state.restarted:
        state.restarted[target.name] = _docker(
            lambda: testnet.read_file(c.id, f"{datadir}/{PEERS_FILE}"))
    saved = state.restarted[target.name]
    archive = None
    if book is not None or not keep_book:
        archive = _book_archive(book or [], saved)

    def before_start(new: Any) -> None:
        if archive is not None:
            testnet.write_archive(new.id, datadir, archive)

    journal = getattr(getattr(net, "switches", None), "journal", None)
    if journal is not None:
        # A runner killed outright leaves it on these options: the next run recreates it.
        journal.record("recreated", str(testnet.project_dir), str(testnet.compose_file),
                       testnet.project, target.name)
    new = _docker(lambda: testnet.recreate(target.name, option_environment(options),
                                           before_start=before_start))
    _compose_ready(target, new, testnet, timeout)


def _compose_restore(net: Any, state: _Compose, timeout: float) -> None:
    testnet = state.testnet
    errors = []
    names = [container for _, container in state.extra]
    if names:
        try:
            _docker(lambda: testnet.remove_extra(names))
            state.extra.clear()
        except ScenarioError as exc:
            errors.append(f"extra nodes: {exc}")
    for name, saved in list(state.restarted.items()):
        try:
            c = _docker(lambda n=name: testnet.container(n))
            datadir = _container_env(testnet, c.id).get("POWLAB_DATADIR", "/data")
            archive = saved if saved is not None else _book_archive([], None)
            new = _docker(lambda n=name, a=archive, d=datadir: testnet.recreate(
                n, None, before_start=lambda fresh: testnet.write_archive(fresh.id, d, a)))
            _compose_ready(_node(net, name), new, testnet, timeout)
        except ScenarioError as exc:
            errors.append(f"{name}: {exc}")
        del state.restarted[name]
    if errors:
        raise ScenarioError("could not restore " + "; ".join(errors))


def _compose_start(net: Any, state: _Compose, count: int, connect: Iterable[str | NetNode],
                   mesh: bool, prefix: str, timeout: float,
                   options: dict[str, Any]) -> list[NetNode]:
    testnet = state.testnet
    first = len(state.extra)
    if first + count > MAX_EXTRA:
        raise ScenarioError(f"at most {MAX_EXTRA} extra nodes")
    if not state.extra:
        # Left by a run that was killed before it could remove them.
        _docker(testnet.remove_extra)
    targets = [p2p_address(net, n) for n in connect]
    like = next(iter(net.nodes))
    port = p2p_address(net, like).rsplit(":", 1)[1]
    names = [f"{prefix}{first + k + 1}" for k in range(count)]
    containers = [f"{testnet.project}-sybil-{name}" for name in names]
    journal = getattr(getattr(net, "switches", None), "journal", None)
    started: list[tuple[NetNode, Any]] = []
    for k, (name, container) in enumerate(zip(names, containers, strict=True)):
        peers = targets + ([f"{other}:{port}" for j, other in enumerate(containers)
                            if j != k] if mesh else [])
        env = {"POWLAB_CONNECT": ",".join(peers), "POWLAB_ADDNODE": "",
               "POWLAB_MINE": "false", "POWLAB_MAX_OUTBOUND": str(max(1, len(peers)))}
        env.update(option_environment(options))
        if journal is not None:
            # A runner killed outright leaves them running: the next run removes them.
            journal.record("containers", container)
        c = _docker(lambda n=container, e=env: testnet.run_extra(n, e, like=like,
                                                                 role="sybil"))
        node = NetNode(name, "sybil", NodeEndpoint(c.rpc_url or "", c.auth))
        state.extra.append((node, container))
        started.append((node, c))
    for node, c in started:
        _compose_ready(node, c, testnet, timeout)
    return [node for node, _ in started]


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


def _start(manifest: Manifest, entry: NodeEntry, process: NodeProcess, node: NetNode | None,
           timeout: float) -> None:
    process.start(wait=False)
    entry.pid = process.pid
    manifest.save()  # `powlab testnet down` must find the new pid whatever happens next
    try:
        process.wait_ready(timeout)
    except (NodeProcessError, TimeoutError) as exc:
        raise ScenarioError(f"{entry.name} did not come back: {exc}") from None
    if node is not None:
        node.endpoint = datadir_endpoint(entry.datadir, entry.url)
