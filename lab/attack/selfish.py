"""Selfish mining (Eyal–Sirer) at share α over K blocks, by a seeded lottery.

Selfish mining (Eyal & Sirer 2014): the attacker keeps the blocks it finds private and
publishes them only to override honest blocks, so honest miners waste work on blocks that end
up stale and the attacker's share of main-chain blocks exceeds its hash-rate share α.

Block discovery is a seeded lottery, not a wall-clock hash race: each next block is found by
the attacker with probability α, else by an honest miner chosen by hash-rate share, and is
then mined for real on that node (`generatetoaddress`). The attacker's node is cut off for
the whole run (`setnetworkactive false`) so its blocks stay private until it hands them to
the honest nodes with `submitblock`. In a tie (two published branches of equal length), the
next honest block extends the attacker's branch with probability γ: that miner is made to
have seen the attacker's branch first (`invalidateblock` of the competing honest block on
that node for the one block it mines, then `reconsiderblock`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from consensus.attack_theory import eyal_sirer_share
from lab.attack.majority import honest_rates
from lab.attack.options import add_attack_arguments
from lab.scenario import (
    NetNode,
    Network,
    Outcome,
    ScenarioError,
    deepest_reorg,
    parallel,
)

BATCHES = 10
# Student's t, 97.5th percentile, by degrees of freedom (a two-sided 95 % interval).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}


def batch_means_interval(owners: Sequence[bool], batches: int = BATCHES
                         ) -> tuple[float, float, list[float]]:
    """95 % interval for the attacker's share of main-chain blocks from batch means.

    `owners` is the main chain in height order (True: the attacker's block). Consecutive
    blocks are correlated under selfish mining (an override hands the attacker a run of
    blocks, a lost tie a run of honest ones), so a binomial interval is too narrow; the
    shares of `batches` consecutive stretches are close to independent, and Student's t on
    their mean gives the interval (as lab/simulate/selfish.py does). Returns (lo, hi, the
    batch shares); with fewer than two batches the interval is [0, 1]."""
    n = len(owners)
    k = min(batches, n // 2)
    if k < 2:
        return 0.0, 1.0, []
    size = n // k
    shares = [sum(owners[i * size:(i + 1) * size]) / size for i in range(k)]
    mean = sum(shares) / k
    var = sum((x - mean) ** 2 for x in shares) / (k - 1)
    half = T975.get(k - 1, 1.96) * math.sqrt(var / k)
    centre = sum(owners) / n
    return max(0.0, centre - half), min(1.0, centre + half), shares


class SelfishRun:
    def __init__(self, net: Network, alpha: float, gamma: float) -> None:
        self.net = net
        self.alpha, self.gamma = alpha, gamma
        self.attacker = net.roles.attacker
        self.public = net.roles.others
        self.honest = net.roles.honest
        weights = honest_rates(self.honest, 1.0)
        self.weights = [weights[h.name] for h in self.honest]
        self.private: list[str] = []  # the attacker's branch since the fork point
        self.published = 0  # how many of `private` the honest nodes have
        self.public_branch: list[str] = []  # honest blocks since the fork point
        self.attacker_blocks: set[str] = set()
        self.stale_honest = 0
        self.rounds: list[str] = []
        self.address = ""

    # ----------------------------------------------------------------- plumbing

    def tl(self, node: str, event: str, **extra: Any) -> None:
        self.net.timeline.mark(node, event, **extra)

    def hexof(self, node: NetNode, block_hash: str) -> str:
        return node.call("getblock", block_hash, 0)

    def give(self, nodes: list[NetNode], hexdata: str) -> None:
        # Straight to every node, not over gossip: the cut-off attacker would split a line.
        parallel([lambda n=n: n.call("submitblock", hexdata) for n in nodes])

    def wait_public(self, tip: str) -> None:
        self.net.wait_for(lambda: all(n.try_call("getbestblockhash") == tip
                                      for n in self.public),
                          self.net.args.timeout, f"the honest nodes to reach {tip[:16]}",
                          interval=0.02)

    def publish(self, upto: int) -> None:
        """Hands the honest nodes the attacker's private blocks up to index `upto`."""
        for block_hash in self.private[self.published:upto]:
            self.give(self.public, self.hexof(self.attacker, block_hash))
            self.tl(self.attacker.name, "publishes", hash=block_hash[:16])
        self.published = max(self.published, upto)

    def reset(self) -> None:
        self.private, self.published, self.public_branch = [], 0, []

    # ----------------------------------------------------------------- the strategy

    def attacker_finds(self) -> None:
        lead_before = len(self.private) - len(self.public_branch)
        block_hash = self.attacker.call("generatetoaddress", 1, self.address)[0]
        self.attacker_blocks.add(block_hash)
        self.private.append(block_hash)
        self.tl(self.attacker.name, "attacker finds (private)", hash=block_hash[:16],
                lead=lead_before + 1)
        if lead_before == 0 and self.public_branch:
            # State 0': a tie, and the attacker extends its own branch: publish, win both.
            self.publish(len(self.private))
            self.wait_public(block_hash)
            self.stale_honest += len(self.public_branch)
            self.tl("*", "attacker wins the tie", orphaned=len(self.public_branch))
            self.reset()

    def honest_finds(self) -> None:
        rng = self.net.rng
        finder = rng.choices(self.honest, weights=self.weights)[0]
        lead_before = len(self.private) - len(self.public_branch)
        tie = lead_before == 0 and bool(self.public_branch)
        on_attacker = tie and rng.random() < self.gamma
        if on_attacker:
            # This miner saw the attacker's branch first: it mines on it.
            competing = self.public_branch[0]
            finder.call("invalidateblock", competing)
            block_hash = finder.call("generatetoaddress", 1, finder.call("getnewaddress"))[0]
            finder.call("reconsiderblock", competing)
        else:
            block_hash = finder.call("generatetoaddress", 1, finder.call("getnewaddress"))[0]
        hexdata = self.hexof(finder, block_hash)
        self.give([n for n in self.public if n is not finder], hexdata)
        self.give([self.attacker], hexdata)
        self.tl(finder.name, "honest finds", hash=block_hash[:16],
                on="attacker's branch" if on_attacker else "public chain", lead=lead_before)
        self.wait_public(block_hash)
        if tie:
            if on_attacker:
                self.stale_honest += len(self.public_branch)
                self.tl("*", "tie resolved for the attacker (γ)")
            else:
                self.tl("*", "tie resolved for the honest miners",
                        orphaned=len(self.private))
            self.reset()
            return
        self.public_branch.append(block_hash)
        if lead_before == 0:
            self.reset()  # nothing private: the attacker simply adopts the public block
        elif lead_before == 1:
            self.publish(len(self.private))  # match: a tie
            self.tl(self.attacker.name, "tie", height_each=len(self.private))
        elif lead_before == 2:
            self.publish(len(self.private))  # one ahead: override the honest branch
            self.wait_public(self.private[-1])
            self.stale_honest += len(self.public_branch)
            self.tl("*", "attacker overrides", orphaned=len(self.public_branch))
            self.reset()
        else:
            self.publish(len(self.public_branch))  # keep up, still ahead in private

    def finish(self) -> None:
        """After the last round a longer private branch is published (it would win)."""
        if len(self.private) > len(self.public_branch):
            self.publish(len(self.private))
            self.wait_public(self.private[-1])
            self.stale_honest += len(self.public_branch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_attack_arguments(parser, "unused")
    parser.add_argument("--alpha", type=float, default=None,
                        help="attacker's share α (default --hashrate-share, else 0.4)")
    parser.add_argument("--gamma", type=float, default=0.0,
                        help="fraction of honest miners mining on the attacker's block in a "
                             "tie (default 0)")
    parser.add_argument("--blocks", type=int, default=100, metavar="K",
                        help="lottery rounds: blocks found in total (default 100)")


def run(net: Network) -> None:
    roles, args = net.roles, net.args
    alpha = args.alpha if args.alpha is not None else (
        args.hashrate_share if args.hashrate_share is not None else 0.4)
    gamma = args.gamma
    if not 0 < alpha < 1 or not 0 <= gamma <= 1:
        raise ScenarioError("--alpha must be in (0, 1) and --gamma in [0, 1]")
    if not roles.honest:
        raise ScenarioError("selfish mining needs honest miners (see --honest)")
    out = Outcome("selfish")
    sm = SelfishRun(net, alpha, gamma)
    with net.staged():
        start = net.sync_blocks(roles.nodes, tie_breaker=roles.honest[0])
        start_height = roles.victim.call("getblockcount")
        net.isolate(sm.attacker)
        sm.address = sm.attacker.call("getnewaddress")
        for _ in range(args.blocks):
            if net.rng.random() < alpha:
                sm.rounds.append("A")
                sm.attacker_finds()
            else:
                sm.rounds.append("H")
                sm.honest_finds()
        sm.finish()
        net.reconnect(sm.attacker)
        judge = roles.victim
        tip_height = judge.call("getblockcount")
        main = [judge.call("getblockhash", h) for h in range(start_height + 1, tip_height + 1)]
        net.monitor.poll()
    owners = [h in sm.attacker_blocks for h in main]
    ours = sum(owners)
    share = ours / len(main) if main else 0.0
    lo, hi, batch_shares = batch_means_interval(owners)
    es = eyal_sirer_share(min(alpha, 0.5), gamma) if alpha <= 0.5 else None
    found_by_attacker = sm.rounds.count("A")
    realised = found_by_attacker / max(1, len(sm.rounds))
    # The lottery's own luck moves the share a lot near α = 0.5: compare with the theory at
    # the share the attacker actually drew as well.
    es_realised = eyal_sirer_share(realised, gamma) if realised <= 0.5 else None
    out.success = share > alpha
    # The honest nodes are the victims: the deepest reorganisation any of them performed.
    out.reorg_depth = deepest_reorg(net.timeline.events, [n.name for n in sm.public])
    out.details = {
        "alpha": alpha, "gamma": gamma, "blocks": args.blocks, "driver": "seeded lottery",
        "start": start, "start_height": start_height, "main_chain_blocks": len(main),
        "attacker_main_chain_blocks": ours, "attacker_found": found_by_attacker,
        "attacker_share": share, "ci95": [lo, hi], "eyal_sirer": es,
        "significant": lo > alpha, "stale_honest_blocks": sm.stale_honest,
        "attacker_lottery_share": realised, "eyal_sirer_at_lottery_share": es_realised,
        "interval": f"batch means, {len(batch_shares)} batches", "batch_shares": batch_shares,
        "main_chain_owners": "".join("A" if o else "H" for o in owners),
    }
    es_text = f"{es:.3f}" if es is not None else "n/a"
    compare = ("above α, and the 95 % interval excludes α" if lo > alpha else
               "above α, but the 95 % interval still includes α" if share > alpha else
               "not above α")
    out.verdict = (f"selfish: {'SUCCESS' if out.success else 'FAILED'} — the attacker "
                   f"(α = {alpha:g}, γ = {gamma:g}) holds {ours} of {len(main)} main-chain blocks "
                   f"= {share:.3f} [95 % CI {lo:.3f}–{hi:.3f}, batch means], {compare}; "
                   f"Eyal–Sirer predicts "
                   f"{es_text}. It found {found_by_attacker} of {len(sm.rounds)} blocks "
                   f"({realised:.3f}; Eyal–Sirer there: "
                   f"{'n/a' if es_realised is None else f'{es_realised:.3f}'}); "
                   f"{sm.stale_honest} honest blocks were orphaned; the deepest reorganisation "
                   f"of an honest node was {out.reorg_depth} blocks.")
    net.report(**out.as_report())
