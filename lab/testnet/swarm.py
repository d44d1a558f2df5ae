"""The testnet as a Docker Swarm stack: `powlab testnet up --swarm` drives it through this module.

A compose file cannot be deployed as a stack unchanged (issue 15): a stack refuses
``profiles``, needs ``version:``, cannot put services on a bridge network, and on kernels
without IPVS neither service virtual IPs nor the ingress routing mesh work. So the stack is
generated here (:func:`stack_definition`; ``docker-stack.yml`` at the repository root is its
five-node default, written by ``python -m lab.testnet.swarm stack``):

* ``version: "3.8"``, one ``overlay`` network (attachable), no profiles;
* ``deploy.endpoint_mode: dnsrr`` on every service (no virtual IP: a service name resolves
  to its task's own address), RPC published in long syntax with ``mode: host`` on a port of
  its own per node;
* per-node RPC credentials: each node's password is a Docker secret of its own (the lab
  keeps every password in ``DIR/secrets/``); a container holds only its own, so the
  attacker's cannot call the merchant's node. The node reads it from
  ``/run/secrets/powlab_rpc_password`` at start;
* ``restart_policy`` ``any`` with at most 3 attempts in 120 s, so a node that keeps dying
  stays down and shows as such instead of looping (``any``, not ``on-failure``: a task
  stopped for failing its healthcheck exits cleanly and would never come back).

The lab finds the nodes through the stack's tasks (task -> engine node -> published port,
and the container when it runs on this engine). Partitions are RPC bans between the nodes'
overlay addresses (``setban``), not Docker network changes, so they work across engines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import waiting
from lab.testnet.docker import (
    P2P_PORT,
    PASSWORD_FILE_ENV,
    RPC_FAILURES,
    RPC_PORT,
    SECRET_PATH,
    SECRET_TARGET,
    DockerError,
    DockerTestnet,
    NodeContainer,
    _role_key,
    _run,
    check_engine,
    check_groups,
    write_password_files,
)

__all__ = [
    "SwarmNode",
    "SwarmTestnet",
    "apply_constraints",
    "default_layout",
    "layout",
    "layout_differences",
    "stack_definition",
    "swarm_state",
]

STACK_LABEL = "com.docker.stack.namespace"
NETWORK_KEY = "powlab"
RPC_USER = "powlab"
REGTEST_HASHES_PER_BLOCK = 2.0  # regtest's target: about two hashes per block
ENTRYPOINT = [
    "sh", "-c",
    # `$$` is a literal `$` in a stack file.
    f'POWLAB_RPC_PASSWORD="$$(cat {SECRET_PATH})"; '
    "export POWLAB_RPC_PASSWORD; exec python -m node",
]


@dataclass
class SwarmNode:
    """One service of the stack: one node."""

    name: str
    role: str
    hashrate: float  # H/s; 0: does not mine
    rpc_port: int  # published on its engine's interfaces (mode host)
    # Swarm placement constraints, e.g. "node.hostname==host-a": pins the node to engines
    # (its volume, so its chain, wallet and identity, stays on the engine that made it).
    constraints: list[str] = field(default_factory=list)


def default_layout(base_port: int = 18601) -> list[SwarmNode]:
    """The compose file's five nodes: two miners, merchant, attacker (mining), observer."""
    return layout(5, 2, None, 8.0, base_port)


def layout(nodes: int, miners: int, shares: Sequence[float] | None, block_time: float,
           base_port: int = 18601) -> list[SwarmNode]:
    """``miner1..minerM``, ``merchant``, ``attacker``, ``observer``, then ``observer2…``.

    ``shares`` split the total hash rate (one block per ``block_time`` seconds) between the
    miners and, last, the attacker: M + 1 numbers. By default the attacker gets 0.2 and the
    miners share 0.8 equally.
    """
    if miners < 1:
        raise ValueError("a swarm testnet needs at least one miner")
    if nodes < miners + 3:
        raise ValueError(f"--nodes must be at least --miners + 3 (merchant, attacker, "
                         f"observer): {miners + 3}")
    if block_time <= 0:
        raise ValueError("--block-time must be positive")
    if shares is None:
        shares = [0.8 / miners] * miners + [0.2]
    if len(shares) != miners + 1:
        raise ValueError(f"--hashrates: {miners + 1} shares for the swarm ({miners} miners, "
                         f"then the attacker), got {len(shares)}")
    total = sum(shares)
    if total <= 0:
        raise ValueError("--hashrates must not all be zero")
    rate = REGTEST_HASHES_PER_BLOCK / block_time
    out = [SwarmNode(f"miner{k + 1}", "miner", rate * shares[k] / total, 0)
           for k in range(miners)]
    out.append(SwarmNode("merchant", "merchant", 0.0, 0))
    out.append(SwarmNode("attacker", "attacker", rate * shares[-1] / total, 0))
    out += [SwarmNode("observer" if k == 0 else f"observer{k + 1}", "observer", 0.0, 0)
            for k in range(nodes - miners - 2)]
    for k, node in enumerate(out):
        node.rpc_port = base_port + k
    return out


def _seeds(nodes: Sequence[SwarmNode], name: str) -> list[str]:
    """The services node `name` dials: the miners, merchant, attacker and first observer (so
    a large stack does not make every node dial every other; gossip finds the rest), and an
    observer also its two neighbours in the ring of observers. Without those, in a stack of
    100 the hubs' 32 inbound slots fill up and nodes they refuse know no one else (measured:
    17 of 100 stayed at height 0)."""
    core = [n.name for n in nodes if n.role != "observer"]
    observers = [n.name for n in nodes if n.role == "observer"]
    out = core + observers[:1]
    if name in observers and len(observers) > 2:
        k = observers.index(name)
        out += [observers[k - 1], observers[(k + 1) % len(observers)]]
    return [s for s in dict.fromkeys(out) if s != name]


def stack_definition(nodes: Sequence[SwarmNode], image: str,
                     secret_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The stack file as a dict (JSON is YAML: ``docker stack deploy -c`` reads it).

    ``secret_files`` maps each node to the file holding its RPC password; without it the
    secrets are ``external`` (created beforehand with ``docker secret create``), named
    ``powlab_rpc_NODE``.
    """
    services: dict[str, Any] = {}
    secret_defs: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for node in nodes:
        secret = f"powlab_rpc_{node.name}"
        secret_defs[secret] = ({"file": secret_files[node.name]} if secret_files
                               else {"external": True})
        volumes[f"{node.name}-data"] = {}
        env = {
            "POWLAB_NETWORK": "regtest",
            "POWLAB_DATADIR": "/data",
            "POWLAB_P2P_BIND": f"0.0.0.0:{P2P_PORT}",
            "POWLAB_RPC_BIND": f"0.0.0.0:{RPC_PORT}",
            "POWLAB_RPC_USER": RPC_USER,
            PASSWORD_FILE_ENV: SECRET_PATH,
            "POWLAB_LOG_FORMAT": "console",
            "POWLAB_MINER_PROCESSES": "1",
            "POWLAB_ADDNODE": ",".join(f"{s}:{P2P_PORT}" for s in _seeds(nodes, node.name)),
        }
        if node.hashrate > 0:
            env["POWLAB_MINE"] = "1"
            env["POWLAB_HASHRATE"] = f"{node.hashrate:.6g}"
        labels = {"powlab.role": node.role}
        services[node.name] = {
            "image": image,
            "init": True,
            "entrypoint": list(ENTRYPOINT),
            "environment": env,
            "labels": labels,
            "networks": [NETWORK_KEY],
            "secrets": [{"source": secret, "target": SECRET_TARGET}],
            "volumes": [f"{node.name}-data:/data"],
            "ports": [{"target": RPC_PORT, "published": node.rpc_port, "protocol": "tcp",
                       "mode": "host"}],
            "stop_grace_period": "30s",
            "healthcheck": {
                "test": ["CMD", "python", "-m", "lab.testnet.docker", "healthcheck"],
                # Each check starts a Python: 0.16 CPU-seconds, so every 5 s would cost 3 % of
                # a core per node, more than the idle node itself (docs/scaling.md).
                # A swarm replaces a task whose check fails `retries` times in a row: on a
                # loaded machine (load average 100-400 measured with 100 nodes) a Python
                # start alone can take over 5 s, so the check gets 30 s and 5 tries.
                "interval": "30s", "timeout": "30s", "retries": 5, "start_period": "120s",
            },
            "deploy": {
                **({"placement": {"constraints": list(node.constraints)}}
                   if node.constraints else {}),
                "replicas": 1,
                "endpoint_mode": "dnsrr",
                "labels": labels,
                # "any": a task the swarm stops for failing its healthcheck exits cleanly
                # (SIGTERM, status 0), which "on-failure" never restarts (seen at 100 nodes).
                "restart_policy": {"condition": "any", "delay": "5s",
                                   "max_attempts": 3, "window": "120s"},
            },
        }
    return {
        "version": "3.8",
        "services": services,
        "networks": {NETWORK_KEY: {"driver": "overlay", "attachable": True}},
        "volumes": volumes,
        "secrets": secret_defs,
    }


def layout_differences(state: Mapping[str, Any], *, nodes: int | None = None,
                       miners: int | None = None, shares: Sequence[float] | None = None,
                       block_time: float | None = None, image: str | None = None,
                       constraints: Sequence[str] = ()) -> list[str]:
    """What the options given to `up --swarm` would change in a deployed stack's layout
    (``state``: its ``swarm.json``), one line each; empty when they agree with it (options
    not given are None or empty and agree with anything)."""
    stored = [SwarmNode(**n) for n in state.get("nodes") or []]
    have_miners = sum(1 for n in stored if n.role == "miner")
    out = []
    if nodes is not None and nodes != len(stored):
        out.append(f"--nodes {nodes} (it has {len(stored)})")
    if miners is not None and miners != have_miners:
        out.append(f"--miners {miners} (it has {have_miners})")
    if image is not None and image != state.get("image"):
        out.append(f"--image {image} (it runs {state.get('image')})")
    if (shares is not None or block_time is not None) and stored and not out:
        total = sum(n.hashrate for n in stored)
        split = list(shares) if shares is not None else (  # else the stored split
            [n.hashrate for n in stored if n.role == "miner"]
            + [sum(n.hashrate for n in stored if n.role == "attacker")])
        wanted = layout(len(stored), have_miners, split,
                        block_time or REGTEST_HASHES_PER_BLOCK / total)
        rates = {n.name: n.hashrate for n in stored}
        if any(abs(w.hashrate - rates.get(w.name, 0.0)) > 1e-6 * max(1.0, w.hashrate)
               for w in wanted):
            given = " ".join(f for f, v in (("--hashrates", shares),
                                            ("--block-time", block_time)) if v is not None)
            out.append(f"{given} (its rates: " + ", ".join(
                f"{n.name} {n.hashrate:.4g} H/s" for n in stored if n.hashrate) + ")")
    if constraints:
        wanted_nodes = [SwarmNode(n.name, n.role, n.hashrate, n.rpc_port) for n in stored]
        apply_constraints(wanted_nodes, constraints)
        if any(w.constraints != n.constraints for w, n in zip(wanted_nodes, stored,
                                                              strict=True)):
            out.append("--constraint (its constraints: " + (", ".join(
                f"{n.name}:{c}" for n in stored for c in n.constraints) or "none") + ")")
    return out


def apply_constraints(nodes: Sequence[SwarmNode], given: Sequence[str]) -> None:
    """``NODE:CONSTRAINT`` pairs (``miner1:node.hostname==host-a``; ``*:…`` for every
    node) added to the nodes' placement constraints."""
    by_name = {n.name: n for n in nodes}
    for text in given:
        name, sep, constraint = text.partition(":")
        if not sep or not constraint.strip() or (name != "*" and name not in by_name):
            raise ValueError(f"--constraint {text!r}: expected NODE:CONSTRAINT with NODE one "
                             f"of {', '.join(by_name)} or *")
        for node in nodes if name == "*" else [by_name[name]]:
            node.constraints.append(constraint.strip())


def swarm_state() -> tuple[str, bool]:
    """(LocalNodeState, is a manager) of this machine's engine."""
    check_engine()
    out = _run(["docker", "info", "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]).stdout.split()
    return (out[0] if out else "inactive"), (len(out) > 1 and out[1] == "true")


def ensure_swarm(init: bool, log: Callable[[str], None]) -> bool:
    """Checks this engine is a swarm manager; with ``init``, makes it a single-node swarm
    when it is in none. True when it initialised one."""
    state, manager = swarm_state()
    if state == "active" and manager:
        return False
    if state == "active":
        raise DockerError("this engine is a swarm worker; run `testnet up --swarm` on a manager")
    if not init:
        raise DockerError("this engine is not in a swarm: `docker swarm init` (or "
                          "`powlab testnet up --swarm --swarm-init` for a single-node swarm)")
    log("initialising a single-node swarm (docker swarm init --advertise-addr 127.0.0.1)")
    _run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])
    return True


def free_ports(count: int, start: int = 18601) -> int:
    """The first port from ``start`` after which ``count`` ports are free on every interface
    (mode-host publishing binds 0.0.0.0)."""
    port = start
    while port + count < 65000:
        if all(_port_free(p) for p in range(port, port + count)):
            return port
        port += count
    raise DockerError("no free range of host ports for the stack's RPC")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class SwarmTestnet(DockerTestnet):
    """A stack of powlab nodes on a swarm, with the compose testnet's interface.

    ``directory`` holds the stack file, the passwords (``secrets/``) and the layout
    (``swarm.json``); ``stack`` is the stack's name.
    """

    def __init__(self, directory: Path, stack: str, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory).resolve()
        super().__init__(self.directory, self.directory / "stack.yml", project_name=stack,
                         network=NETWORK_KEY, log=log)
        self.stack = stack
        self._layout: dict[str, dict[str, Any]] | None = None
        self._local_node: str | None = None

    # ------------------------------------------------------------------ files

    @property
    def state_file(self) -> Path:
        return self.directory / "swarm.json"

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        return data

    def _save_state(self, data: Mapping[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(data, indent=2) + "\n")

    def layout(self) -> dict[str, dict[str, Any]]:
        if self._layout is None:
            self._layout = {n["name"]: n for n in self._state().get("nodes", [])}
        return self._layout

    def password(self, node: str) -> str | None:
        try:
            return (self.directory / "secrets" / node).read_text().strip()
        except OSError:
            return None

    # ------------------------------------------------------------------ deploy

    def deploy(self, nodes: Sequence[SwarmNode], image: str, *, wait: float = 180.0,
               fund: bool = True) -> None:
        """Writes passwords and the stack file (a stack already deployed keeps its layout
        and passwords), deploys it, waits for every node's RPC, funds the wallets."""
        state = self._state()
        if state.get("nodes"):
            nodes = [SwarmNode(**n) for n in state["nodes"]]
            image = state.get("image", image)
        secret_dir = self.directory / "secrets"
        write_password_files(secret_dir, [n.name for n in nodes])
        files = {node.name: str(secret_dir / node.name) for node in nodes}
        self.compose_file.write_text(json.dumps(stack_definition(nodes, image, files),
                                                indent=2) + "\n")
        self._save_state({"stack": self.stack, "image": image,
                          "nodes": [asdict(n) for n in nodes], "partition": None})
        self._layout = None
        self.log(f"deploying stack {self.stack} ({len(nodes)} nodes)")
        _run(["docker", "stack", "deploy", "--resolve-image", "never", "-c",
              str(self.compose_file), self.stack], timeout=300)
        self.wait_ready(wait)
        if fund:
            self.fund()

    def up(self, build: bool = True, *, wait: float = 180.0, fund: bool = True) -> None:
        state = self._state()
        if not state.get("nodes"):
            raise DockerError(f"no stack layout in {self.directory}: `testnet up --swarm`")
        self.deploy([SwarmNode(**n) for n in state["nodes"]], state["image"], wait=wait,
                    fund=fund)

    def down(self, purge: bool = False) -> None:
        """Removes the stack (tasks, network, secrets) and, with ``purge``, the chains'
        volumes on this engine and the passwords."""
        self.remove_extra()
        _run(["docker", "stack", "rm", self.stack], check=False, timeout=120)
        with contextlib.suppress(TimeoutError):  # what is left is reported by `status`
            waiting.wait_until(lambda: not _run(["docker", "ps", "-a", "-q", "--filter",
                                                 f"label={STACK_LABEL}={self.stack}"]
                                                ).stdout.split(), 90, "the stack's containers",
                               1.0)
        if purge:
            # Volumes on other engines stay there: `docker volume rm` on each of them.
            vols = _run(["docker", "volume", "ls", "-q", "--filter",
                         f"label={STACK_LABEL}={self.stack}"]).stdout.split()
            with contextlib.suppress(TimeoutError):  # a volume still held stays, as before
                waiting.wait_until(lambda: not vols or _run(
                    ["docker", "volume", "rm", *vols], check=False).returncode == 0,
                    10, "the stack's volumes", 1.0)
            for path in (self.directory / "secrets").glob("*"):
                path.unlink()
            with contextlib.suppress(OSError):
                (self.directory / "secrets").rmdir()
            for path in (self.compose_file, self.state_file):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ tasks

    def _main_network_name(self) -> str:
        return f"{self.stack}_{NETWORK_KEY}"

    def _engine_addresses(self, ids: Sequence[str]) -> dict[str, str]:
        """Swarm node id -> address to reach ports it publishes (127.0.0.1 for this one)."""
        if self._local_node is None:
            self._local_node = _run(["docker", "info", "--format",
                                     "{{.Swarm.NodeID}}"]).stdout.strip()
        out: dict[str, str] = {}
        others = [i for i in set(ids) if i and i != self._local_node]
        if others:
            for data in json.loads(_run(["docker", "node", "inspect", *others]).stdout):
                out[data["ID"]] = str((data.get("Status") or {}).get("Addr") or "")
        out[self._local_node] = "127.0.0.1"
        return out

    def containers(self) -> list[NodeContainer]:
        """One entry per node: its current task (running, or the latest one)."""
        check_engine()
        prefix = f"{self.stack}_"
        services = {}
        for line in _run(["docker", "service", "ls", "--filter",
                          f"label={STACK_LABEL}={self.stack}", "--format",
                          "{{.ID}} {{.Name}}"]).stdout.splitlines():
            sid, _, name = line.partition(" ")
            services[sid] = name[len(prefix):] if name.startswith(prefix) else name
        if not services:
            return []
        task_ids = _run(["docker", "stack", "ps", self.stack, "-q", "--no-trunc"],
                        check=False).stdout.split()
        tasks = json.loads(_run(["docker", "inspect", "--type", "task", *task_ids]).stdout) \
            if task_ids else []
        latest: dict[str, dict[str, Any]] = {}
        for t in tasks:
            # `service ls` shows ids shortened.
            name = next((n for sid, n in services.items()
                         if sid and str(t.get("ServiceID", "")).startswith(sid)), None)
            if name is None:
                continue
            key = name if (t.get("Slot") or 1) == 1 else f"{name}-{t.get('Slot')}"
            current = latest.get(key)
            if current is None or _task_rank(t) > _task_rank(current):
                latest[key] = t
        engines = self._engine_addresses([t.get("NodeID", "") for t in latest.values()])
        layout = self.layout()
        main = self._main_network_name()
        found = [
            # A service with no task yet: listed, not running, so waiting goes on.
            NodeContainer(id=name, container=name, node=name, service=name, number=1,
                          role=layout.get(name, {}).get("role", "node"), running=False,
                          health=None, rpc_port=layout.get(name, {}).get("rpc_port"))
            for name in services.values() if not any(k.split("-")[0] == name for k in latest)
        ]
        for key, t in latest.items():
            service = key.split("-")[0] if key not in layout else key
            status = t.get("Status") or {}
            container = (status.get("ContainerStatus") or {}).get("ContainerID") or ""
            ips = {}
            for attachment in t.get("NetworksAttachments") or []:
                net = ((attachment.get("Network") or {}).get("Spec") or {}).get("Name", "")
                addrs = attachment.get("Addresses") or []
                if net and addrs:
                    ips[net] = str(addrs[0]).split("/")[0]
            spec = layout.get(service, {})
            password = self.password(service)
            found.append(NodeContainer(
                id=container or t["ID"],
                container=container[:12] or t["ID"][:12],
                node=key,
                service=service,
                number=int(t.get("Slot") or 1),
                role=spec.get("role", "node"),
                running=status.get("State") in ("running", "starting"),
                health=None,
                networks=ips if status.get("State") in ("running", "starting") else {},
                rpc_port=spec.get("rpc_port"),
                auth=(RPC_USER, password) if password is not None else None,
                rpc_host=engines.get(t.get("NodeID", ""), "127.0.0.1"),
                local=t.get("NodeID") == self._local_node,
            ))
            if main not in found[-1].networks and found[-1].running:
                found[-1].networks[main] = ""
        return sorted(found, key=_role_key)

    def _cookie(self, c: NodeContainer, fresh: bool = False) -> tuple[str, str]:
        password = self.password(c.service)  # (a file: always read afresh)
        if password is None:
            raise DockerError(f"no password for {c.node} in {self.directory / 'secrets'}")
        return RPC_USER, password

    def logs(self, node: str, lines: int = 100, follow: bool = False) -> None:
        argv = ["docker", "service", "logs", "--no-task-ids", "--tail",
                str(lines) if lines > 0 else "all"]
        if follow:
            argv.append("-f")
        _run([*argv, f"{self.stack}_{node}"], capture=False, timeout=10**9 if follow else 120)

    # ------------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        rows = super().status()
        groups = self._state().get("partition") or []
        where = {n: i for i, g in enumerate(groups) for n in g}
        for row in rows:
            row["partitioned"] = row["node"] in where and where[row["node"]] > 0
            row["group"] = where.get(row["node"])
        return rows

    # ------------------------------------------------------------------ partitions

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Every node bans the overlay addresses of the nodes in other groups (and drops
        those peers); a node no group names joins the first group. Works across engines:
        nothing about Docker networking changes."""
        found = {c.node: c for c in self.containers() if c.running}
        groups, seen = check_groups(groups, found)
        if self._state().get("partition"):
            self.heal(reconnect=False)
        groups[0] += [n for n in found if n not in seen]
        main = self._main_network_name()
        ip = {n: c.networks.get(main, "") for n, c in found.items()}
        # Recorded before each node's bans go in, so `heal` lifts whatever was set even if
        # the partition stops half-way (a node that does not answer).
        state = self._state()
        state["partition"] = groups
        state["bans"] = {}

        def record(name: str, hosts: list[str]) -> None:
            state["bans"][name] = hosts
            self._save_state(state)

        failed = self.ban_across(found, groups, ip, before=record)
        if failed:
            raise DockerError("the partition is not in force on every node (`testnet heal` "
                              "lifts what was set): " + "; ".join(failed))
        self.log("partitioned: " + " | ".join(",".join(g) for g in groups))

    def heal(self, reconnect: bool = True) -> None:
        """Lifts the bans :meth:`partition` set and has every node redial the others."""
        state = self._state()
        bans: dict[str, list[str]] = state.get("bans") or {}
        found = [c for c in self.containers() if c.running]
        for c in found:
            hosts = bans.get(c.node) or []
            if hosts:
                self._calls(c, [("setban", [h, "remove"]) for h in hosts], timeout=10,
                            errors="return")
        state["partition"], state["bans"] = None, {}
        self._save_state(state)
        if reconnect:
            self.reconnect_peers()
            self.log("healed: bans lifted, peers redialled")

    def reconnect_peers(self, network: str | None = None,
                        nodes: Sequence[str] | None = None) -> None:
        main = self._main_network_name()
        found = [c for c in self.containers()
                 if c.running and c.networks.get(main) and (nodes is None or c.node in nodes)]
        for c in found:
            calls = [("addnode", [f"{o.networks[main]}:{P2P_PORT}", "onetry"])
                     for o in found if o.id != c.id]
            try:
                self._calls(c, calls, timeout=10, errors="return")
            except (*RPC_FAILURES, DockerError) as exc:
                self.log(f"{c.node}: could not redial peers: {exc}")

    # ------------------------------------------------------------------ not on a swarm

    def run_extra(self, name: str, environment: Mapping[str, str], *, like: str,
                  role: str = "node") -> NodeContainer:
        raise DockerError("extra nodes (net.start_nodes) are not supported on a swarm testnet "
                          "yet")

    def recreate(self, node: str, environment: Mapping[str, str] | None = None, *,
                 before_start: Callable[[NodeContainer], None] | None = None,
                 ) -> NodeContainer:
        raise DockerError("restarting a node with new options (net.restart_node) is not "
                          "supported on a swarm testnet yet")

    def extra_containers(self) -> list[NodeContainer]:
        return []


def _task_rank(task: Mapping[str, Any]) -> tuple[int, str]:
    """Running tasks first, then the newest."""
    state = (task.get("Status") or {}).get("State")
    return (1 if state in ("running", "starting") else 0, str(task.get("CreatedAt") or ""))


# --------------------------------------------------------------------------------------------
# python -m lab.testnet.swarm stack
# --------------------------------------------------------------------------------------------


HEADER = """\
# powlab as a Docker Swarm stack: the five nodes of docker-compose.yml, written by
# `python -m lab.testnet.swarm stack > docker-stack.yml` (tests/test_swarm.py checks it is
# current). `powlab testnet up --swarm` generates its own copy with per-node password files;
# this one expects the passwords as external secrets. By hand, on a swarm manager:
#
#   mkdir -p secrets && for n in miner1 miner2 merchant attacker observer; do
#       openssl rand -hex 16 | tee secrets/$n | docker secret create powlab_rpc_$n -; done
#   docker stack deploy --resolve-image never -c docker-stack.yml powlab
#   powlab rpc --rpc http://127.0.0.1:18601/ --rpc-user powlab \\
#       --rpc-password "$(cat secrets/miner1)" getblockchaininfo
#
# RPC is published on every interface of the engine that runs the node (ports 18601-18605,
# mode host): keep them behind a firewall. See docs/docker.md, "Docker Swarm".
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.testnet.swarm")
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="print the five-node stack file (docker-stack.yml)")
    stack.add_argument("--image", default="powlab:latest")
    args = parser.parse_args(argv)
    if args.command == "stack":
        sys.stdout.write(HEADER + json.dumps(stack_definition(default_layout(), args.image),
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
