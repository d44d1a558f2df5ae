"""Selfish mining (Eyal & Sirer 2014) as a state machine, against their closed form.

The attacker (share alpha) keeps found blocks private and publishes strategically; in a tie,
a fraction gamma of the honest network mines on the attacker's block. Revenue counts blocks that
end up in the main chain.
"""

from __future__ import annotations

import math
import random
from typing import Any

from consensus.attack_theory import eyal_sirer_share

BATCHES = 20
T95_19 = 2.093  # Student's t, 97.5th percentile, 19 degrees of freedom


def simulate_selfish(alpha: float, gamma: float, blocks: int, rng: random.Random) -> dict[str, Any]:
    """Run until `blocks` blocks have been found; returns the attacker's main-chain share."""
    if not 0.0 <= alpha <= 0.5 or not 0.0 <= gamma <= 1.0:
        raise ValueError("alpha must be within [0, 0.5] and gamma within [0, 1]")
    batch_size = max(1, blocks // BATCHES)
    batch_shares: list[float] = []
    batch_start = (0, 0)
    lead = 0  # private blocks ahead of the public chain
    tie = False  # two public branches of equal length: the attacker's and the honest one
    attacker_revenue = honest_revenue = 0
    draw = rng.random
    for found in range(1, blocks + 1):
        if found % batch_size == 0:
            # Revenue increments are correlated from block to block, so the interval comes
            # from batch means rather than a binomial formula.
            a0, h0 = batch_start
            done = attacker_revenue - a0 + honest_revenue - h0
            if done:
                batch_shares.append((attacker_revenue - a0) / done)
            batch_start = (attacker_revenue, honest_revenue)
        if draw() < alpha:  # the attacker finds a block
            if tie:
                attacker_revenue += 2  # its branch wins: the tying block and this one
                tie = False
            else:
                lead += 1
            continue
        # An honest miner finds a block.
        if tie:
            if draw() < gamma:
                attacker_revenue += 1  # mined on the attacker's block: both branches settle
                honest_revenue += 1
            else:
                honest_revenue += 2
            tie = False
        elif lead == 0:
            honest_revenue += 1
        elif lead == 1:
            lead = 0
            tie = True  # the attacker publishes its block: a race
        elif lead == 2:
            attacker_revenue += 2  # publish everything: the honest block is orphaned
            lead = 0
        else:
            attacker_revenue += 1  # publish one block: it will stay in the main chain
            lead -= 1
    # Settle what is still pending as the theory's steady state does: a private lead >= 1
    # eventually wins all its blocks; a tie is split by gamma in expectation.
    attacker_revenue += lead
    total = attacker_revenue + honest_revenue
    share = attacker_revenue / total if total else 0.0
    lo, hi = _batch_interval(batch_shares, share)
    return {
        "alpha": alpha,
        "gamma": gamma,
        "blocks": blocks,
        "main_chain_blocks": total,
        "attacker_blocks": attacker_revenue,
        "attacker_share": share,
        "ci95": [lo, hi],
        "eyal_sirer": eyal_sirer_share(alpha, gamma),
        "profitable": share > alpha,
    }


def _batch_interval(shares: list[float], centre: float) -> tuple[float, float]:
    if len(shares) < 2:
        return (0.0, 1.0)
    mean = sum(shares) / len(shares)
    var = sum((x - mean) ** 2 for x in shares) / (len(shares) - 1)
    half = T95_19 * math.sqrt(var / len(shares))
    return (max(0.0, centre - half), min(1.0, centre + half))


def simulate_selfish_grid(
    alphas: list[float], gammas: list[float], blocks: int, seed: int
) -> dict[str, Any]:
    rows = []
    for gamma in gammas:
        for alpha in alphas:
            rng = random.Random(f"{seed}:{alpha}:{gamma}")
            rows.append(simulate_selfish(alpha, gamma, blocks, rng))
    return {"seed": seed, "rows": rows}
