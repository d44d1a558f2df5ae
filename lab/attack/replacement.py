"""Mempool replacement policies for the race attack: which node runs which policy, staging
that (restarts with `--mempool-replacement`), and which of the two spends each node holds.

The policy names are the node's own (`getmempoolinfo.replacement_policy`; the daemon's single
source is consensus/replacement.py, which the lab does not import: lab code reaches the node
through RPC only, so the names are repeated here and checked against the node by the tests).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.scenario import NetNode, Network, ScenarioError, parallel

FIRST_SEEN, OPT_IN, FULL = "first-seen", "opt-in", "full"
POLICIES = (FIRST_SEEN, OPT_IN, FULL)
NODE_OPTION = "mempool_replacement"  # the node's config name for --mempool-replacement
RECONNECT_TIMEOUT = 60.0


def fraction(text: str) -> float:
    """argparse type: a share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replacement", choices=POLICIES, default=None,
                        help="every node's mempool replacement policy for the attack (nodes "
                             "running another are restarted with --mempool-replacement; the "
                             "testnet is given back as it was). Default: as the nodes run "
                             "(first-seen on a default testnet)")
    mixed = parser.add_mutually_exclusive_group()
    mixed.add_argument("--full-rbf-nodes", metavar="NODE,…", default=None,
                       help="these nodes run full RBF, the others --replacement (a mixed "
                            "network)")
    mixed.add_argument("--full-rbf-fraction", type=fraction, default=None, metavar="F",
                       help="a share F in [0, 1] of all nodes, F·N (halves up) drawn with the "
                            "seed, run full RBF, the others --replacement")


def full_rbf_names(net: Network, args: argparse.Namespace) -> list[str]:
    """The nodes the arguments put on full RBF (in the network's order)."""
    names = list(net.nodes)
    if getattr(args, "full_rbf_nodes", None):
        wanted = [n.strip() for n in args.full_rbf_nodes.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in net.nodes]
        if unknown or not wanted:
            raise ScenarioError(f"--full-rbf-nodes: unknown node(s) {', '.join(unknown) or '-'}"
                                f" (nodes: {', '.join(names)})")
        return [n for n in names if n in wanted]
    share = getattr(args, "full_rbf_fraction", None)
    if share is None:
        return []
    return pick_share(net, share)


def pick_share(net: Network, share: float) -> list[str]:
    """F·N of the N nodes rounded half up, drawn with the run's seeded generator."""
    if not 0.0 <= share <= 1.0:
        raise ScenarioError(f"a full-RBF share is a fraction in [0, 1], not {share}")
    names = list(net.nodes)
    # Not round(): it rounds halves to even (4 nodes: 12.5 % drew none but 37.5 % two).
    count = math.floor(share * len(names) + 0.5)
    return sorted(net.rng.sample(names, count), key=names.index)


def wanted_policies(net: Network, args: argparse.Namespace) -> dict[str, str | None]:
    """Per node, the policy the attack runs it with (None: whatever it runs)."""
    full = set(full_rbf_names(net, args))
    base = getattr(args, "replacement", None)
    return {name: FULL if name in full else base for name in net.nodes}


def policy_of(node: NetNode) -> str:
    info = node.call("getmempoolinfo")
    policy = info.get("replacement_policy")
    if policy not in POLICIES:
        raise ScenarioError(f"{node.name} reports no mempool replacement policy "
                            f"({policy!r}): a node from before replacement policies?")
    return str(policy)


@dataclass
class Staging:
    """What `stage_nodes` found and changed."""

    policies: dict[str, str]  # every node's policy once staged
    restarted: list[str] = field(default_factory=list)


def stage_nodes(net: Network, wanted: dict[str, dict[str, Any]],
                timeout: float = RECONNECT_TIMEOUT) -> list[str]:
    """Restarts each node in `wanted` with those node options (over its own configuration,
    so the options of an earlier restart are dropped), then waits until every node has as
    many peers as before and all agree on the tip. Returns the restarted names."""
    if not wanted:
        return []
    peers_before = {n.name: len(n.call("getpeerinfo")) for n in net.nodes.values()}
    for name, options in wanted.items():
        net.restart_node(name, **options)
        net.timeline.mark(name, "restarted", **{k: v for k, v in options.items()})

    def reconnected() -> bool:
        counts = parallel([lambda n=n: len(n.try_call("getpeerinfo") or ())
                           for n in net.nodes.values()])
        return all(c >= peers_before[name] for name, c in zip(net.nodes, counts, strict=True))

    net.wait_for(reconnected, timeout, "the restarted nodes to be connected again")
    net.sync_blocks(timeout=timeout)
    return list(wanted)


def apply_policies(net: Network, policies: dict[str, str | None],
                   options: dict[str, Any] | None = None, restart_all: bool = False) -> Staging:
    """Puts each node on its policy (None: leave it), restarting only the nodes that run
    another one (every node with `restart_all`). A restarted node also gets `options` (e.g.
    a listening period): a restart keeps no option of an earlier one."""
    current = dict(zip(net.nodes, parallel([lambda n=n: policy_of(n)
                                            for n in net.nodes.values()]), strict=True))
    final = {name: policies.get(name) or current[name] for name in net.nodes}
    wanted = {name: {**(options or {}), NODE_OPTION: final[name]} for name in net.nodes
              if restart_all or final[name] != current[name]}
    restarted = stage_nodes(net, wanted)
    net.timeline.mark("*", "replacement policies", **final)
    return Staging(final, restarted)


# --------------------------------------------------------------------------- who holds what


@dataclass
class Holdings:
    """Which of the two spends each node holds, over time: every change is a `holds` event
    in the timeline (`holds` tx1, tx2 or none, with tx1's and tx2's status at that node:
    mempool, replaced, conflicted, confirmed, …), and `history` keeps the sequence."""

    net: Network
    txid1: str
    txid2: str
    nodes: Sequence[NetNode]
    last: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)

    def look(self, node: NetNode) -> tuple[str, str, str] | None:
        pool = node.try_call("getrawmempool")
        if pool is None:
            return None
        held = "tx1" if self.txid1 in pool else "tx2" if self.txid2 in pool else "none"
        s1 = (node.try_call("gettransaction", self.txid1) or {}).get("status", "unknown")
        s2 = (node.try_call("gettransaction", self.txid2) or {}).get("status", "unknown")
        return held, str(s1), str(s2)

    def poll(self) -> None:
        seen = parallel([lambda n=n: self.look(n) for n in self.nodes])
        for node, state in zip(self.nodes, seen, strict=True):
            if state is None or self.last.get(node.name) == state:
                continue
            self.last[node.name] = state
            held, s1, s2 = state
            self.net.timeline.mark(node.name, "holds", holds=held, tx1=s1, tx2=s2)
            line = self.history.setdefault(node.name, [])
            shown = mined_label(state) or held
            if s1 == "replaced" and shown != "tx1" and "tx1" not in line:
                # tx1 came and was replaced between two looks: the node's own status says it
                # held tx1 first, so the history does not skip that step.
                line.append("tx1")
            # Before a spend reaches a node it holds none: not worth a step in the history.
            if (line and line[-1] != shown) or (not line and shown != "none"):
                line.append(shown)

    def summary(self, policies: dict[str, str]) -> dict[str, dict[str, Any]]:
        return {n.name: {"policy": policies.get(n.name), "held": self.history.get(n.name, [])}
                for n in self.nodes}


def mined_label(state: tuple[str, str, str]) -> str | None:
    """'mined tx1' / 'mined tx2' once a node has one of the spends in a block."""
    _, s1, s2 = state
    for label, status in (("tx1", s1), ("tx2", s2)):
        if status in ("confirmed", "final"):
            return f"mined {label}"
    return None


def describe_holdings(summary: dict[str, dict[str, Any]]) -> str:
    """'n1 (full) tx1 → tx2 → mined tx2; n4 (first-seen) tx1 → mined tx2'."""
    parts = []
    for name, row in summary.items():
        held = " → ".join(row["held"]) or "nothing seen"
        parts.append(f"{name} ({row['policy']}) {held}")
    return "; ".join(parts)
