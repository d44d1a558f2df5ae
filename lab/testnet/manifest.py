"""The testnet's manifest, DIR/testnet.json: its layout, roles, rates, pids and partition.

The manifest is the only state the testnet commands keep; every command re-reads it, so
commands can be run from different shells and `up` can be repeated safely.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.client import EndpointError
from storage.files import write_atomic

MANIFEST_NAME = "testnet.json"
MANIFEST_VERSION = 1
DEFAULT_DIR = "./testnet"
DIR_ENV_VAR = "POWLAB_TESTNET_DIR"
TOPOLOGIES = ("line", "ring", "mesh", "star", "random")
LAUNCHERS = ("exec", "fork")
DEFAULT_DEGREE = 8
# Node k sits at host slot k of the subnet, spilling into the next ranges (A.B.C+1, …).
HOSTS_PER_RANGE = 254
FIRST_HOST = 2  # node index 0 binds SUBNET.2 (.1 is left to the machine)
LOOPBACK_BROADCAST = "127.255.255.255"  # binds, but sending to it fails (EACCES)
MAX_NODES = 2000
NETWORKS = ("regtest", "testnet")
DEFAULT_SUBNET = "127.0.0"
DEFAULT_P2P_PORT = 18444
DEFAULT_RPC_PORT = 18443


class TestnetError(EndpointError):
    """The testnet directory, a node name or a node is not in the state a command needs."""


def check_subnet(text: str) -> str:
    """`127.B.C` -> itself; anything else is refused: nodes only ever bind loopback."""
    parts = text.strip().split(".")
    if len(parts) == 4 and parts[3] in ("0", "0/24"):
        parts = parts[:3]  # accept 127.5.6.0 and 127.5.6.0/24 too
    if (len(parts) != 3 or not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts)
            or any(len(p) > 1 and p.startswith("0") for p in parts)):
        raise TestnetError(f"subnet {text!r}: expected three numbers A.B.C, e.g. 127.0.5")
    if parts[0] != "127":
        raise TestnetError(
            f"subnet {text!r} is not loopback: the testnet only binds 127.B.C addresses "
            "(127.0.0.0/8), so it never sends traffic off this machine"
        )
    return ".".join(parts)


def subnet_of(host: str) -> str:
    """`127.0.5.3` -> `127.0.5`."""
    return host.rsplit(".", 1)[0]


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
    # `powlab node` options for every node, as KEY=VALUE text (checked by the node itself:
    # lab/testnet/nodeconfig.py).
    node_options: dict[str, str] = field(default_factory=dict)
    # Node K binds SUBNET.(K+1); manifests older than this field take it from n1's host.
    subnet: str = DEFAULT_SUBNET
    # "exec": each node is a new `python -m node`; "fork": forked by the testnet's fork
    # server (lab/testnet/forkserver.py), sharing its imported code.
    launcher: str = "exec"
    # The random topology's degree and seed (so its graph can be rebuilt and checked).
    degree: int | None = None
    seed: int | None = None

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
            "subnet": self.subnet,
            "launcher": self.launcher,
            "degree": self.degree,
            "seed": self.seed,
            "nodes": [asdict(e) for e in self.nodes],
        }

    def save(self) -> None:
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
        nodes = [NodeEntry(**n) for n in data["nodes"]]
        return Manifest(
            directory=path,
            network=data["network"],
            block_time=float(data["block_time"]),
            topology=data["topology"],
            finality_depth=data.get("finality_depth"),
            nodes=nodes,
            funded=bool(data.get("funded")),
            partition=data.get("partition"),
            created=float(data.get("created", 0)),
            mode=data.get("mode", "process"),
            node_options=dict(data.get("node_options") or {}),
            subnet=data.get("subnet") or (subnet_of(nodes[0].host) if nodes else DEFAULT_SUBNET),
            launcher=data.get("launcher") or "exec",
            degree=data.get("degree"),
            seed=data.get("seed"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TestnetError(f"{path / MANIFEST_NAME} is malformed: {exc!r}") from None


def host_of(subnet: str, index: int) -> str:
    """Node `index` (0 for n1): SUBNET.(index+2) for the first 254 nodes, then on through the
    next ranges, A.B.(C+1).2 … (all loopback)."""
    a, b, c = subnet.split(".")
    spill, slot = divmod(index, HOSTS_PER_RANGE)
    if int(c) + spill > 255:
        raise TestnetError(f"{index + 1} nodes do not fit from subnet {subnet} on "
                           f"(node {index + 1} would need {a}.{b}.{int(c) + spill}); "
                           "use a subnet with a lower third number")
    host = f"{a}.{b}.{int(c) + spill}.{slot + FIRST_HOST}"
    if host == LOOPBACK_BROADCAST:
        raise TestnetError(f"{index + 1} nodes do not fit from subnet {subnet} on (node "
                           f"{index + 1} would get {host}, loopback's broadcast address, to "
                           "which nothing can send); use a subnet with a lower third number")
    return host


def random_links(count: int, degree: int, seed: int) -> dict[int, list[int]]:
    """A connected random graph of about `degree` links per node, reproducible from `seed`.

    A random spanning tree first (each node k > 0 dials one node before it, in a shuffled
    order), so the graph is connected; then every node dials random others until it has
    `degree // 2` outgoing links (never itself, never a node already linked with it either
    way). Each node thus dials about degree/2 and is dialled by about as many: its degree is
    about `degree`, at least 1 and at least min(degree // 2, count - 1) counting both ways.
    """
    import random

    if degree < 1:
        raise TestnetError("--degree must be at least 1")
    rng = random.Random(seed)
    links: dict[int, list[int]] = {k: [] for k in range(count)}
    linked: list[set[int]] = [set() for _ in range(count)]

    def link(a: int, b: int) -> None:
        links[a].append(b)
        linked[a].add(b)
        linked[b].add(a)

    order = list(range(count))
    rng.shuffle(order)
    for pos in range(1, count):
        link(order[pos], order[rng.randrange(pos)])
    dials = max(1, degree // 2)
    for k in range(count):
        free = [j for j in range(count) if j != k and j not in linked[k]]
        want = max(0, dials - len(links[k]))
        for j in rng.sample(free, min(want, len(free))):
            link(k, j)
    return links


def topology_links(count: int, topology: str, degree: int = DEFAULT_DEGREE,
                   seed: int = 0) -> dict[int, list[int]]:
    """Index -> indices it dials (its `connect` list)."""
    if topology == "random":
        return random_links(count, degree, seed)
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
        return [1.0 / miners] * miners if miners else []
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
    degree: int = DEFAULT_DEGREE,
    seed: int | None = None,
    launcher: str = "exec",
) -> Manifest:
    if not 1 <= nodes <= MAX_NODES:
        raise TestnetError(f"--nodes must be between 1 and {MAX_NODES}")
    if launcher not in LAUNCHERS:
        raise TestnetError(f"unknown launcher {launcher!r}; use one of {', '.join(LAUNCHERS)}")
    subnet = check_subnet(subnet)
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
    if topology == "random" and seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    links = topology_links(nodes, topology, degree, seed or 0)
    entries = []
    for k, name in enumerate(names, start=1):
        host = host_of(subnet, k - 1)
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
    random_graph = topology == "random"
    return Manifest(directory, network, block_time, topology, finality_depth, entries,
                    subnet=subnet, launcher=launcher,
                    degree=degree if random_graph else None, seed=seed if random_graph else None)


def parse_groups(manifest: Manifest, groups: Sequence[str]) -> list[list[str]]:
    """`n1,n2 n3,n4` -> [[n1, n2], [n3, n4]]; nodes named nowhere form one more group."""
    parsed = [split_names(g) for g in groups]
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


def group_index(manifest: Manifest) -> dict[str, int]:
    """Node name -> its group of the current partition (empty when there is none)."""
    if not manifest.partition:
        return {}
    return {name: k for k, group in enumerate(manifest.partition) for name in group}


def split_names(text: str) -> list[str]:
    """`n1, n2,n3` -> [n1, n2, n3]."""
    return [piece.strip() for piece in text.split(",") if piece.strip()]


