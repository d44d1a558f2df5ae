"""Monte Carlo double-spend races against the published formulas.

Each trial is the race the theory describes: block by block, the attacker (share q) or the
honest network finds the next block; once the merchant's payment has z confirmations, the
attacker keeps mining until it has caught up (or overtaken, per the model) or has fallen so far
behind that its remaining chance is negligible (< 1e-12; the theory assumes it never gives up).
With `give_up` N it abandons instead once it is N blocks behind, counted as
`powlab attack majority --give-up N` counts it (see consensus/attack_theory.py).

Zero confirmations under replacement (`full_rbf` F, `fee_bump` R): the merchant accepts before
any block, tx2 (the same coin back to the attacker) pays R units/byte more than tx1, and a
share F of the honest hash power runs full RBF. Each full-RBF miner holds tx2 in place of tx1
if R is at least the incremental relay fee rate (BIP125 rule 4 for spends of equal size); the
others keep tx1, seen first. The first block confirms tx2 if the attacker (q) or a full-RBF
honest miner (p·F) finds it: success. Otherwise tx1 has one confirmation and the attacker
races on from there alone, as in the model (catch-up: tie; overtake: one more; premined: its
withheld block already settles it). Exact: q + p·F + p·(1 − F)·min(1, (q/p)^d), d = 1 + the
model's offset (d ≤ 0: 1). Rows with z > 0 are unchanged: a merchant who waits for a block
sees tx1 confirmed or not at all, whatever the mempools held.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from consensus.attack_theory import (
    _MODEL_OFFSET,
    catch_up_probability,
    exact_probability,
    nakamoto_probability,
    wilson_interval,
)
from consensus.params import DEFAULT_INCREMENTAL_RELAY_FEE_RATE

GIVE_UP_PROBABILITY = 1e-12
# units/byte tx2 pays above tx1 by default: the live race's spends (lab.scenario's double
# spend: fees 10,000 and 20,000 on about 200 bytes) bump by about 50.
DEFAULT_FEE_BUMP = 50.0
MAX_DEFICIT = 10_000

MODEL_NOTES = {
    "catch-up": "attacker wins when its branch is as long as the honest one (no pre-mined "
    "block); exact = Rosenfeld 2014 = Grunspan & Pérez-Marco I_4pq(z, 1/2); nakamoto = "
    "whitepaper §11 (same model, Poisson approximation)",
    "overtake": "attacker needs strictly more work (what a powlab node requires: ties go to "
    "the block seen first); exact = the same race with one more block to find; nakamoto = "
    "whitepaper §11 (catch-up model, for comparison)",
    "premined": "attacker starts with one pre-mined block and wins on catching up; exact = "
    "the same race with one block less to find; nakamoto = whitepaper §11 (no pre-mined block)",
}


@dataclass(frozen=True)
class Row:
    q: float
    z: int
    trials: int
    successes: int
    nakamoto: float
    exact: float

    @property
    def empirical(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    def to_json(self) -> dict[str, Any]:
        lo, hi = wilson_interval(self.successes, self.trials)
        return {
            "q": self.q,
            "z": self.z,
            "trials": self.trials,
            "successes": self.successes,
            "empirical": self.empirical,
            "ci95": [lo, hi],
            "nakamoto": self.nakamoto,
            "exact": self.exact,
        }


def give_up_deficit(q: float) -> int:
    """Deficit beyond which catching up has probability below GIVE_UP_PROBABILITY."""
    p = 1.0 - q
    if q <= 0.0:
        return 1
    if q >= p:
        return MAX_DEFICIT
    return min(MAX_DEFICIT, math.ceil(math.log(GIVE_UP_PROBABILITY) / math.log(q / p)) + 1)


def race(
    q: float, z: int, model: str, rng: random.Random, cutoff: int, give_up: int | None = None
) -> bool:
    """One trial. True when the double spend succeeds."""
    if give_up is not None:
        return _race_with_give_up(q, z, model, rng, cutoff, give_up)
    honest = attacker = 0
    draw = rng.random
    while honest < z:
        if draw() < q:
            attacker += 1
        else:
            honest += 1
    deficit = z - attacker + _MODEL_OFFSET[model]
    while 0 < deficit < cutoff:
        deficit += -1 if draw() < q else 1
    return deficit <= 0


def _race_with_give_up(
    q: float, z: int, model: str, rng: random.Random, cutoff: int, give_up: int
) -> bool:
    # Lengths since the fork, as the live attack compares them: a pre-mined block is the
    # attacker's own, and the give-up is checked after every honest block from the start.
    margin = 1 if model == "overtake" else 0
    honest, attacker = 0, (1 if model == "premined" else 0)
    draw = rng.random
    while honest < z:
        if draw() < q:
            attacker += 1
        else:
            honest += 1
            if honest - attacker >= give_up:
                return False
    deficit = honest - attacker + margin
    # Beyond `cutoff` the chance of coming back is below GIVE_UP_PROBABILITY anyway.
    barrier = min(give_up + margin, cutoff)
    while 0 < deficit < barrier:
        deficit += -1 if draw() < q else 1
    return deficit <= 0


def replaces(fee_bump: float) -> bool:
    """A full-RBF miner takes tx2 for tx1 when tx2 pays at least the incremental relay fee
    rate more per byte (rule 4 for spends of the same size; rule 3 and the higher fee rate
    follow from a positive bump)."""
    return fee_bump >= DEFAULT_INCREMENTAL_RELAY_FEE_RATE


def zero_conf_race(q: float, full_rbf: float, model: str, rng: random.Random,
                   cutoff: int) -> bool:
    """One z = 0 trial under replacement: `full_rbf` is the share of the honest hash power
    that mines tx2 (already 0 when the fee bump is too small to replace)."""
    draw = rng.random
    if draw() < q or draw() < full_rbf:
        return True  # the first block confirms tx2: the attacker's, or a full-RBF miner's
    deficit = 1 + _MODEL_OFFSET[model]
    while 0 < deficit < cutoff:
        deficit += -1 if draw() < q else 1
    return deficit <= 0


def zero_conf_exact(q: float, full_rbf: float, model: str) -> float:
    p = 1.0 - q
    catch = catch_up_probability(q, 1 + _MODEL_OFFSET[model])
    return q + p * full_rbf + p * (1.0 - full_rbf) * catch


def simulate_doublespend(
    qs: list[float], zs: list[int], trials: int, seed: int, model: str = "catch-up",
    give_up: int | None = None, full_rbf: float | None = None, fee_bump: float | None = None,
) -> dict[str, Any]:
    if model not in _MODEL_OFFSET:
        raise ValueError(f"unknown model {model!r}")
    if give_up is not None and give_up < 1:
        raise ValueError(f"--give-up must be at least 1, got {give_up}")
    if full_rbf is not None and not 0.0 <= full_rbf <= 1.0:
        raise ValueError(f"--full-rbf is a share in [0, 1], got {full_rbf}")
    if fee_bump is not None and (full_rbf is None or not fee_bump >= 0 or math.isinf(fee_bump)):
        raise ValueError("--fee-bump is a finite rate ≥ 0 and goes with --full-rbf")
    if full_rbf is not None and 0 not in zs:
        raise ValueError("--full-rbf changes only the zero-confirmation race: include 0 in --z")
    if full_rbf is not None and give_up is not None:
        raise ValueError("--full-rbf and --give-up do not combine (the zero-confirmation "
                         "race has no give-up)")
    bump = DEFAULT_FEE_BUMP if fee_bump is None else fee_bump
    effective = 0.0 if full_rbf is None or not replaces(bump) else full_rbf
    rows: list[dict[str, Any]] = []
    for q in qs:
        cutoff = give_up_deficit(q)
        for z in zs:
            # One generator per (q, z) cell, derived from the seed: adding a cell never
            # changes the others' results.
            # The give-up joins the key only when set, so runs without it keep their numbers.
            key = f"{seed}:{q}:{z}:{model}" + (f":{give_up}" if give_up is not None else "")
            if full_rbf is not None and z == 0:
                key += f":rbf:{full_rbf}:{bump}"
                rng = random.Random(key)
                successes = sum(zero_conf_race(q, effective, model, rng, cutoff)
                                for _ in range(trials))
                exact = zero_conf_exact(q, effective, model)
            else:
                rng = random.Random(key)
                successes = sum(race(q, z, model, rng, cutoff, give_up) for _ in range(trials))
                exact = exact_probability(q, z, model, give_up)
            row = Row(q, z, trials, successes, nakamoto_probability(q, z), exact).to_json()
            if give_up is not None:
                row["exact_never_gives_up"] = exact_probability(q, z, model)
            rows.append(row)
    return {
        "model": model,
        "model_notes": MODEL_NOTES[model],
        "seed": seed,
        "give_up": give_up,
        "full_rbf": full_rbf,
        "fee_bump": bump if full_rbf is not None else None,
        "replaces": replaces(bump) if full_rbf is not None else None,
        "rows": rows,
    }
