"""Eclipse: sybils take all of a victim's connections and double-spend it; with countermeasures.

After Heilman, Kendler, Zohar and Goldberg, "Eclipse Attacks on Bitcoin's Peer-to-Peer
Network" (USENIX Security 2015). The attacker (the attacker node plus --sybils K extra nodes
it starts, each a fresh identity on an address of its own) works on the victim's real
mechanics: which peers the victim has is decided by the node's own rules (a random draw from
its address book, inbound slots that are never given back); the scenario only chooses when the
victim restarts and when the honest nodes try to connect to it:

1. The victim (re)starts as a merchant's node with the countermeasure under test and a fresh
   address book holding the network's reachable nodes (the attacker node among them, as a
   DNS seed would give them). It dials --max-outbound of them, drawn at random.
2. Campaign (up to --campaign seconds): the sybils dial the victim over and over, taking its
   inbound slots; every peer the victim has puts its own address into the victim's book, and
   answers the victim's getaddr with the addresses it knows (a sybil knows only the attacker's
   nodes; the attacker node knows the sybils too).
3. Churn: the victim restarts (same options, its book kept in peers.json). Its outbound slots
   go to addresses drawn at random from the book; the sybils refill its inbound slots at once;
   then the honest nodes try once to connect to it (refused when the slots are full).
4. Double spend: the attacker node is cut off from the honest nodes (the victim is not
   touched). The honest side gets tx2 (the coin back to the attacker) and mines z+1 blocks; the
   attacker node gets tx1 (paying the victim) and mines z blocks in private. A victim with an
   honest peer sees the heavier honest chain and rejects tx1; an eclipsed one sees only the
   attacker's chain and tx1 with z confirmations: it is fooled (success). On healing the
   victim reorganises to the honest chain and the payment is reversed.

Countermeasures (--countermeasure): none; no-listen (`--no-listen`: no inbound slots, so the
book is filled only by peers the victim itself dials); fixed-peers (`--connect NODEID@HOST:PORT`
to each honest node and `--allow-peer` for their ids only: the book is never dialled); all
(both); compare (default: each of the four in turn, --trials each). The figures give, per
countermeasure, trials, successes, the rate and its Wilson 95 % interval, and next to it the
prediction of an idealised draw: the chance that every outbound slot goes to an attacker
address if each were drawn from the whole book as the victim held it at its restart.

It starts nodes and restarts the victim, on a process testnet (`powlab scenario run
examples/scenarios/eclipse.py -- --trials 5`: node processes on loopback addresses of their
own) or on the compose network (`... --docker` or the --dir of `testnet up --docker`: sybil
containers on the compose network, the merchant's container recreated with the options as
POWLAB_* variables). The victim is given back with its own configuration, the sybils removed.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

from lab.scenario import NetNode, Network, ScenarioError, wilson_interval

COUNTERMEASURES = ("none", "no-listen", "fixed-peers", "all")
BAN_SECONDS = 3600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=3,
                        help="trials per countermeasure (default 3)")
    parser.add_argument("--countermeasure", choices=(*COUNTERMEASURES, "compare"),
                        default="compare",
                        help="none, no-listen, fixed-peers, all (both at once), or compare: "
                             "each of the four in turn (default)")
    parser.add_argument("--sybils", type=int, default=8,
                        help="extra attacker identities, K (default 8)")
    parser.add_argument("--confirmations", "-z", type=int, default=2,
                        help="confirmations the merchant waits for, z (default 2)")
    parser.add_argument("--max-outbound", type=int, default=2,
                        help="the victim's outbound slots (default 2)")
    parser.add_argument("--max-inbound", type=int, default=4,
                        help="the victim's inbound slots (default 4)")
    parser.add_argument("--campaign", type=float, default=10.0,
                        help="seconds the attacker has to fill the victim's book before its "
                             "restart (the campaign ends sooner once the book holds every "
                             "attacker address; default 10)")
    parser.add_argument("--amount", type=int, default=100_000,
                        help="the payment, in the smallest unit (default 100000)")


def run(net: Network) -> None:
    args = net.args
    if args.trials < 1 or args.sybils < 1 or args.confirmations < 1:
        raise ScenarioError("--trials, --sybils and --confirmations must be at least 1")
    chosen = COUNTERMEASURES if args.countermeasure == "compare" else (args.countermeasure,)
    lab = Eclipse(net)
    trials: list[dict[str, Any]] = []
    try:
        lab.set_up()
        for countermeasure in chosen:
            for k in range(args.trials):
                trials.append(lab.trial(countermeasure, k + 1))
    finally:
        lab.tear_down()
    results = {c: summary([t for t in trials if t["countermeasure"] == c]) for c in chosen}
    net.report(verdict=verdict(results, args.confirmations),
               success=any(t["success"] for t in trials),
               countermeasures=results, trials=trials)


# --------------------------------------------------------------------------- the attack


class Eclipse:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.args = net.args
        self.attacker = net.attacker
        self.victim = net.victim
        others = [n for n in net.nodes.values() if n.name not in (self.attacker.name,
                                                                  self.victim.name)]
        if not others:
            raise ScenarioError("the eclipse needs at least one honest node besides the "
                                "attacker and the victim")
        self.honest = others
        self.sybils: list[NetNode] = []
        self.bans: list[tuple[NetNode, str]] = []

    # ---------------------------------------------------------------- setting up

    def set_up(self) -> None:
        net = self.net
        net.stop_mining()
        self.ids = {n.name: n.getnetworkinfo()["node_id"] for n in net.nodes.values()}
        self.addr = {n.name: net.p2p_address(n) for n in net.nodes.values()}
        self.drop_honest_links()
        self.sybils = net.start_nodes(self.args.sybils,
                                  connect=[self.attacker, self.victim], mesh=True)
        for s in self.sybils:
            self.ids[s.name] = s.call("getnetworkinfo")["node_id"]
            self.addr[s.name] = net.p2p_address(s)
        self.attacker_names = {self.attacker.name, *(s.name for s in self.sybils)}
        self.attacker_ids = {self.ids[n] for n in self.attacker_names}
        self.attacker_addrs = {self.addr[n] for n in self.attacker_names}
        self.honest_addrs = {self.addr[n.name] for n in self.honest}
        net.timeline.mark(self.attacker.name, "sybils started", count=len(self.sybils),
                          hosts=",".join(sorted(self.addr[s.name] for s in self.sybils)))

    def drop_honest_links(self) -> None:
        """An honest node that keeps a link to the victim (an addnode, as every node of the
        compose network has to every other) would redial it every few seconds and take an
        inbound slot whenever one is free: for the run, it drops the link (it is added back
        at the end), so that the honest nodes try to connect in only when the scenario says."""
        victim_addr = self.addr[self.victim.name]
        dropped = []
        for h in self.honest:
            added = {a["addednode"] for a in h.try_call("getaddednodeinfo") or []}
            if victim_addr in added:
                h.call("addnode", victim_addr, "remove")
                self.net.on_restore(lambda h=h: h.try_call("addnode", victim_addr, "add"))
                dropped.append(h.name)
        if dropped:
            self.net.timeline.mark(self.victim.name, "honest links dropped",
                                   note="for the run: " + ",".join(dropped))

    def tear_down(self) -> None:
        # The runner restarts the victim on its own configuration and stops the sybils.
        self.lift_cut()

    # ---------------------------------------------------------------- one trial

    def victim_options(self, countermeasure: str) -> dict[str, Any]:
        args = self.args
        options: dict[str, Any] = {"connect": [], "addnode": [], "allow_peer": [],
                                   "no_listen": False, "max_outbound": args.max_outbound,
                                   "max_inbound": args.max_inbound, "mine": False}
        if countermeasure in ("no-listen", "all"):
            options["no_listen"] = True
        if countermeasure in ("fixed-peers", "all"):
            options["connect"] = [f"{self.ids[h.name]}@{self.addr[h.name]}" for h in self.honest]
            options["allow_peer"] = [self.ids[h.name] for h in self.honest]
            options["max_outbound"] = len(self.honest)
        return options

    def trial(self, countermeasure: str, k: int) -> dict[str, Any]:
        net, victim, z = self.net, self.victim, self.args.confirmations
        mark = net.timeline.mark
        options = self.victim_options(countermeasure)
        listening = not options["no_listen"] and not options["allow_peer"]
        fixed = bool(options["connect"])
        mark("*", "trial", countermeasure=countermeasure, k=k)

        # 1. A fresh start with the seeds.
        seeds = [record(self.addr[n], self.ids[n]) for n in net.nodes if n != victim.name]
        net.restart_node(victim, book=seeds, **options)
        mark(victim.name, "restarted", note=f"{countermeasure}, fresh book of "
                                            f"{len(seeds)} seeds")

        # 2. The campaign: until the book holds every attacker address, or time is up.
        poll(lambda: self.attacker_addrs <= self.book(), self.args.campaign)
        book = self.book()
        mark(victim.name, "book", attacker=len(book & self.attacker_addrs),
             honest=len(book & self.honest_addrs))

        # 3. Churn: the restart; outbound dials from the book, sybils refill inbound, then
        #    the honest nodes knock.
        net.restart_node(victim, **options)
        book = self.book()
        mark(victim.name, "restarted", note="churn: same options, book kept")
        outbound = len(self.honest) if fixed else self.args.max_outbound
        poll(lambda: self.count(inbound=False) >= outbound, 20)
        if listening:
            # The sybils come back (each redials a persistent link after 5 s): until they hold
            # every inbound slot, or every one of them is connected in one direction or other.
            sybil_ids = {self.ids[s.name] for s in self.sybils}
            poll(lambda: self.count(inbound=True) >= self.args.max_inbound
                 or sybil_ids <= {p["node_id"] for p in self.peers()}, 15)
        victim_addr = self.addr[victim.name]
        if options["no_listen"]:
            mark(victim.name, "honest nodes cannot connect in", note="nothing listens")
        else:
            for h in self.honest:
                h.try_call("addnode", victim_addr, "onetry")
            poll(lambda: not any(p["addr"] == victim_addr and p["status"] != "established"
                                 for h in self.honest for p in h.try_call("getpeerinfo") or []),
                 15)
        peers = self.peers()
        attacker_peers = [p for p in peers if p["node_id"] in self.attacker_ids]
        honest_peers = [p for p in peers if p["node_id"] not in self.attacker_ids]
        eclipsed = bool(peers) and not honest_peers
        mark(victim.name, "eclipsed" if eclipsed else "not eclipsed",
             outbound=f"{sum(1 for p in attacker_peers if not p['inbound'])} attacker, "
                      f"{sum(1 for p in honest_peers if not p['inbound'])} honest",
             inbound=f"{sum(1 for p in attacker_peers if p['inbound'])} attacker, "
                     f"{sum(1 for p in honest_peers if p['inbound'])} honest")

        # 4. The double spend.
        fooled, reversed_ = self.double_spend(z, honest_peers=bool(honest_peers))
        result = {
            "countermeasure": countermeasure, "trial": k, "success": fooled,
            "eclipsed": eclipsed, "reversed": reversed_,
            "victim_peers": {"attacker": len(attacker_peers), "honest": len(honest_peers),
                             "inbound": sum(1 for p in peers if p["inbound"])},
            "book_at_restart": {"attacker": len(book & self.attacker_addrs),
                                "honest": len(book & self.honest_addrs)},
            "draw_prediction": 0.0 if fixed else draw_prediction(
                len(book & self.attacker_addrs), len(book & self.honest_addrs), outbound),
        }
        return result

    def double_spend(self, z: int, honest_peers: bool) -> tuple[bool, bool]:
        net, victim, attacker = self.net, self.victim, self.attacker
        honest = self.honest[0]
        self.cut()
        ds = net.double_spend(attacker, victim, self.args.amount)
        net.send(honest, ds.tx2, "tx2")
        honest_tip = net.mine(honest, z + 1)[-1]
        if honest_peers:
            poll(lambda: victim.try_call("getbestblockhash") == honest_tip, 30)
        net.send(attacker, ds.tx1, "tx1")
        attacker_tip = net.mine(attacker, z)[-1]

        def settled() -> bool:
            """The victim has both chains it can get and has chosen: the attacker's reaches
            it only through an attacker peer (the attacker node is cut off from the rest)."""
            tip = victim.try_call("getbestblockhash")
            if victim.try_call("getblockheader", attacker_tip) is not None:
                return tip in (attacker_tip, honest_tip)
            return tip == honest_tip and not any(p["node_id"] in self.attacker_ids
                                                 for p in self.peers())

        poll(settled, 30)
        status = net.tx_status(victim, ds.txid1)
        seen = int(status.get("confirmations") or 0)
        fooled = victim.try_call("getbestblockhash") == attacker_tip and seen >= z
        net.timeline.mark(victim.name, "fooled" if fooled else "not fooled",
                          tx1_confirmations=seen)
        self.lift_cut()
        tip = net.sync_blocks([*self.honest, attacker, victim], timeout=90)
        reversed_ = False
        if fooled:
            after = net.tx_status(victim, ds.txid1)
            reversed_ = int(after.get("confirmations") or 0) <= 0
            net.timeline.mark(victim.name, "payment reversed" if reversed_ else
                              "payment kept", tip=tip[:16])
        return fooled, reversed_

    # ---------------------------------------------------------------- cutting the attacker off

    def cut(self) -> None:
        """The attacker node and the honest nodes ban each other's hosts, and the sybils (the
        attacker's too) ban the honest hosts: an honest node that dialled a sybil from its
        address book would otherwise carry the honest chain to the attacker and the victim.
        The victim is not touched."""
        attacker_host = self.addr[self.attacker.name].rsplit(":", 1)[0]
        for h in self.honest:
            host = self.addr[h.name].rsplit(":", 1)[0]
            for node, banned in ((h, attacker_host), (self.attacker, host),
                                 *((s, host) for s in self.sybils)):
                node.call("setban", banned, "add", BAN_SECONDS)
                self.bans.append((node, banned))
        self.net.timeline.mark(self.attacker.name, "cut off",
                               note="from " + ",".join(h.name for h in self.honest))

    def lift_cut(self) -> None:
        if not self.bans:
            return
        for node, banned in self.bans:
            node.try_call("setban", banned, "remove")
        self.bans.clear()
        self.net.timeline.mark(self.attacker.name, "cut lifted")

    # ---------------------------------------------------------------- looking at the victim

    def book(self) -> set[str]:
        rows = self.victim.try_call("getnodeaddresses", 0) or []
        return {f"{r['address']}:{r['port']}" for r in rows}

    def peers(self) -> list[dict[str, Any]]:
        return [p for p in self.victim.try_call("getpeerinfo") or []
                if p["status"] == "established"]

    def count(self, inbound: bool) -> int:
        return sum(1 for p in self.peers() if p["inbound"] == inbound)


# --------------------------------------------------------------------------- figures


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> bool:
    """Until `predicate` holds or `timeout` seconds pass (then False, not an error: the
    scenario reads the state either way)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def record(addr: str, node_id: str) -> dict[str, Any]:
    """An address-book record (peers.json) for HOST:PORT."""
    host, port = addr.rsplit(":", 1)
    return {"host": host, "port": int(port), "node_id": node_id, "last_seen": int(time.time())}


def draw_prediction(attacker: int, honest: int, slots: int) -> float:
    """The chance that `slots` draws without replacement from a book of `attacker` +
    `honest` addresses are all attacker addresses."""
    total = attacker + honest
    if slots <= 0 or total < slots:
        return 0.0
    return math.comb(attacker, slots) / math.comb(total, slots)


def summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(trials)
    successes = sum(1 for t in trials if t["success"])
    lo, hi = wilson_interval(successes, n)
    return {"trials": n, "successes": successes, "rate": round(successes / n, 4) if n else 0.0,
            "ci95": [round(lo, 4), round(hi, 4)],
            "eclipsed": sum(1 for t in trials if t["eclipsed"]),
            "draw_prediction": round(sum(t["draw_prediction"] for t in trials) / n, 4)
            if n else 0.0}


def verdict(results: dict[str, dict[str, Any]], z: int) -> str:
    parts = [f"{c}: {r['successes']}/{r['trials']} fooled ({r['rate']:.0%}, 95 % CI "
             f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f})" for c, r in results.items()]
    if any(r["successes"] for r in results.values()):
        head = (f"SUCCESS — an eclipsed victim was shown {z} confirmations of a payment the "
                "honest chain reversed")
    else:
        head = "FAILED — the victim was never fooled"
    return f"eclipse: {head}; " + "; ".join(parts)


def build_figure(data: dict[str, Any]) -> Any:
    """Success rate per countermeasure with its Wilson 95 % interval, and the idealised draw
    prediction next to it (`--plot FILE.png`)."""
    import matplotlib.pyplot as plt

    results = data.get("countermeasures") or {}
    names = list(results)
    rates = [results[n]["rate"] for n in names]
    lows = [results[n]["rate"] - results[n]["ci95"][0] for n in names]
    highs = [results[n]["ci95"][1] - results[n]["rate"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    xs = range(len(names))
    ax.bar(xs, rates, color="#d62728", alpha=0.75, label="observed success rate")
    ax.errorbar(xs, rates, yerr=[lows, highs], fmt="none", ecolor="black", capsize=8,
                linewidth=1.6, label="Wilson 95 % interval")
    ax.scatter(xs, [results[n]["draw_prediction"] for n in names], marker="D", color="#1f77b4",
               zorder=5, label="every outbound slot drawn from the book: all attacker")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{n}\n{results[n]['successes']}/{results[n]['trials']}"
                        for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("victim fooled (share of trials)")
    p = data.get("params") or {}
    ax.set_title(f"eclipse: {p.get('sybils')} sybils; victim {p.get('max_outbound')} out / "
                 f"{p.get('max_inbound')} in; z = {p.get('confirmations')}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
