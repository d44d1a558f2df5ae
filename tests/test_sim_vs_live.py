"""Live `powlab attack majority` runs against the simulator's prediction for the same race.

How the live attack maps onto the theory (lab/attack/majority.py):
- It forks at the converged tip F and at once mines its first private block (holding tx2) with
  `generateblock`, before any miner is switched on: a free block at the fork, which the
  theory's ``overtake`` attacker does not get.
- The victim's payment is in the first honest block (tx1 reaches the honest mempools before
  mining starts), so "Z confirmations" means Z honest blocks since F, as in the theory.
- It publishes once the payment has Z confirmations and its branch has strictly more work
  (regtest never retargets, so work is length): 1 + k > h for k attacker and h honest blocks
  since F. Overtake plus the free block is k >= h: the ``catch-up`` condition.
- It gives up when `h_height - a_height >= N`, and a_height counts the free block:
  h - (1 + k) >= N, i.e. h - k >= N + 1, checked all along (also before Z confirmations).
So the live race is exactly the ``catch-up`` race with give-up N + 1; the ``overtake`` model
with the same Z and N would predict about half the success rate. The remaining differences
are physical, not in the rules: hashes are paced on a fixed cadence with about half of them
winning (regtest), not a Poisson process; the attack polls heights every ~0.25 s; honest
miners can tie each other. At the parameters below a model with paced hashes and polling
moves the success probability by less than 0.01, far below what a few trials can see.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.attack_theory import exact_probability
from lab.attack.majority import race_step
from lab.simulate.doublespend import simulate_doublespend
from tests import subnets
from tests.daemon_harness import run_powlab, tear_down_testnet

# Two races whose predictions lie far apart, eight trials each, so the 99% interval for
# each excludes a good part of the counts (a single race near p = 0.5 with eight trials
# passes everything from 1 to 7, a test that can hardly fail):
# - q = 0.2, Z = 2, give-up 2: p = 0.195 (the naive overtake reading says 0.058); 99% interval
#   [0, 5]: an attack that nearly always succeeds fails it;
# - q = 0.45, Z = 1, give-up 4: p = 0.842; 99% interval [4, 8]: one that rarely succeeds
#   fails it, and so does one at half the predicted rate more often than not.
RACES = ((0.2, 2, 2), (0.45, 1, 4))
TRIALS = 8
# Long enough against the attack's ~0.25 s polling that two blocks rarely land in one poll.
BLOCK_INTERVAL = 2.0
# The testnet's own mining between trials.
BACKGROUND_BLOCK_TIME = "1"
LEVEL = 0.99


def powlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_powlab(*args, timeout=timeout)


def live_prediction(q: float, z: int, give_up: int) -> float:
    """Success probability of `powlab attack majority` (see the module docstring)."""
    return exact_probability(q, z, "catch-up", give_up + 1)


def binomial_interval(trials: int, p: float, level: float = LEVEL) -> tuple[int, int]:
    """Central interval of success counts: each tail outside it has at most (1 - level) / 2."""
    tail = (1.0 - level) / 2
    pmf = [math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(trials + 1)]
    lo, below = 0, pmf[0]
    while below <= tail:
        lo += 1
        below += pmf[lo]
    hi, above = trials, pmf[trials]
    while above <= tail:
        hi -= 1
        above += pmf[hi]
    return lo, hi


def live_rule_race(q: float, z: int, give_up: int, rng: random.Random) -> bool:
    """Drives lab/attack/majority.py's own rule (race_step), one block at a time: heights
    above the fork, the attacker's first block free, the payment in the first honest block
    (so its confirmations are the honest height), and regtest work equal to length."""
    honest, attacker = 0, 1
    while True:
        if rng.random() < q:
            attacker += 1
        else:
            honest += 1
        step = race_step(attacker, honest, honest, z, give_up,
                         lambda a=attacker, h=honest: (a, h))
        if step == "gave up":
            return False
        if step == "publish":
            return True


def test_race_step_is_the_rule_described_above() -> None:
    never = lambda: pytest.fail("work compared before Z confirmations")  # noqa: E731
    assert race_step(1, 3, 3, 2, 2, never) == "gave up"
    assert race_step(1, 1, 1, 2, 2, never) is None
    assert race_step(3, 2, 2, 2, 2, lambda: (3, 2)) == "publish"
    assert race_step(2, 2, 2, 2, 2, lambda: (2, 2)) is None  # equal work: keep mining


@pytest.mark.parametrize(("q", "z", "give_up"), [(0.35, 2, 2), (0.2, 3, 1), (0.45, 1, 4)])
def test_live_rules_are_the_catch_up_race_with_one_more_block_of_give_up(
    q: float, z: int, give_up: int
) -> None:
    rng = random.Random(f"{q}:{z}:{give_up}")
    trials = 40_000
    successes = sum(live_rule_race(q, z, give_up, rng) for _ in range(trials))
    expected = live_prediction(q, z, give_up)
    # 4.5 standard errors: a wrong mapping (e.g. plain overtake) misses by far more.
    assert abs(successes / trials - expected) < 4.5 * math.sqrt(expected * (1 - expected)
                                                                / trials)
    assert expected > exact_probability(q, z, "overtake", give_up)


def test_binomial_interval() -> None:
    assert binomial_interval(6, 0.5) == (0, 6)  # 1/64 > 0.005: six trials cannot exclude
    assert binomial_interval(6, 0.05) == (0, 2)
    lo, hi = binomial_interval(100, 0.5)
    assert 35 <= lo < 50 < hi <= 65


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("simlive") / "net"
    # This run's own loopback range, so the run never collides with another test's nodes.
    subnet = subnets.subnet(subnets.SIM_VS_LIVE)
    try:
        result = powlab("testnet", "up", "--dir", str(directory), "--nodes", "4", "--miners",
                        "3", "--topology", "mesh", "--block-time", BACKGROUND_BLOCK_TIME,
                        "--subnet", subnet, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        # Every trial spends one of the attacker's (n3) coins, and a lost race earns it none:
        # give it a mature coin for each of the 2 × 8 trials (coinbases mature after 100).
        for node, blocks in (("n3", str(len(RACES) * TRIALS + 4)), ("n1", "101")):
            result = powlab("testnet", "mine", "--dir", str(directory), node, blocks)
            assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def majority(directory: Path, seed: int, q: float, z: int, give_up: int) -> dict[str, Any]:
    result = powlab("attack", "majority", "--dir", str(directory), "--json",
                    "--hashrate-share", str(q), "--confirmations", str(z),
                    "--give-up", str(give_up), "--block-interval", str(BLOCK_INTERVAL),
                    # A race near q = 1/2 can run for dozens of blocks before it is won or
                    # given up (a timeout would be a broken run): room for ~300 blocks.
                    "--seed", str(seed), "--timeout", "600")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_the_live_bounds_can_fail() -> None:
    low, high = (binomial_interval(TRIALS, live_prediction(*race)) for race in RACES)
    assert low == (0, 5) and high == (4, 8)
    # A mapping error that halves the success rate (plain overtake) is caught at the low
    # race only rarely, but an attack that always or never succeeds cannot pass both.
    assert low[1] < TRIALS and high[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize(("q", "z", "give_up"), RACES)
def test_live_majority_successes_lie_in_the_simulators_interval(
    testnet: Path, q: float, z: int, give_up: int
) -> None:
    predicted = live_prediction(q, z, give_up)
    naive = exact_probability(q, z, "overtake", give_up)
    # The simulator's Monte Carlo for the mapped race must carry the same number.
    sim = simulate_doublespend([q], [z], 20_000, seed=5, model="catch-up",
                               give_up=give_up + 1)["rows"][0]
    assert sim["ci95"][0] <= predicted <= sim["ci95"][1], sim
    lo, hi = binomial_interval(TRIALS, predicted)
    assert (lo, hi) != (0, TRIALS), "a bound that cannot fail"

    runs = []
    for trial in range(TRIALS):
        started = time.monotonic()
        data = majority(testnet, 100 + trial, q, z, give_up)
        elapsed = time.monotonic() - started
        runs.append(data)
        print(f"trial {trial}: success={data['success']} outcome={data['outcome']} "
              f"attacker +{data['attacker_height'] - data['fork_height']} honest "
              f"+{data['honest_height'] - data['fork_height']} reorg={data['reorg_depth']} "
              f"({elapsed:.1f}s)")
        # A timeout would be a broken run, not a lost race: the mapping has no third outcome.
        assert data["outcome"] in ("published", "gave up"), data["verdict"]
        if data["success"]:
            assert data["outcome"] == "published" and data["reorg_depth"] >= z
        else:
            assert data["victim_final_status"] in ("confirmed", "final")

    successes = sum(bool(r["success"]) for r in runs)
    print(f"live q={q}: {successes}/{TRIALS} successes; predicted p = {predicted:.4f} "
          f"(catch-up, give-up {give_up + 1}; Monte Carlo {sim['empirical']:.4f}), naive "
          f"overtake with give-up {give_up}: {naive:.4f}; {LEVEL:.0%} interval [{lo}, {hi}]")
    assert lo <= successes <= hi
