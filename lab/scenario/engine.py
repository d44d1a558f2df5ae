"""What every attack scenario shares: the network and its roles, the timeline, transactions
spending one coin twice, mining control, block withholding, and the outcome record.

Everything goes through JSON-RPC, so a scenario runs against any powlab network whose nodes
are reachable: a `powlab testnet` of local processes or a docker compose one.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
)
from lab.scenario.journal import Journal

PAYMENT_FEE = 10_000
# The double spend pays more, as a real attacker's would, so fee-greedy miners prefer it.
DOUBLE_SPEND_FEE = 20_000
POLL_INTERVAL = 0.25
UNREACHABLE = (RPCConnectionError, RPCAuthError, CookieError, OSError)


class ScenarioError(EndpointError):
    """The network is not in a state the scenario can run on (roles, funds, a missing RPC)."""


# --------------------------------------------------------------------------- network


@dataclass
class NetNode:
    """A node by name, with its role, its RPC endpoint and its share of the hash rate."""

    name: str
    role: str
    endpoint: NodeEndpoint
    hashrate_share: float = 0.0

    @property
    def is_miner(self) -> bool:
        return self.role in ("miner", "attacker") or self.hashrate_share > 0

    def call(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return self.endpoint.call(method, *params, timeout=timeout)

    def try_call(self, method: str, *params: Any, timeout: float = 10) -> Any:
        try:
            return self.call(method, *params, timeout=timeout)
        except (*UNREACHABLE, RPCError):
            return None


def load_nodes(directory: str | None, docker: bool = False,
               endpoints: Sequence[str] = ()) -> list[NetNode]:
    """The network's nodes with roles and endpoints: NAME=URL pairs when `endpoints` are
    given (credentials in the URL: http://user:pass@host:port), else the testnet's manifest
    (process or docker), else with `docker` the compose project's containers."""
    from lab.testnet.cli import docker_do, is_docker
    from lab.testnet.manifest import load_manifest, resolve_dir

    if endpoints:
        nodes = [endpoint_node(text) for text in endpoints]
    else:
        path = resolve_dir(directory)
        if docker or is_docker(path):
            def look(net: Any) -> list[NetNode]:
                found = []
                for c in net.containers():
                    url, auth = net.endpoint(c.node)
                    found.append(NetNode(c.node, c.role,
                                         NodeEndpoint(url, (auth[0], auth[1]) if auth else None)))
                return found

            nodes = docker_do(path, None, look)
        else:
            from lab.testnet.control import endpoint

            manifest = load_manifest(path)
            nodes = [NetNode(e.name, e.role, endpoint(e), e.hashrate_share)
                     for e in manifest.nodes]
    if not nodes:
        raise ScenarioError("no nodes: start a testnet (`powlab testnet up`) or name them "
                            "with --rpc NAME=URL")
    refuse_finality_split(nodes)
    return nodes


def endpoint_node(text: str) -> NetNode:
    """NAME=URL[,ROLE]: a node reached at URL (http://user:password@host:port)."""
    from urllib.parse import urlsplit, urlunsplit

    name, sep, rest = text.partition("=")
    url, _, role = rest.partition(",")
    parts = urlsplit(url)
    if not sep or not name or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(f"--rpc {text!r}: expected NAME=http://[USER:PASSWORD@]HOST:PORT"
                            "[,ROLE]")
    auth = (parts.username or "", parts.password or "") if parts.username else None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return NetNode(name, role or "node", NodeEndpoint(clean, auth))


def refuse_finality_split(nodes: Sequence[NetNode]) -> None:
    """Attacks start from one chain: refuse, saying why, while a node stays on a branch after
    refusing a heavier one beyond finality (the split a previous attack may have left)."""
    for node in nodes:
        info = node.try_call("getblockchaininfo")
        conflicts = (info or {}).get("finality_conflicts") or []
        if conflicts:
            c = conflicts[0]
            raise ScenarioError(
                f"{node.name} is on a branch refused beyond finality (a heavier branch, tip "
                f"{c['hash'][:16]}… at height {c['height']}, forks at height "
                f"{c['fork_height']}): run `powlab testnet heal --resolve` (on a Docker "
                "testnet: invalidateblock on its own block above the fork, then "
                "reconsiderblock on the heavier tip)")


@dataclass
class Roles:
    """Who plays what: the attacker, the victim, the honest miners, every node but the
    attacker (`others`) and all of them (`nodes`)."""

    attacker: NetNode
    victim: NetNode
    honest: list[NetNode]  # honest miners
    others: list[NetNode]  # every node but the attacker (victim included)
    nodes: list[NetNode]

    def names(self) -> dict[str, Any]:
        return {"attacker": self.attacker.name, "victim": self.victim.name,
                "honest": [n.name for n in self.honest]}


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def resolve_roles(nodes: list[NetNode], attacker: str | None, victim: str | None,
                  honest: str | None) -> Roles:
    """Explicit names win; else role `attacker`/the last miner, role `merchant`/the last
    non-miner, and the other miners."""
    by_name = {n.name: n for n in nodes}

    def named(name: str) -> NetNode:
        if name not in by_name:
            raise ScenarioError(f"no node {name!r} (nodes: {', '.join(by_name)})")
        return by_name[name]

    miners = [n for n in nodes if n.is_miner]
    if attacker:
        att = named(attacker)
    else:
        tagged = [n for n in nodes if n.role == "attacker"]
        if not tagged and not miners:
            raise ScenarioError("no miner to play the attacker; name one with --attacker")
        att = tagged[0] if tagged else miners[-1]
    if victim:
        vic = named(victim)
    else:
        tagged = [n for n in nodes if n.role == "merchant" and n is not att]
        plain = [n for n in nodes if not n.is_miner and n is not att]
        if not tagged and not plain:
            raise ScenarioError("no non-mining node to play the victim; name one with --victim")
        vic = tagged[0] if tagged else plain[-1]
    if vic is att:
        raise ScenarioError("the attacker and the victim must be different nodes")
    if honest:
        hon = [named(n) for n in _split(honest)]
    else:
        hon = [n for n in miners if n is not att and n is not vic]
    if any(n is att for n in hon):
        raise ScenarioError("the attacker cannot also be an honest miner")
    others = [n for n in nodes if n is not att]
    return Roles(att, vic, hon, others, nodes)


# --------------------------------------------------------------------------- timeline


@dataclass
class Timeline:
    """The run's events in order: each a dict with `t` (seconds since the start), `node`,
    `event` and any extra fields; the live printer, --json and the plot all read it."""

    start: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    echo: Callable[[dict[str, Any]], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds since the run started."""
        return round(time.monotonic() - self.start, 3)

    def mark(self, node: str, event: str, /, **extra: Any) -> dict[str, Any]:
        """Adds an event (`node` is a name, or "*" for the whole network) and prints it live.
        `t`, `node` and `event` are the event's own fields: other names only in `extra`."""
        clash = {"t", "node", "event"} & set(extra)
        if clash:
            raise ValueError(f"timeline.mark: {', '.join(sorted(clash))} is an event's own "
                             "field; name the figure otherwise (e.g. peer=…)")
        item = {"t": self.now(), "node": node, "event": event, **extra}
        with self._lock:
            self.events.append(item)
        if self.echo is not None:
            self.echo(item)
        return item

    def sample(self, **values: Any) -> None:
        """Adds a sample for the plot (the monitor adds heights and confirmations)."""
        with self._lock:
            self.samples.append({"t": self.now(), **values})

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The first event for which `predicate` is true, or None."""
        with self._lock:
            return next((e for e in self.events if predicate(e)), None)


@dataclass
class Outcome:
    """The fields every attack reports; `net.report(**outcome.as_report())` reports them."""

    attack: str
    success: bool = False
    reorg_depth: int = 0
    victim_confirmations_seen: int = 0
    detected: bool = False
    verdict: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        """The keyword arguments of `Network.report` for this outcome."""
        return {
            "verdict": self.verdict,
            "success": self.success,
            "reorg_depth": self.reorg_depth,
            "victim_confirmations_seen": self.victim_confirmations_seen,
            "detected": self.detected,
            **self.details,
        }


# --------------------------------------------------------------------------- monitor


class Monitor:
    """Polls every node in the background and writes what changed into the timeline: tips
    (with reorganisations and their depth), and the status of the tracked transactions as
    each node sees them. The samples it keeps are what the plot draws."""

    def __init__(self, timeline: Timeline, nodes: Sequence[NetNode],
                 attacker: NetNode | None = None, victim: NetNode | None = None,
                 interval: float = POLL_INTERVAL) -> None:
        self.timeline = timeline
        self.nodes = list(nodes)
        self.attacker = attacker
        self.victim = victim
        self.interval = interval
        self.txids: dict[str, str] = {}
        self.tips: dict[str, tuple[str, int]] = {}
        self.tx_seen: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.victim_status: dict[str, dict[str, Any]] = {}
        self.max_victim_conf = 0
        self.victim_statuses: list[str] = []
        self.reorgs: list[dict[str, Any]] = []
        self.track_all_txs = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def track(self, label: str, txid: str) -> None:
        with self._lock:
            self.txids[label] = txid

    def __enter__(self) -> Monitor:
        self.poll()
        self._thread = threading.Thread(target=self._run, name="attack-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ends polling; the timeline then stops before the testnet is handed back."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # a malformed answer must not end the watching
                if not reported:
                    self.timeline.mark("*", "monitor error", message=f"{type(exc).__name__}: "
                                                                     f"{exc}"[:200])
                    reported = True

    def poll(self) -> None:
        with self._lock:
            txids = dict(self.txids)
        heights: dict[str, int | None] = {}
        if not self.nodes:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(self.nodes))) as pool:
            results = list(pool.map(lambda n: self._poll_node(n, txids), self.nodes))
        for node, height in zip(self.nodes, results, strict=True):
            heights[node.name] = height
        victim = self.victim_status.get("tx1", {})
        self.timeline.sample(
            heights=heights,
            attacker=heights.get(self.attacker.name) if self.attacker else None,
            honest=heights.get(self.victim.name) if self.victim else None,
            victim_confirmations=victim.get("confirmations"),
            victim_status=victim.get("status"),
        )

    def _poll_node(self, node: NetNode, txids: dict[str, str]) -> int | None:
        try:
            info = node.call("getblockchaininfo", timeout=10)
        except (*UNREACHABLE, RPCError):
            return None
        tip, height = info["bestblockhash"], info["blocks"]
        old = self.tips.get(node.name)
        if old is None or old[0] != tip:
            self.tips[node.name] = (tip, height)
            if old is not None:
                depth = self._reorg_depth(node, old[0])
                if depth:
                    reorg = {"node": node.name, "depth": depth, "old_tip": old[0],
                             "new_tip": tip}
                    self.reorgs.append(reorg)
                    self.timeline.mark(node.name, "reorg", depth=depth, old_tip=old[0][:16],
                                      new_tip=tip[:16], height=height)
                self.timeline.mark(node.name, "tip", height=height, hash=tip[:16])
        is_victim = node is self.victim
        for label, txid in txids.items():
            if not (is_victim or self.track_all_txs):
                continue
            try:
                st = node.call("gettransaction", txid, timeout=10)
            except (*UNREACHABLE, RPCError):
                continue
            key = (st.get("status"), st.get("confirmations"), bool(st.get("double_spend_alert")),
                   tuple(st.get("conflicts") or ()), st.get("accepted_zero_conf"))
            if is_victim:
                self.victim_status[label] = st
                if label == "tx1":
                    conf = st.get("confirmations") or 0
                    self.max_victim_conf = max(self.max_victim_conf, conf)
                    if not self.victim_statuses or self.victim_statuses[-1] != st["status"]:
                        self.victim_statuses.append(st["status"])
            if self.tx_seen.get((node.name, label)) == key or st.get("status") == "unknown":
                continue
            self.tx_seen[(node.name, label)] = key
            extra: dict[str, Any] = {"txid": txid[:16], "status": st.get("status"),
                                     "confirmations": st.get("confirmations")}
            if st.get("conflicts"):
                extra["conflicts"] = [c[:16] for c in st["conflicts"]]
            if st.get("double_spend_alert"):
                extra["double_spend_alert"] = True
            if "accepted_zero_conf" in st:
                extra["accepted_zero_conf"] = st["accepted_zero_conf"]
            self.timeline.mark(node.name, label, **extra)
        return height

    @staticmethod
    def _reorg_depth(node: NetNode, old_tip: str) -> int:
        """How many blocks of the old active chain the node disconnected (0: none)."""
        depth, cursor = 0, old_tip
        for _ in range(1000):
            header = node.try_call("getblockheader", cursor)
            if header is None or header.get("confirmations", -1) >= 0:
                return depth
            depth += 1
            cursor = header["previousblockhash"]
        return depth


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """lab.waiting's one helper, failing as an ScenarioError (reported as one line, not a
    traceback); a scenario's steps are short, so it polls every 0.1 s by default."""
    return waiting.wait_until(predicate, timeout, what, interval, ScenarioError)


def parallel(calls: Iterable[Callable[[], Any]]) -> list[Any]:
    """Runs the calls at (nearly) the same moment: a race must not favour the first one."""
    jobs = list(calls)
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


def tips(nodes: Sequence[NetNode]) -> dict[str, str | None]:
    return {n.name: n.try_call("getbestblockhash") for n in nodes}


def wait_converged(nodes: Sequence[NetNode], timeout: float = 60.0,
                   tie_breaker: NetNode | None = None) -> str:
    """Until every node has the same tip. Two blocks found at once just before mining was
    paused leave a tie nobody breaks; after a few seconds `tie_breaker` mines one block."""
    last: list[str | None] = [None]
    started = time.monotonic()
    broke = [False]

    def same() -> str | None:
        seen = set(tips(nodes).values())
        tip = seen.pop() if len(seen) == 1 and None not in seen else None
        # The same tip twice in a row: nothing still propagating.
        stable = tip if tip is not None and tip == last[0] else None
        last[0] = tip
        if stable is None and tie_breaker is not None and not broke[0] \
                and time.monotonic() - started > 5:
            broke[0] = True
            tie_breaker.call("generatetoaddress", 1, tie_breaker.call("getnewaddress"))
        return stable

    return wait_until(same, timeout, f"{', '.join(n.name for n in nodes)} to agree on a tip")


def wait_tip(nodes: Sequence[NetNode], block_hash: str, timeout: float = 30.0) -> None:
    wait_until(lambda: all(v == block_hash for v in tips(nodes).values()), timeout,
               f"{', '.join(n.name for n in nodes)} to reach {block_hash[:16]}")


def chainwork(node: NetNode) -> int:
    """The node's active chain's total work."""
    return int(node.call("getblockchaininfo")["chainwork"], 16)


@dataclass
class MiningState:
    mining: bool
    limit: float | None


# A ban that outlasts any scenario; the scenario lifts it itself when it reconnects the node.
ISOLATION_BAN_SECONDS = 24 * 3600


@dataclass
class Cut:
    """Links cut by bans (both ends ban each other's host) and links added between nodes
    that must stay in touch; lifting it redials the cut links at once."""

    ids: dict[str, str]  # node name -> P2P node id (hex)
    dial: dict[str, str]  # node name -> NODEID@HOST:PORT
    bans: list[tuple[NetNode, str]] = field(default_factory=list)  # (who bans, host)
    journal: Journal = field(default_factory=lambda: Journal(None))
    cut: list[tuple[NetNode, NetNode]] = field(default_factory=list)  # peers cut apart
    added: list[tuple[NetNode, NetNode]] = field(default_factory=list)  # (who dials, whom)
    # The bans this cut set itself: a host its node banned (or discouraged) before stays
    # banned afterwards, so only these are lifted.
    applied: list[tuple[NetNode, str]] = field(default_factory=list)

    def describe(self) -> str:
        text = ("banned " + ", ".join(f"{a.name}<->{b.name}" for a, b in self.cut)
                if self.cut else "no links to ban")
        if self.added:
            text += "; added " + ", ".join(f"{a.name}<->{b.name}" for a, b in self.added)
        return text

    def apply(self) -> None:
        before: dict[str, set[str]] = {}
        for who, host in self.bans:
            if who.name not in before:
                listed = who.call("listbanned") or []
                before[who.name] = {str(e.get("address")) for e in listed if isinstance(e, dict)}
            if host in before[who.name]:
                continue  # someone else's ban (or a discouragement): not ours to lift
            self.journal.record("bans", who.name, host)
            self.applied.append((who, host))
            who.call("setban", host, "add", ISOLATION_BAN_SECONDS)
        # From here `added` holds only the links this cut made, whatever fails next.
        wanted, self.added = self.added, []
        for a, b in wanted:
            try:
                a.call("addnode", self.dial[b.name], "add")
            except RPCError:
                continue  # already added: the link is someone else's, the restore leaves it
            self.journal.record("links", a.name, self.dial[b.name])
            self.added.append((a, b))
        if self.added:
            wait_until(self.links_up, 30, "the added links (" + self.describe() + ")")

    def links_up(self) -> bool:
        for a, b in self.added:
            peers = a.try_call("getpeerinfo") or []
            if not any(p.get("node_id") == self.ids[b.name] and p.get("status") == "established"
                       for p in peers):
                return False
        return True

    def lift(self) -> int:
        """Lifts the bans this cut set; how many nodes did not answer (those stay banned)."""
        missed = 0
        # Each call on its own: a node that is down must not keep the others banned.
        for who, host in self.applied:
            missed += not answered(who, "setban", host, "remove")
        self.applied.clear()
        # Redial at once rather than at the next reconnect interval.
        for a, b in self.cut:
            with contextlib.suppress(RPCError, *UNREACHABLE):
                a.call("addnode", self.dial[b.name], "onetry")
        return missed

    def remove_added(self) -> int:
        missed = 0
        for a, b in self.added:
            missed += not answered(a, "addnode", self.dial[b.name], "remove")
            for peer in a.try_call("getpeerinfo") or []:
                if peer.get("node_id") == self.ids[b.name]:
                    with contextlib.suppress(RPCError, *UNREACHABLE):
                        a.call("disconnectnode", "", peer["id"])
        return missed


def answered(node: NetNode, method: str, *params: Any) -> bool:
    """Calls `method`; False only when the node did not answer (an RPC error is an answer:
    there was nothing of that kind to undo)."""
    try:
        node.call(method, *params, timeout=10)
    except RPCError:
        return True
    except UNREACHABLE:
        return False
    return True


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0].strip("[]")


def _components(names: list[str], adj: dict[str, set[str]]) -> list[list[str]]:
    seen: set[str] = set()
    parts: list[list[str]] = []
    for start in names:
        if start in seen:
            continue
        part, todo = [], [start]
        seen.add(start)
        while todo:
            cur = todo.pop()
            part.append(cur)
            for nxt in adj.get(cur, ()):
                if nxt in names and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        parts.append(sorted(part, key=names.index))
    return parts


@dataclass
class Survey:
    """The P2P graph as the nodes report it: node ids, dialable addresses, hosts, peers."""

    order: list[str]  # reachable nodes, in manifest order
    by_name: dict[str, NetNode]
    ids: dict[str, str]  # node name -> P2P node id (hex)
    dial: dict[str, str]  # node name -> NODEID@HOST:PORT
    host_of: dict[str, str]  # node name -> host address its peers see
    adj: dict[str, set[str]]


def survey(nodes: Sequence[NetNode]) -> Survey | None:
    """From every node's getnetworkinfo and getpeerinfo. None when links cannot be cut one by
    one: a node does not report its P2P node id, or nodes share a host address (a host ban
    would hit several nodes)."""
    def look(n: NetNode) -> tuple[Any, Any]:
        return n.try_call("getnetworkinfo"), n.try_call("getpeerinfo")

    ids: dict[str, str] = {}
    p2p: dict[str, str] = {}
    peers: dict[str, list[dict[str, Any]]] = {}
    for n, (info, peer_list) in zip(nodes, parallel([lambda n=n: look(n) for n in nodes]),
                                    strict=True):
        if info and not info.get("node_id"):
            return None
        if not info or peer_list is None:
            continue  # unreachable: it can neither be cut nor relay
        ids[n.name], p2p[n.name] = info["node_id"], str(info.get("p2p") or "")
        peers[n.name] = [p for p in peer_list if p.get("status") == "established"]
    by_id = {v: k for k, v in ids.items()}
    host_of: dict[str, str] = {}
    adj: dict[str, set[str]] = {name: set() for name in ids}
    for name, plist in peers.items():
        for p in plist:
            other = by_id.get(p.get("node_id", ""))
            if other is None:
                continue
            host_of.setdefault(other, _host(p["addr"]))
            adj[name].add(other)
            adj[other].add(name)
    if len(set(host_of.values())) < len(host_of):
        return None
    dial: dict[str, str] = {}
    for name in ids:
        host, _, port = p2p[name].rpartition(":")
        if host.strip("[]") in ("", "0.0.0.0", "::") and name in host_of:
            host = host_of[name]
        dial[name] = f"{ids[name]}@{host}:{port}"
    return Survey([n.name for n in nodes if n.name in ids], {n.name: n for n in nodes},
                  ids, dial, host_of, adj)


def join_links(sv: Survey, names: list[str], prefer: set[str]) -> list[tuple[NetNode, NetNode]]:
    """Links (dialler, dialled) that join the parts `names` fall into, ignoring every other
    node; each part is joined at a node of `prefer` where it has one."""
    inside = set(names)
    parts = _components(names, {k: v & inside for k, v in sv.adj.items()})
    anchors = [next((x for x in part if x in prefer), part[0]) for part in parts]
    return [(sv.by_name[a], sv.by_name[b]) for a, b in itertools.pairwise(anchors)]


def partition_cut(sv: Survey, groups: list[list[str]]) -> Cut:
    """Bans between every node of one group and every node of the others; links added
    inside a group that its own nodes would not keep connected."""
    cut = Cut(sv.ids, sv.dial)
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            for x in a:
                for y in b:
                    nx, ny = sv.by_name[x], sv.by_name[y]
                    cut.bans += [(nx, sv.host_of[y]), (ny, sv.host_of[x])]
                    if y in sv.adj[x]:
                        cut.cut.append((nx, ny))
    for g in groups:
        cut.added += join_links(sv, g, set())
    return cut


def cut_links(nodes: Sequence[NetNode], isolated: NetNode) -> Cut | None:
    """Plans cutting `isolated` off by links (see Network.isolate); None: see `survey`."""
    sv = survey(nodes)
    me = isolated.name
    if sv is None or me not in sv.ids:
        return None
    cut = Cut(sv.ids, sv.dial)
    for x in sv.order:
        if x in sv.adj[me]:
            b = sv.by_name[x]
            cut.cut.append((isolated, b))
            cut.bans += [(isolated, sv.host_of[x]), (b, sv.host_of[me])]
    # Join the parts the cut leaves, each at a former neighbour of the isolated node.
    cut.added = join_links(sv, [x for x in sv.order if x != me], sv.adj[me])
    return cut


class Switches:
    """Mining and P2P switches, remembered so the testnet is left as it was found."""

    def __init__(self, nodes: Sequence[NetNode], timeline: Timeline) -> None:
        self.nodes = list(nodes)
        self.timeline = timeline
        self.saved: dict[str, MiningState] = {}
        self.isolated: set[str] = set()
        self.cuts: dict[str, Cut] = {}
        self.lifted: list[Cut] = []
        self.faults: list[tuple[NetNode, str]] = []  # (node, peer HOST:PORT) with a fault
        self.journal = Journal(None)  # the runner gives it a file: see lab/scenario/journal.py
        self.undo: list[Callable[[], Any]] = []  # the scenario's own (Network.on_restore)
        self.incomplete = False  # a restore found a node that did not answer
        self.before_restore: Callable[[], None] | None = None

    def save(self) -> None:
        """Records each node's mining state; the first record is what `restore` gives back."""
        if self.saved:
            return
        for node in self.nodes:
            info = node.try_call("getmininginfo")
            if info is not None:
                self.saved[node.name] = MiningState(bool(info.get("mining")),
                                                    info.get("hashrate_limit"))
        self.journal.mining({k: (v.mining, v.limit) for k, v in self.saved.items()})

    def set_mining(self, node: NetNode, enabled: bool, rate: float | None = None) -> None:
        node.call("setmining", enabled, rate)
        self.timeline.mark(node.name, "mining on" if enabled else "mining off",
                          **({"hashrate": round(rate, 4)} if enabled and rate else {}))

    def stop_all_mining(self) -> None:
        def stop(node: NetNode) -> None:
            # Every node, not only those found mining: the scenario may have started others.
            with contextlib.suppress(*UNREACHABLE):
                node.call("setmining", False)

        parallel([lambda n=n: stop(n) for n in self.nodes])
        # A block a miner found just before it stopped may still be on its way: let it land
        # now rather than in the middle of the scenario.
        time.sleep(1.0)
        self.timeline.mark("*", "mining paused", note="every node stops mining for the setup")

    def isolate(self, node: NetNode) -> None:
        """Cuts `node` off by its links only: it and each of its peers ban each other, and
        where that would split the other nodes, `addnode` links the cut-off parts together
        (between nodes that were the isolated node's neighbours). The rest of the network
        keeps gossiping; the timeline says which links were cut and added."""
        cut = cut_links(self.nodes, node)
        if cut is None:
            # No node ids, or shared host addresses: the whole node goes off the network.
            self.journal.record("offline", node.name)
            node.call("setnetworkactive", False)
            self.isolated.add(node.name)
            self.timeline.mark(node.name, "isolated", note="setnetworkactive false")
            return
        self.apply_cut(node.name, cut, "isolated")

    def apply_cut(self, key: str, cut: Cut, event: str) -> None:
        # Recorded first: if applying fails half-way, the restore still lifts what was done.
        self.cuts[key] = cut
        cut.journal = self.journal
        cut.apply()
        self.timeline.mark(key, event, note=cut.describe())

    def lift_cut(self, key: str, event: str) -> None:
        cut = self.cuts.pop(key)
        cut.lift()
        self.lifted.append(cut)
        self.timeline.mark(key, event,
                          note="unbanned " + ", ".join(f"{a.name}<->{b.name}" for a, b in cut.cut))

    def reconnect(self, node: NetNode) -> None:
        if node.name in self.cuts:
            self.lift_cut(node.name, "reconnected")
            return
        node.call("setnetworkactive", True)
        self.isolated.discard(node.name)
        self.timeline.mark(node.name, "reconnected", note="setnetworkactive true")

    def partition(self, groups: list[list[str]]) -> None:
        sv = survey(self.nodes)
        if sv is None:
            raise ScenarioError("a partition needs every node to report its node id, each on "
                                "its own host address (a ban on a shared host cuts several)")
        named = [x for g in groups for x in g]
        if len(groups) < 2 or any(not g for g in groups):
            raise ScenarioError("a partition needs at least two non-empty groups")
        if len(set(named)) < len(named):
            raise ScenarioError("a node is in more than one group: " + ", ".join(groups[0]))
        left_out = [x for x in sv.order if x not in named]
        if left_out:
            # A node in no group would bridge the groups: no partition at all.
            raise ScenarioError(f"every node must be in a group; missing: {', '.join(left_out)}")
        unreachable = [x for x in named if x not in sv.ids]
        if unreachable:
            raise ScenarioError(f"cannot partition: {', '.join(unreachable)} does not answer")
        key = "partition" if "partition" not in self.cuts else f"partition {len(self.cuts)}"
        self.apply_cut(key, partition_cut(sv, groups), "partition")
        self.timeline.mark("*", "groups", groups=" | ".join(",".join(g) for g in groups))

    def heal(self) -> None:
        for key in [k for k in self.cuts if k.startswith("partition")]:
            self.lift_cut(key, "healed")
        for key in list(self.cuts):
            self.lift_cut(key, "reconnected")
        for name in list(self.isolated):
            node = next(n for n in self.nodes if n.name == name)
            self.reconnect(node)

    def connect(self, a: NetNode, b: NetNode) -> None:
        sv = survey(self.nodes)
        if sv is None or a.name not in sv.ids or b.name not in sv.ids:
            raise ScenarioError(f"cannot link {a.name} to {b.name}: a node id or address is "
                                "unknown")
        cut = Cut(sv.ids, sv.dial, added=[(a, b)], journal=self.journal)
        self.lifted.append(cut)  # the restore removes the link again
        cut.apply()
        self.timeline.mark(a.name, "connected", to=b.name,
                           note="already linked" if not cut.added else "addnode")

    def link_fault(self, a: NetNode, b: NetNode, fault: dict[str, float]) -> None:
        ids = {n.name: (n.try_call("getnetworkinfo") or {}).get("node_id") for n in (a, b)}
        ends = []
        for x, y in ((a, b), (b, a)):
            peer = next((p for p in x.try_call("getpeerinfo") or []
                         if p.get("node_id") and p.get("node_id") == ids[y.name]), None)
            if peer is None:
                raise ScenarioError(f"no link between {a.name} and {b.name} to put a fault on")
            ends.append((x, str(peer["addr"])))
        for x, addr in ends:
            self.journal.record("faults", x.name, addr)
            self.faults.append((x, addr))
            x.call("setlinkfault", fault, addr)
        self.timeline.mark(a.name, "link fault", peer=b.name, **fault)

    def clear_link_faults(self) -> int:
        """Clears the faults this run set; how many nodes did not answer."""
        touched = bool(self.faults)
        missed = sum(not answered(node, "setlinkfault", {}, addr) for node, addr in self.faults)
        self.faults.clear()
        if touched:
            self.timeline.mark("*", "link faults cleared")
        return missed

    def restore(self) -> None:
        if self.before_restore is not None:
            self.before_restore()
        while self.undo:
            with contextlib.suppress(*UNREACHABLE, RPCError):
                self.undo.pop()()
        missed = self.clear_link_faults()
        for node in self.nodes:
            if node.name in self.isolated:
                missed += not answered(node, "setnetworkactive", True)
        self.isolated.clear()
        for cut in list(self.cuts.values()):
            missed += cut.lift()
            self.lifted.append(cut)
        self.cuts.clear()
        # Links the scenario added go again, so the testnet keeps the topology it had.
        for cut in self.lifted:
            missed += cut.remove_added()
        self.lifted.clear()
        for node in self.nodes:
            state = self.saved.get(node.name)
            if state is None:
                continue
            # The cap too: a node found without one gets none back (-1 lifts it).
            missed += not answered(node, "setmining", state.mining, state.limit or -1)
        if missed:
            # The journal stays, for good: the next run on this testnet undoes what is left.
            self.incomplete = True
            self.timeline.mark("*", "not handed back", unanswered_calls=missed,
                               note="the next run on this testnet retries from the journal")
        if not self.incomplete:
            self.journal.close()


@contextlib.contextmanager
def staged(network: Switches) -> Iterator[Switches]:
    """Pause mining for the setup; whatever happens, give the nodes back as they were."""
    network.save()
    try:
        network.stop_all_mining()
        yield network
    finally:
        network.restore()


# --------------------------------------------------------------------------- transactions


@dataclass
class DoubleSpend:
    """Two signed spends of one coin (raw hex tx1, tx2 and their txids): tx1 pays the
    victim, tx2 sends the coin back to the attacker with a higher fee."""

    coin: dict[str, Any]
    tx1: str  # raw hex: pays the victim
    tx2: str  # raw hex: the same coin back to the attacker
    txid1: str = ""
    txid2: str = ""
    amount: int = 0


def make_double_spend(attacker: NetNode, victim: NetNode, amount: int,
                      rng: random.Random, replaceable: bool = False) -> DoubleSpend:
    """tx1 pays `amount` to a fresh victim address (change to the attacker); tx2 sends the
    whole coin to a fresh attacker address. Both are signed by the attacker's wallet;
    `replaceable`: tx1 signals BIP125 (what an opt-in node needs to let tx2 replace it)."""
    coins = [c for c in attacker.call("listunspent", 1)
             if c.get("spendable", True) and c["amount"] > amount + DOUBLE_SPEND_FEE]
    if not coins:
        raise ScenarioError(f"{attacker.name} has no spendable coin above {amount}; mine or "
                          "fund it first (coinbase outputs mature after 100 blocks)")
    # Deterministic choice for a seed, but not always the same coin across runs with
    # different seeds.
    coins.sort(key=lambda c: (c["txid"], c["vout"]))
    coin = rng.choice(coins)
    outpoint = [{"txid": coin["txid"], "vout": coin["vout"]}]
    pay_to = victim.call("getnewaddress")
    change = attacker.call("getnewaddress")
    back = attacker.call("getnewaddress")
    outputs1 = {pay_to: amount}
    rest = coin["amount"] - amount - PAYMENT_FEE
    if rest > 0:
        outputs1[change] = rest
    raw1 = (attacker.call("createrawtransaction", outpoint, outputs1, 0, True) if replaceable
            else attacker.call("createrawtransaction", outpoint, outputs1))
    raw2 = attacker.call("createrawtransaction", outpoint,
                         {back: coin["amount"] - DOUBLE_SPEND_FEE})
    signed1 = attacker.call("signrawtransactionwithwallet", raw1)
    signed2 = attacker.call("signrawtransactionwithwallet", raw2)
    if not (signed1.get("complete") and signed2.get("complete")):
        raise ScenarioError(f"{attacker.name}'s wallet could not sign the spends of its coin")
    ds = DoubleSpend(coin, signed1["hex"], signed2["hex"], amount=amount)
    ds.txid1 = attacker.call("decoderawtransaction", ds.tx1)["txid"]
    ds.txid2 = attacker.call("decoderawtransaction", ds.tx2)["txid"]
    return ds


def send_tx(node: NetNode, raw: str, timeline: Timeline, label: str) -> str | None:
    """sendrawtransaction; a rejection (the conflict already there) is an event, not a crash."""
    try:
        txid = node.call("sendrawtransaction", raw)
    except RPCError as exc:
        timeline.mark(node.name, f"{label} rejected", reason=exc.message)
        return None
    timeline.mark(node.name, f"{label} sent", txid=txid[:16])
    return txid


# --------------------------------------------------------------------------- blocks


@dataclass
class Withheld:
    """A mined block not yet given to the network: its hash and raw hex."""

    hash: str
    hex: str
    via_isolation: bool = False  # the attacker holds it as its tip, cut off from the network


def withhold_block(network: Switches, attacker: NetNode, address: str, txs: list[str]
                   ) -> Withheld:
    """Mines a block with exactly `txs` and keeps it from the network.

    `generateblock ADDR TXS false` returns the block without submitting it. A node that does
    not know the third parameter gets the same effect by mining it while cut off
    (`setnetworkactive false`); the caller must then reconnect the attacker when it
    releases."""
    try:
        result = attacker.call("generateblock", address, txs, False)
        if isinstance(result, dict) and result.get("hex"):
            network.timeline.mark(attacker.name, "block withheld", hash=result["hash"][:16],
                                 method="generateblock submit=false")
            return Withheld(result["hash"], result["hex"], False)
    except RPCError as exc:
        if "given" not in exc.message and "parameter" not in exc.message:
            raise
    network.isolate(attacker)
    block_hash = attacker.call("generateblock", address, txs)["hash"]
    hexdata = attacker.call("getblock", block_hash, 0)
    network.timeline.mark(attacker.name, "block withheld", hash=block_hash[:16],
                         method="mined while isolated (generateblock has no submit=false)")
    return Withheld(block_hash, hexdata, True)


def submit_block(node: NetNode, hexdata: str, block_hash: str, timeline: Timeline,
                 label: str = "block released") -> str | None:
    reason = node.call("submitblock", hexdata)
    timeline.mark(node.name, label, hash=block_hash[:16],
                 **({"result": reason} if reason else {}))
    return reason


def mine_one(node: NetNode, timeline: Timeline, label: str = "block mined") -> str:
    address = node.call("getnewaddress")
    block_hash = node.call("generatetoaddress", 1, address, timeout=120)[0]
    block = node.call("getblock", block_hash)
    timeline.mark(node.name, label, hash=block_hash[:16], height=block["height"],
                 txs=len(block["tx"]) - 1)
    return block_hash


def block_txids(node: NetNode, block_hash: str) -> list[str]:
    return list(node.call("getblock", block_hash)["tx"])


def hashes_per_block(node: NetNode) -> float:
    """Expected hashes to find a block at the tip's difficulty: 2**256 / (target + 1)."""
    from consensus.pow import bits_to_target

    header = node.call("getblockheader", node.call("getbestblockhash"))
    return 2**256 / (bits_to_target(int(header["bits"], 16)) + 1)


def finality_depth(node: NetNode) -> int:
    """The confirmations after which the node counts a block final."""
    return int(node.call("getblockchaininfo").get("finality_depth") or 6)


def params_of(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "command", "attack_command", "json", "plot", "dir", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip and not callable(v)}


def plot_path(args: argparse.Namespace) -> Path | None:
    return Path(args.plot) if getattr(args, "plot", None) else None
