"""The `Network` a scenario drives: nodes by name, network shaping, mining, coins, waiting and
the report. Every change it makes is remembered and undone when the run ends, even when the
scenario raises, so the testnet is left healed and mining as it was found."""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from lab.scenario import engine
from lab.scenario import nodes as scenario_nodes
from lab.scenario.engine import (
    UNREACHABLE,
    DoubleSpend,
    Monitor,
    NetNode,
    Roles,
    ScenarioError,
    Switches,
    Timeline,
    Withheld,
)


class Node(NetNode):
    """One node of the network. Any RPC is a method: `node.getblockchaininfo()`,
    `node.sendtoaddress(addr, amount)`; `call` and `try_call` take the method by name."""

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def rpc(*params: Any, timeout: float = 60) -> Any:
            return self.call(method, *params, timeout=timeout)

        rpc.__name__ = method
        return rpc

    def __repr__(self) -> str:
        return f"Node({self.name!r}, role={self.role!r})"


class Network:
    """A running powlab network (process testnet, compose, or any RPC endpoints) as a
    scenario sees it.

    Attributes: `nodes` (name → `Node`, in manifest order), `args` (the scenario's parsed
    arguments), `rng` (a `random.Random` seeded with `seed`), `timeline` (the events the
    report prints, with `timeline.mark(node, event, **extra)`), `monitor` (the background
    poller that writes tips, reorganisations and tracked transactions into the timeline).
    """

    def __init__(self, nodes: Sequence[Node], args: argparse.Namespace, seed: int,
                 timeline: Timeline | None = None) -> None:
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.args = args
        self.seed = seed
        self.rng = random.Random(seed)
        self.timeline = timeline or Timeline()
        self._roles: Roles | None = None
        self._roles_error: ScenarioError | None = None
        try:
            self._roles = engine.resolve_roles(
                list(nodes), getattr(args, "attacker", None), getattr(args, "victim", None),
                getattr(args, "honest", None))
        except ScenarioError as exc:
            self._roles_error = exc
        roles = self._roles
        self.monitor = Monitor(self.timeline, list(nodes),
                               roles.attacker if roles else None, roles.victim if roles else None)
        self.switches = Switches(list(nodes), self.timeline)
        self.switches.before_restore = self._last_look
        self.outcome: dict[str, Any] | None = None

    # ----------------------------------------------------------------- nodes and roles

    def node(self, ref: str | NetNode) -> Node:
        """The node named `ref` (a `Node` is returned as it is)."""
        if isinstance(ref, NetNode):
            return ref  # type: ignore[return-value]
        if ref not in self.nodes:
            raise ScenarioError(f"no node {ref!r} (nodes: {', '.join(self.nodes)})")
        return self.nodes[ref]

    @property
    def roles(self) -> Roles:
        """attacker, victim, honest miners and the others, from --attacker/--victim/--honest,
        else the manifest's roles (attacker: role attacker or the last miner; victim: role
        merchant or the last non-miner; honest: the other miners)."""
        if self._roles is None:
            raise self._roles_error or ScenarioError("no roles")
        return self._roles

    @property
    def attacker(self) -> Node:
        """The attacker's node (see `roles`)."""
        return self.roles.attacker  # type: ignore[return-value]

    @property
    def victim(self) -> Node:
        """The victim's node, the merchant (see `roles`)."""
        return self.roles.victim  # type: ignore[return-value]

    @property
    def honest(self) -> list[Node]:
        """The honest miners (see `roles`)."""
        return self.roles.honest  # type: ignore[return-value]

    def _all(self, nodes: Iterable[str | NetNode] | None) -> list[Node]:
        return [self.node(n) for n in nodes] if nodes is not None else list(self.nodes.values())

    # ----------------------------------------------------------------- shaping

    @contextlib.contextmanager
    def staged(self) -> Iterator[Network]:
        """Stops every miner for the setup; on leaving, gives every switch back (mining,
        cuts, partitions, link faults) as it was found."""
        with engine.staged(self.switches):
            yield self

    def partition(self, *groups: Iterable[str | NetNode]) -> None:
        """Splits the network into `groups` (every node in exactly one): nodes of different
        groups ban each other's hosts; links are added inside a group its own links would
        not keep connected."""
        names = [[self.node(n).name for n in g] for g in groups]
        self.switches.partition(names)

    def heal(self) -> None:
        """Lifts every partition and isolation this scenario made; cut links redial at once."""
        self.switches.heal()

    def isolate(self, node: str | NetNode) -> None:
        """Cuts `node` off from all its peers (the rest of the network stays connected)."""
        self.switches.isolate(self.node(node))

    def reconnect(self, node: str | NetNode) -> None:
        """Undoes `isolate(node)`."""
        self.switches.reconnect(self.node(node))

    def connect(self, a: str | NetNode, b: str | NetNode) -> None:
        """A persistent link from `a` to `b` (addnode), removed when the run ends."""
        self.switches.connect(self.node(a), self.node(b))

    def link_fault(self, a: str | NetNode, b: str | NetNode, delay: float = 0.0,
                   loss: float = 0.0, jitter: float = 0.0,
                   bandwidth_kbps: float | None = None) -> None:
        """Delay (seconds), jitter (seconds), loss (0..1, datagrams) and a bandwidth cap on
        the link between `a` and `b`, both directions (setlinkfault on each end for the
        other's address). The link must be up; `clear_link_faults` or the end of the run
        lifts it."""
        fault: dict[str, float] = {}
        if delay:
            fault["delay_ms"] = delay * 1000
        if jitter:
            fault["jitter_ms"] = jitter * 1000
        if loss:
            fault["loss"] = loss
        if bandwidth_kbps:
            fault["bandwidth_kbps"] = bandwidth_kbps
        self.switches.link_fault(self.node(a), self.node(b), fault)

    def on_restore(self, undo: Callable[[], Any]) -> None:
        """Calls `undo` when the network is handed back (the latest first), for changes the
        API does not know, such as `setmocktime`: even when the scenario raises. (A runner
        killed outright cannot call it: keep such changes inside the scenario's own run.)"""
        self.switches.undo.append(undo)

    # ----------------------------------------------------------------- nodes (restarted, extra)

    def restart_node(self, node: str | NetNode, *, book: list[dict[str, Any]] | None = None,
                     keep_book: bool = True, timeout: float = 60.0, **options: Any) -> None:
        """Stops a node and starts it again with node `options` over its own configuration
        (e.g. ``no_listen=True``, ``connect=["ID@HOST:PORT"]``, ``allow_peer=[ID]``,
        ``max_inbound=4``); `book` replaces its address book, ``keep_book=False`` empties it.
        On a compose network its container is recreated with the options as POWLAB_*
        variables, its volume kept. At the end of the run it is restarted as it was."""
        scenario_nodes.restart_node(self, node, book=book, keep_book=keep_book,
                                    timeout=timeout, **options)

    def start_nodes(self, count: int, *, connect: Iterable[str | NetNode] = (),
                    mesh: bool = False, prefix: str = "s", **options: Any) -> list[NetNode]:
        """Starts `count` extra nodes (fresh identities, role "sybil", not in `nodes`), each
        connect-only to `connect` and, with `mesh`, to each other: processes on a process
        testnet, containers on the compose network. They are stopped (removed) at the end of
        the run."""
        started = scenario_nodes.start_nodes(self, count, connect=connect, mesh=mesh,
                                             prefix=prefix, **options)
        return started

    def p2p_address(self, node: str | NetNode) -> str:
        """A node's P2P HOST:PORT as the other nodes dial it (an extra node's too): from the
        manifest of a process testnet, the container's address on a compose network."""
        return scenario_nodes.p2p_address(self, node)

    def clear_link_faults(self) -> None:
        """Lifts every link fault this scenario set."""
        self.switches.clear_link_faults()

    # ----------------------------------------------------------------- mining

    def mine(self, node: str | NetNode, n: int = 1, label: str = "block mined") -> list[str]:
        """`node` mines `n` blocks now (generatetoaddress), each a timeline event `label`;
        returns their hashes."""
        target = self.node(node)
        return [engine.mine_one(target, self.timeline, label) for _ in range(n)]

    def set_mining(self, node: str | NetNode, enabled: bool, rate: float | None = None) -> None:
        """Starts or stops `node`'s miner, at `rate` hashes per second if given."""
        self.switches.set_mining(self.node(node), enabled, rate)

    def stop_mining(self) -> None:
        """Stops every miner (they restart as they were at the end of the run)."""
        self.switches.stop_all_mining()

    def hashes_per_block(self, node: str | NetNode | None = None) -> float:
        """Expected hashes to find a block at the tip's difficulty."""
        return engine.hashes_per_block(self.node(node) if node else self._first())

    def set_hashrates(self, shares: dict[str, float], block_interval: float = 1.0) -> None:
        """Each named node mines at its share of a total hash rate that finds a block every
        `block_interval` seconds on average at the current difficulty; every other node
        stops mining."""
        if any(s < 0 for s in shares.values()) or sum(shares.values()) <= 0:
            raise ScenarioError("hash-rate shares must be ≥ 0 with a positive sum")
        total = self.hashes_per_block() / block_interval
        named = {self.node(k).name: v for k, v in shares.items()}
        calls = [lambda n=n: self.switches.set_mining(
            n, named.get(n.name, 0) > 0, named.get(n.name, 0) * total or None)
            for n in self.nodes.values()]
        engine.parallel(calls)

    # ----------------------------------------------------------------- coins

    def pay(self, src: str | NetNode, dst: str | NetNode, amount: int) -> str:
        """`src`'s wallet pays `amount` (smallest units) to a new address of `dst`; the txid."""
        a, b = self.node(src), self.node(dst)
        txid = a.call("sendtoaddress", b.call("getnewaddress"), amount)
        self.timeline.mark(a.name, "payment sent", to=b.name, amount=amount, txid=txid[:16])
        return str(txid)

    def double_spend(self, attacker: str | NetNode, victim: str | NetNode,
                     amount: int, replaceable: bool = False) -> DoubleSpend:
        """Two signed, conflicting spends of one of `attacker`'s coins, not yet sent: tx1
        pays `amount` to `victim`, tx2 sends the coin back to the attacker with a higher fee
        (enough to replace tx1 under the BIP125 rules). `replaceable`: tx1 signals BIP125.
        Both are tracked in the timeline as tx1 and tx2."""
        ds = engine.make_double_spend(self.node(attacker), self.node(victim), amount, self.rng,
                                      replaceable)
        self.track("tx1", ds.txid1)
        self.track("tx2", ds.txid2)
        return ds

    def send(self, node: str | NetNode, raw: str, label: str) -> str | None:
        """sendrawtransaction at `node`; a rejection is a timeline event and returns None."""
        return engine.send_tx(self.node(node), raw, self.timeline, label)

    def track(self, label: str, txid: str) -> None:
        """The monitor reports this transaction's status on every node under `label`."""
        self.monitor.track(label, txid)

    def tx_status(self, node: str | NetNode, txid: str) -> dict[str, Any]:
        """gettransaction at `node`, or {"status": "unknown"}."""
        return self.node(node).try_call("gettransaction", txid) or {"status": "unknown"}

    # ----------------------------------------------------------------- blocks

    def withhold_block(self, node: str | NetNode, txs: list[str]) -> Withheld:
        """`node` mines a block holding exactly the raw transactions `txs` and keeps it."""
        target = self.node(node)
        return engine.withhold_block(self.switches, target, target.call("getnewaddress"), txs)

    def submit_block(self, node: str | NetNode, block: Withheld,
                     label: str = "block released") -> str | None:
        """Hands a withheld block to `node` (submitblock); its result, None when accepted."""
        return engine.submit_block(self.node(node), block.hex, block.hash, self.timeline, label)

    # ----------------------------------------------------------------- waiting

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0,
                 what: str = "the condition", interval: float = 0.1) -> Any:
        """Polls `predicate` every `interval` seconds until it returns something true
        (which is returned); a ScenarioError naming `what` after `timeout` seconds."""
        return engine.wait_until(predicate, timeout, what, interval)

    def sync_blocks(self, nodes: Iterable[str | NetNode] | None = None,
                    timeout: float = 60.0, tie_breaker: str | NetNode | None = None) -> str:
        """Until the nodes (default all) agree on one tip, which is returned. Two blocks
        found at once leave a tie nobody breaks: after a few seconds `tie_breaker` (default
        the first honest miner) mines one block."""
        group = self._all(nodes)
        breaker = self.node(tie_breaker) if tie_breaker is not None else (
            self._roles.honest[0] if self._roles and self._roles.honest else None)
        return engine.wait_converged(group, timeout, tie_breaker=breaker)

    def sync_mempools(self, nodes: Iterable[str | NetNode] | None = None,
                      timeout: float = 60.0) -> None:
        """Until the nodes (default all) hold the same mempool transactions."""
        group = self._all(nodes)

        def same() -> bool:
            pools = [n.try_call("getrawmempool") for n in group]
            return None not in pools and all(set(p) == set(pools[0]) for p in pools)

        self.wait_for(same, timeout, f"{', '.join(n.name for n in group)} to hold the same "
                                     "mempool")

    def wait_tip(self, nodes: Iterable[str | NetNode] | None, block_hash: str,
                 timeout: float = 60.0) -> None:
        """Until every node (default all) has `block_hash` as its tip."""
        engine.wait_tip(self._all(nodes), block_hash, timeout)

    # ----------------------------------------------------------------- report

    def report(self, verdict: str, success: bool, **figures: Any) -> None:
        """The run's result: `verdict` (one sentence saying what the timeline shows),
        `success`, and any figures, which go into the --json document. reorg_depth,
        victim_confirmations_seen and detected default to what the monitor saw."""
        self.outcome = {"verdict": verdict, "success": bool(success), **figures}

    # ----------------------------------------------------------------- internals

    def _first(self) -> Node:
        for node in self.nodes.values():
            if node.try_call("getblockcount") is not None:
                return node
        raise ScenarioError("no node answers RPC")

    def _last_look(self) -> None:
        """One more poll, so the timeline ends with the state the scenario left, then the
        monitor stops: restarting the miners is not part of the experiment."""
        if not self.monitor.stopped:
            self.monitor.poll()
        self.monitor.stop()

    def restore(self) -> None:
        """Gives every switch back as it was found (called by the runner at the end): extra
        nodes stopped and restarted nodes back on their own configuration first."""
        try:
            scenario_nodes.restore_nodes(self)
        finally:
            with contextlib.suppress(*UNREACHABLE):
                self.switches.restore()


def as_node(n: NetNode) -> Node:
    """`n` with RPC calls as methods."""
    return n if isinstance(n, Node) else Node(n.name, n.role, n.endpoint, n.hashrate_share)
