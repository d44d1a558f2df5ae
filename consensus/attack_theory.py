"""Published attack theory, as pure functions: double-spend success and selfish-mining revenue.

Models (the attacker has a share `q` of the hash rate, the honest network `p = 1 - q`; the
merchant waits for `z` confirmations, the payment's block being the first):
- ``catch-up``: the attacker wins once its private branch is as long as the honest one. This is
  the model of Nakamoto (whitepaper §11, with a Poisson approximation of the attacker's progress)
  and of Rosenfeld (2014), whose exact value equals Grunspan & Pérez-Marco's I_{4pq}(z, 1/2).
- ``overtake``: the attacker needs strictly more work. This is what a powlab node requires,
  since ties go to the block seen first.
- ``premined``: catch-up, with one block mined in advance (a Finney-style head start).

With a finite ``give_up`` N the attacker abandons its branch as soon as it is N blocks behind,
"behind" being the honest branch's length minus its own (a pre-mined block counts as its own),
checked after every block, before the merchant's z confirmations as well as after. That is
exactly what `powlab attack majority --give-up N` does (`h_height - a_height >= N`), so the two
can be compared; see docs/attacks.md for the live attack's free first block.
"""

from __future__ import annotations

import math

MODELS = ("catch-up", "overtake", "premined")
_MODEL_OFFSET = {"catch-up": 0, "overtake": 1, "premined": -1}


def _check(q: float, z: int) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"attacker share q must be within [0, 1], got {q}")
    if z < 0:
        raise ValueError(f"confirmations z must not be negative, got {z}")


def catch_up_probability(q: float, deficit: int) -> float:
    """Gambler's ruin: chance an attacker ever makes up `deficit` blocks."""
    p = 1.0 - q
    if deficit <= 0 or q >= p:
        return 1.0
    return (q / p) ** deficit


def nakamoto_probability(q: float, z: int) -> float:
    """Nakamoto's whitepaper §11 value (catch-up model, Poisson approximation)."""
    _check(q, z)
    p = 1.0 - q
    if q >= p:
        return 1.0
    lam = z * q / p
    total = 1.0
    for k in range(z + 1):
        poisson = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) if lam else float(k == 0)
        total -= poisson * (1.0 - (q / p) ** (z - k))
    return min(1.0, max(0.0, total))


def ruin_probability(q: float, deficit: int, barrier: int) -> float:
    """Gambler's ruin with two barriers: the chance the attacker makes up `deficit` blocks
    before its deficit reaches `barrier`, i.e. (r^d - r^B) / (1 - r^B) with r = q/p."""
    if deficit <= 0:
        return 1.0
    if deficit >= barrier:
        return 0.0
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    log_r = math.log(q) - math.log1p(-q)
    if log_r == 0.0:
        return (barrier - deficit) / barrier
    # Written with expm1 so that r near 1 keeps its digits; for r > 1 the quotient is taken
    # by r^B first, since r^B itself overflows for long barriers.
    if log_r < 0.0:
        return math.exp(deficit * log_r) * (math.expm1((barrier - deficit) * log_r)
                                            / math.expm1(barrier * log_r))
    return math.expm1((deficit - barrier) * log_r) / math.expm1(-barrier * log_r)


def exact_probability(
    q: float, z: int, model: str = "catch-up", give_up: int | None = None
) -> float:
    """Exact success probability of the attack in `model` (negative binomial race, then
    gambler's ruin); for ``catch-up`` it is Rosenfeld's formula. With `give_up` N the
    attacker abandons once N blocks behind (see the module docstring for how that counts)."""
    _check(q, z)
    if model not in _MODEL_OFFSET:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if give_up is not None:
        return _give_up_probability(q, z, model, give_up)
    p = 1.0 - q
    if q >= p:
        return 1.0
    if q == 0.0:
        return 0.0 if z + _MODEL_OFFSET[model] > 0 else 1.0
    needed = z + _MODEL_OFFSET[model]  # attacker blocks that settle the race at once
    if needed <= 0:
        return 1.0
    if z == 0:
        return catch_up_probability(q, needed)
    # P(attacker has k blocks when the honest chain gets its z-th) = C(k+z-1, k) p^z q^k.
    # Below `needed` it must still catch up; at or above it has already won, which happens
    # with probability I_q(needed, z). Summing the two parts directly (not 1 - failure)
    # keeps tiny probabilities accurate.
    total = regularized_incomplete_beta(q, needed, z)
    for k in range(needed):
        weight = math.exp(
            math.lgamma(k + z) - math.lgamma(k + 1) - math.lgamma(z)
            + z * math.log(p) + k * math.log(q)
        )
        total += weight * (q / p) ** (needed - k)
    return min(1.0, max(0.0, total))


def _give_up_probability(q: float, z: int, model: str, give_up: int) -> float:
    if give_up < 1:
        # Behind by 0 is where an attacker without a head start begins: N must exceed it.
        raise ValueError(f"give_up must be at least 1, got {give_up}")
    premine = 1 if model == "premined" else 0
    margin = 1 if model == "overtake" else 0  # overtaking needs one block more than a tie
    needed = z + _MODEL_OFFSET[model]  # attacker blocks that settle the race at once
    if needed <= 0:
        return 1.0
    if q >= 1.0:
        return 1.0  # the limit q -> 1: the honest side never finds a block
    p = 1.0 - q
    # The deficit (blocks the attacker still needs) is `margin` more than how far behind it
    # is, so the give-up barrier in deficit terms sits at N + margin, not at N.
    barrier = give_up + margin
    # Phase 1, until the z-th honest block: the give-up can strike here too (the live attack
    # checks it all along), so the negative binomial weights of the infinite case do not
    # apply. Instead walk the lattice (h honest, k attacker blocks): mass[k] is the chance of
    # standing at (h, k) still in the race; reaching k = needed before h = z is a sure win,
    # since from there the attacker cannot fall N behind before the z-th honest block.
    mass = [0.0] * needed
    mass[0] = 1.0
    won = 0.0
    for h in range(z):
        nxt = [0.0] * needed
        carry = 0.0  # mass arriving at (h, k) from (h, k - 1) by an attacker block
        for k in range(needed):
            here = mass[k] + carry
            if h + 1 - k - premine < give_up:  # else the next honest block ends the attack
                nxt[k] = here * p
            carry = here * q
        won += carry
        mass = nxt
    # Phase 2: from deficit d = z - k + offset the attacker needs d net blocks before its
    # deficit reaches the barrier. Summed term by term (not 1 - failure) for tiny values.
    total = won
    for k, weight in enumerate(mass):
        if weight:
            total += weight * ruin_probability(q, z - k + _MODEL_OFFSET[model], barrier)
    return min(1.0, max(0.0, total))


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by Lentz's continued fraction (Numerical Recipes §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return front * result / a


def grunspan_perez_marco_probability(q: float, z: int) -> float:
    """I_{4pq}(z, 1/2): the closed form of the catch-up model (equal to Rosenfeld's)."""
    _check(q, z)
    p = 1.0 - q
    if q >= p:
        return 1.0
    if z == 0:
        return 1.0
    return regularized_incomplete_beta(4 * p * q, z, 0.5)


def reversal_risk(confirmations: int, q: float) -> float:
    """What a node reports: the catch-up model's exact value (the cautious one)."""
    if confirmations < 0:
        return 1.0
    return exact_probability(q, confirmations, "catch-up")


def eyal_sirer_share(alpha: float, gamma: float) -> float:
    """Selfish miner's share of main-chain blocks (Eyal & Sirer 2014, eq. 8)."""
    if not 0.0 <= alpha <= 0.5 or not 0.0 <= gamma <= 1.0:
        raise ValueError("alpha must be within [0, 0.5] and gamma within [0, 1]")
    numerator = alpha * (1 - alpha) ** 2 * (4 * alpha + gamma * (1 - 2 * alpha)) - alpha**3
    denominator = 1 - alpha * (1 + (2 - alpha) * alpha)
    return numerator / denominator


Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    if successes in (0, trials):
        # The exact end points (rounding would otherwise leave them a hair inside).
        bound = (z * z / trials) / (1 + z * z / trials)
        return (0.0, bound) if successes == 0 else (1.0 - bound, 1.0)
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
