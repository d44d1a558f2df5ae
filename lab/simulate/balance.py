"""The balance attack (Natoli & Gramoli 2017) in virtual time.

The honest hash power is split into two halves of equal power. The attacker delays every message
between the halves by `delay` seconds and mines (share q) with one of them, the *block half*;
the merchant is in the other, the *transaction half*. At the start the attacker pays the
merchant in the transaction half (tx1) and spends the same coin back to itself in the block
half (tx2), so each half mines its own payment into its branch. Once the merchant sees tx1 with
z confirmations the attacker lifts the delay; the attack succeeds when tx1 is not in the chain
every node settles on.

Model (one trial):
- mining is a Poisson process, one block per `block_interval` on average; a block is the
  transaction half's with probability (1 − q) / 2, else the block half's (the block half's
  honest miners and the attacker mine on the same tip: the attacker's power only tips the
  balance);
- inside a half messages are instantaneous; a block crosses to the other half `delay` seconds
  after it is mined, except the block carrying a half's payment, which the other half rejected
  as a double spend: a powlab node fetches that transaction after the compact block, so that
  block takes `payment_trips` (default 3) delays, and its descendants wait for it; a half adopts
  a block it can connect when it has more work, or as much and the half had its data first (as
  a powlab node does: a child that waited for its parent can beat a block of the same height
  the half mined meanwhile);
- the first block a half mines on the fork base carries its own payment, later blocks inherit
  the payment of their chain;
- when the merchant's view (the transaction half's tip) has tx1 z blocks deep, mining stops
  and the delay is lifted: every block mined so far reaches every node, each half moves to the
  most work (on equal heights the block it saw first), and a tie between two tips carrying
  different payments is settled by the next block, found by either half in proportion to its
  power;
- the trial also ends when both halves are on chains carrying the same payment with no block of
  the other payment in flight: the payment can no longer change (tx2 everywhere: the merchant
  never saw tx1 confirmed; tx1 everywhere: it survives).

With `delay` 0 there is never a fork, so there is no success. As `delay` grows the two halves
mine apart for longer and the limit is a partition: the merchant's half finds z blocks while the
block half, unseen, finds k, and the attack succeeds when k > z (or k = z and the block half
finds the next block); `partition_limit` is that closed form.

The paper's "delay" is the time the attacker holds the halves' messages; here it is a
per-message latency on the links between the halves (what `net.link_fault(a, b, delay=…)` gives
a testnet), and the attacker holds nothing back once the merchant is satisfied.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any

from lab.stats import wilson_interval

# One source of truth for the experiment's defaults: the CLI, the testnet scenario
# (examples/scenarios/balance.py) and the docs use these.
DEFAULT_DELAYS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
DEFAULT_QS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
DEFAULT_CONFIRMATIONS = 2
DEFAULT_BLOCK_INTERVAL = 1.0  # seconds; the testnet scenario mines at this interval
DEFAULT_TRIALS = 2000
# One-way delays a block carrying a payment takes to cross to the other half, which rejected
# that payment as a double spend: a powlab node sends the compact block, the receiver asks for
# the transaction it lacks, and it comes back (measured on a testnet: 3.0 × the link delay).
DEFAULT_PAYMENT_TRIPS = 3

SUCCESS = "success"  # tx1 had z confirmations for the merchant and is not in the final chain
SURVIVED = "survived"  # tx1 is in the final chain
NOT_CONFIRMED = "not_confirmed"  # tx2 won before the merchant saw z confirmations of tx1
OUTCOMES = (SUCCESS, SURVIVED, NOT_CONFIRMED)

PAPER_CLAIM = (
    "Natoli & Gramoli 2017 (GHOST, the R3 consortium's Ethereum testnet): a single machine "
    "must delay messages for about 20 minutes to double spend, a coalition with a third of "
    "the mining power about 4 minutes for 94% success"
)

_TX, _BLOCK = 0, 1  # the halves: the merchant's (transaction) half, the attacker's (block) half
_TX1, _TX2 = 1, 2  # the payment to the merchant, the attacker's conflicting spend


@dataclass(frozen=True)
class BalanceCell:
    """One (delay, q) cell of the experiment."""

    delay: float
    q: float
    confirmations: int
    block_interval: float
    trials: int
    outcomes: dict[str, int]
    payment_trips: int = DEFAULT_PAYMENT_TRIPS

    @property
    def successes(self) -> int:
        return self.outcomes[SUCCESS]

    def to_json(self) -> dict[str, Any]:
        lo, hi = wilson_interval(self.successes, self.trials)
        return {
            "delay": self.delay,
            "q": self.q,
            "confirmations": self.confirmations,
            "block_interval": self.block_interval,
            "delay_in_blocks": self.delay / self.block_interval,
            "payment_trips": self.payment_trips,
            "trials": self.trials,
            "successes": self.successes,
            "success_rate": self.successes / self.trials if self.trials else 0.0,
            "ci95": [lo, hi],
            "outcomes": dict(self.outcomes),
            "partition_limit": partition_limit(self.q, self.confirmations),
        }


def half_shares(q: float) -> tuple[float, float]:
    """Hash-rate shares of the transaction half and of the block half (attacker included)."""
    honest_half = (1.0 - q) / 2
    return honest_half, 1.0 - honest_half


def partition_limit(q: float, z: int) -> float:
    """Success probability as the delay grows without bound (a partition until the merchant
    has z confirmations): the block half, unseen, has found k blocks when the transaction half
    finds its z-th (negative binomial); it wins with k > z, and with k = z when it also finds
    the next block."""
    a, b = half_shares(q)
    if z < 1:
        raise ValueError("confirmations must be at least 1")
    # P(k = j) = C(z - 1 + j, j) a^z b^j; success = 1 - P(k < z) - a · P(k = z)
    def p(j: int) -> float:
        return math.comb(z - 1 + j, j) * a**z * b**j

    return max(0.0, 1.0 - sum(p(j) for j in range(z)) - a * p(z))


def balance_trial(q: float, delay: float, z: int, rng: random.Random,
                  block_interval: float = DEFAULT_BLOCK_INTERVAL,
                  payment_trips: int = DEFAULT_PAYMENT_TRIPS) -> str:
    """One attack in virtual time; returns one of OUTCOMES."""
    share_tx, _ = half_shares(q)
    # The block tree since the fork: per block its height, payment, the height that payment
    # was mined at, its half and the time it was mined. Block 0 is the fork base.
    height = [0]
    pay = [0]
    pay_height = [0]
    half = [-1]
    mined = [0.0]
    # When half i has block b's data (`seen`: what a tie between equal heights goes by, the
    # block seen first winning) and when it can connect it (`arrival`: not before its parent).
    seen: list[list[float]] = [[0.0], [0.0]]
    arrival: list[list[float]] = [[0.0], [0.0]]
    tips = [0, 0]
    in_flight: list[list[tuple[float, int]]] = [[], []]  # (arrival, block) on its way to half i
    now = 0.0
    next_block = rng.expovariate(1.0 / block_interval)

    def merchant_satisfied() -> bool:
        tip = tips[_TX]
        return pay[tip] == _TX1 and height[tip] - pay_height[tip] + 1 >= z

    while True:
        # The next event: a delivery (first, at equal times) or a block found.
        arrivals = [f[0][0] if f else math.inf for f in in_flight]
        target = 0 if arrivals[0] <= arrivals[1] else 1
        if arrivals[target] <= next_block:
            now, block = heapq.heappop(in_flight[target])
            tip = tips[target]
            if (height[block], -seen[target][block]) > (height[tip], -seen[target][tip]):
                # More work, or as much and its data came first (a child that waited for
                # its parent may have arrived before the half's own block of that height).
                tips[target] = block
        else:
            now = next_block
            finder = _TX if rng.random() < share_tx else _BLOCK
            other = 1 - finder
            parent = tips[finder]
            height.append(height[parent] + 1)
            if pay[parent]:
                pay.append(pay[parent])
                pay_height.append(pay_height[parent])
            else:
                pay.append(_TX1 if finder == _TX else _TX2)
                pay_height.append(height[parent] + 1)
            half.append(finder)
            mined.append(now)
            block = len(height) - 1
            tips[finder] = block
            # A block carrying its half's payment holds a transaction the other half
            # rejected as a double spend: it takes `payment_trips` one-way delays across
            # (compact block, request for the missing transaction, the transaction). A block
            # is connected only once its parent is, so it never arrives before its parent.
            trips = payment_trips if pay_height[block] == height[block] else 1
            seen[finder].append(now)
            seen[other].append(now + trips * delay)
            arrival[finder].append(now)
            arrival[other].append(max(seen[other][block], arrival[other][parent]))
            heapq.heappush(in_flight[other], (arrival[other][block], block))
            next_block = now + rng.expovariate(1.0 / block_interval)
        if merchant_satisfied():
            return _lift(height, pay, seen, share_tx, rng)
        common = pay[tips[0]]
        if common and common == pay[tips[1]] and not any(
                pay[b] != common for flight in in_flight for _, b in flight):
            return SURVIVED if common == _TX1 else NOT_CONFIRMED


def _lift(height: list[int], pay: list[int], seen: list[list[float]], share_tx: float,
          rng: random.Random) -> str:
    """The delay is lifted and mining stops: every block reaches every half (what is still
    behind the delay at its time), each half settles on the most work, the block it saw
    first on a tie; who wins?"""
    top = max(height)
    candidates = [b for b in range(len(height)) if height[b] == top]
    final = [min(candidates, key=lambda b, s=side: (seen[s][b], b)) for side in (_TX, _BLOCK)]
    winner = pay[final[_TX]] if pay[final[_TX]] == pay[final[_BLOCK]] else (
        pay[final[_TX]] if rng.random() < share_tx else pay[final[_BLOCK]])
    return SURVIVED if winner == _TX1 else SUCCESS


def validate(delays: list[float], qs: list[float], z: int, trials: int,
             block_interval: float, payment_trips: int = DEFAULT_PAYMENT_TRIPS) -> None:
    if any(d < 0 for d in delays):
        raise ValueError("delays must be 0 or more seconds")
    if any(not 0.0 <= q < 1.0 for q in qs):
        raise ValueError("attacker shares q must be within [0, 1)")
    if z < 1:
        raise ValueError("confirmations must be at least 1")
    if trials < 1:
        raise ValueError("trials must be at least 1")
    if block_interval <= 0:
        raise ValueError("the block interval must be positive")
    if payment_trips < 1:
        raise ValueError("a block takes at least one trip across")


def simulate_cell(delay: float, q: float, z: int, trials: int, seed: int,
                  block_interval: float = DEFAULT_BLOCK_INTERVAL,
                  payment_trips: int = DEFAULT_PAYMENT_TRIPS) -> BalanceCell:
    """`trials` attacks for one (delay, q); one generator per cell, derived from the seed, so
    adding a cell never changes the others."""
    validate([delay], [q], z, trials, block_interval, payment_trips)
    rng = random.Random(f"balance:{seed}:{delay}:{q}:{z}:{block_interval}:{payment_trips}")
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for _ in range(trials):
        outcomes[balance_trial(q, delay, z, rng, block_interval, payment_trips)] += 1
    return BalanceCell(delay, q, z, block_interval, trials, outcomes, payment_trips)


def simulate_balance(delays: list[float], qs: list[float],
                     z: int = DEFAULT_CONFIRMATIONS, trials: int = DEFAULT_TRIALS,
                     seed: int = 1,
                     block_interval: float = DEFAULT_BLOCK_INTERVAL,
                     payment_trips: int = DEFAULT_PAYMENT_TRIPS) -> dict[str, Any]:
    """The delay × q grid, as `powlab simulate balance --json` prints it."""
    validate(delays, qs, z, trials, block_interval, payment_trips)
    rows = [simulate_cell(d, q, z, trials, seed, block_interval, payment_trips).to_json()
            for q in qs for d in delays]
    return {
        "experiment": "balance",
        "seed": seed,
        "confirmations": z,
        "block_interval": block_interval,
        "payment_trips": payment_trips,
        "trials": trials,
        "paper": PAPER_CLAIM,
        "rows": rows,
    }
