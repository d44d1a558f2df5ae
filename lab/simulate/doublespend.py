"""Monte Carlo double-spend races against the published formulas.

Each trial is the race the theory describes: block by block, the attacker (share q) or the
honest network finds the next block; once the merchant's payment has z confirmations, the
attacker keeps mining until it has caught up (or overtaken, per the model) or has fallen so far
behind that its remaining chance is negligible (< 1e-12; the theory assumes it never gives up).
With `give_up` N it abandons instead once it is N blocks behind, counted as
`powlab attack majority --give-up N` counts it (see consensus/attack_theory.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from consensus.attack_theory import (
    _MODEL_OFFSET,
    exact_probability,
    nakamoto_probability,
    wilson_interval,
)

GIVE_UP_PROBABILITY = 1e-12
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


def simulate_doublespend(
    qs: list[float], zs: list[int], trials: int, seed: int, model: str = "catch-up",
    give_up: int | None = None,
) -> dict[str, Any]:
    if model not in _MODEL_OFFSET:
        raise ValueError(f"unknown model {model!r}")
    if give_up is not None and give_up < 1:
        raise ValueError(f"--give-up must be at least 1, got {give_up}")
    rows: list[dict[str, Any]] = []
    for q in qs:
        cutoff = give_up_deficit(q)
        for z in zs:
            # One generator per (q, z) cell, derived from the seed: adding a cell never
            # changes the others' results.
            # The give-up joins the key only when set, so runs without it keep their numbers.
            key = f"{seed}:{q}:{z}:{model}" + (f":{give_up}" if give_up is not None else "")
            rng = random.Random(key)
            successes = sum(race(q, z, model, rng, cutoff, give_up) for _ in range(trials))
            row = Row(q, z, trials, successes, nakamoto_probability(q, z),
                      exact_probability(q, z, model, give_up)).to_json()
            if give_up is not None:
                row["exact_never_gives_up"] = exact_probability(q, z, model)
            rows.append(row)
    return {
        "model": model,
        "model_notes": MODEL_NOTES[model],
        "seed": seed,
        "give_up": give_up,
        "rows": rows,
    }
