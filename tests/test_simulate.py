"""The simulator and the attack theory it is checked against."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from consensus.attack_theory import (
    catch_up_probability,
    exact_probability,
    eyal_sirer_share,
    grunspan_perez_marco_probability,
    nakamoto_probability,
    reversal_risk,
    wilson_interval,
)
from lab.simulate.doublespend import simulate_doublespend
from lab.simulate.network import NetworkConfig, simulate_network
from lab.simulate.selfish import simulate_selfish, simulate_selfish_grid
from tests.daemon_harness import REPO


@pytest.mark.parametrize(("q", "z", "expected"), [
    # Nakamoto's whitepaper §11 table.
    (0.1, 0, 1.0), (0.1, 1, 0.2045873), (0.1, 5, 0.0009137), (0.1, 10, 0.0000012),
    (0.3, 5, 0.1773523), (0.3, 10, 0.0416605),
])
def test_nakamoto_matches_the_whitepaper(q: float, z: int, expected: float) -> None:
    assert nakamoto_probability(q, z) == pytest.approx(expected, abs=5e-7)


@pytest.mark.parametrize(("q", "z", "expected"), [
    # Rosenfeld 2014, table 1 (percent), and r(q, 1) = 2q.
    (0.1, 1, 0.2), (0.1, 6, 0.00059141), (0.3, 6, 0.15645), (0.2, 1, 0.4),
])
def test_exact_catch_up_matches_rosenfeld(q: float, z: int, expected: float) -> None:
    assert exact_probability(q, z) == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("q", [0.05, 0.1, 0.2, 0.3, 0.45])
@pytest.mark.parametrize("z", [1, 2, 3, 6, 10, 20])
def test_rosenfeld_equals_grunspan_perez_marco(q: float, z: int) -> None:
    assert exact_probability(q, z) == pytest.approx(
        grunspan_perez_marco_probability(q, z), rel=1e-9, abs=1e-15
    )


def test_model_ordering_and_edges() -> None:
    for q in (0.1, 0.3):
        for z in (1, 3, 6):
            assert (exact_probability(q, z, "overtake") < exact_probability(q, z)
                    < exact_probability(q, z, "premined"))
    assert exact_probability(0.5, 6) == 1.0 and exact_probability(0.6, 6, "overtake") == 1.0
    assert catch_up_probability(0.1, 0) == 1.0
    assert reversal_risk(-1, 0.1) == 1.0
    with pytest.raises(ValueError):
        exact_probability(0.1, 3, "psychic")
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0 < hi < 0.05


@pytest.mark.parametrize("model", ["catch-up", "overtake", "premined"])
def test_monte_carlo_agrees_with_exact_within_ci(model: str) -> None:
    data = simulate_doublespend([0.1, 0.3], [1, 2, 4], 6_000, seed=7, model=model)
    assert data["model"] == model
    misses = [r for r in data["rows"] if not r["ci95"][0] <= r["exact"] <= r["ci95"][1]]
    # 6 cells at 95% each: allow one miss by chance, no more.
    assert len(misses) <= 1, misses
    for row in data["rows"]:
        assert set(row) >= {"q", "z", "trials", "successes", "empirical", "ci95", "nakamoto",
                            "exact"}


def test_doublespend_same_seed_same_output() -> None:
    a = simulate_doublespend([0.2], [1, 3], 2_000, seed=3)
    b = simulate_doublespend([0.2], [1, 3], 2_000, seed=3)
    c = simulate_doublespend([0.2], [1, 3], 2_000, seed=4)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


def test_selfish_mining_matches_eyal_sirer() -> None:
    for alpha, gamma in ((0.25, 0.0), (0.4, 0.0), (0.3, 0.5)):
        row = simulate_selfish(alpha, gamma, 200_000, random.Random(11))
        expected = eyal_sirer_share(alpha, gamma)
        lo, hi = row["ci95"]
        assert lo - 0.005 <= expected <= hi + 0.005, row
    strong = simulate_selfish(0.4, 0.0, 200_000, random.Random(5))
    assert strong["ci95"][0] > 0.4 and strong["profitable"]
    weak = simulate_selfish(0.2, 0.0, 200_000, random.Random(5))
    assert weak["ci95"][1] < 0.2 and not weak["profitable"]
    grid = simulate_selfish_grid([0.3], [0.0, 1.0], 10_000, seed=1)
    assert [r["gamma"] for r in grid["rows"]] == [0.0, 1.0]


def test_eyal_sirer_thresholds() -> None:
    assert eyal_sirer_share(1 / 3, 0.0) == pytest.approx(1 / 3)
    assert eyal_sirer_share(0.25, 0.5) == pytest.approx(0.25)


def test_network_same_seed_same_output_and_contract_keys() -> None:
    cfg = NetworkConfig(nodes=40, blocks=60, block_interval=2.0, latency="uniform:50ms,150ms",
                        miners=5, seed=9)
    a = simulate_network(cfg)
    b = simulate_network(cfg)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a) >= {"nodes", "blocks", "seed", "stale_rate", "propagation_ms", "reorg_depths"}
    assert set(a["propagation_ms"]) == {"p50", "p90", "max"}
    assert a["converged"]
    assert a["main_chain_blocks"] + a["stale_blocks"] == 60


def test_stale_rate_rises_as_the_interval_nears_propagation_delay() -> None:
    rates = []
    for interval in (0.3, 2.0, 30.0):
        result = simulate_network(NetworkConfig(nodes=60, blocks=300, block_interval=interval,
                                                latency="100ms", miners=10, seed=2))
        rates.append(result["stale_rate"])
    assert rates[0] > rates[1] > rates[2]
    assert rates[0] > 0.2 and rates[2] < 0.05


def test_bandwidth_makes_block_size_matter() -> None:
    small = simulate_network(NetworkConfig(nodes=30, blocks=50, miners=3, seed=4,
                                           bandwidth_bps=10e6, block_size=10_000))
    large = simulate_network(NetworkConfig(nodes=30, blocks=50, miners=3, seed=4,
                                           bandwidth_bps=10e6, block_size=2_000_000))
    assert large["propagation_ms"]["p50"] > small["propagation_ms"]["p50"] + 1000


def test_enforced_finality_never_reorgs_deeper_than_the_depth() -> None:
    result = simulate_network(NetworkConfig(nodes=30, blocks=200, block_interval=0.2,
                                            latency="150ms", miners=6, seed=3,
                                            finality_depth=2, enforce_finality=True))
    assert all(int(depth) < 2 for depth in result["reorg_depths"])


def test_cli_json_outputs() -> None:
    def run(*args: str) -> dict:  # type: ignore[type-arg]
        out = subprocess.run([sys.executable, "-m", "lab", "simulate", *args, "--json"],
                             capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
        return json.loads(out.stdout)

    ds = run("doublespend", "--q", "0.1", "--z", "1..2", "--trials", "500")
    assert ds["model"] == "catch-up" and len(ds["rows"]) == 2
    sf = run("selfish", "--alpha", "0.3", "--gamma", "0", "--blocks", "5000")
    assert set(sf["rows"][0]) >= {"alpha", "gamma", "blocks", "attacker_share", "eyal_sirer"}
    net = run("network", "--nodes", "20", "--blocks", "20", "--seed", "1")
    assert net["seed"] == 1 and net["nodes"] == 20
    again = run("network", "--nodes", "20", "--blocks", "20", "--seed", "1")
    assert net == again


# --------------------------------------------------------------------------- finite give-up


@pytest.mark.parametrize(("model", "q", "z", "give_up"), [
    ("catch-up", 0.3, 2, 1), ("overtake", 0.1, 2, 3), ("overtake", 0.45, 4, 3),
    ("premined", 0.3, 5, 2), ("catch-up", 0.5, 3, 3), ("overtake", 0.6, 3, 2),
])
def test_give_up_formula_agrees_with_monte_carlo(model: str, q: float, z: int,
                                                 give_up: int) -> None:
    # r < 1, r = 1 and r > 1, each model; 99.9% intervals so the six cells rarely miss by chance.
    data = simulate_doublespend([q], [z], 20_000, seed=11, model=model, give_up=give_up)
    assert data["give_up"] == give_up
    row = data["rows"][0]
    lo, hi = wilson_interval(row["successes"], row["trials"], z=3.2905)
    assert lo <= row["exact"] <= hi, row
    assert row["exact"] <= row["exact_never_gives_up"]
    assert row["exact"] == exact_probability(q, z, model, give_up)


def test_give_up_counts_behind_from_the_start() -> None:
    # Catch-up, give up 1 behind, z = 2: the attacker must be level after each honest block,
    # before the z-th as well as after, so only q^2 (two blocks first) or q p q wins.
    q, p = 0.3, 0.7
    assert exact_probability(q, 2, "catch-up", 1) == pytest.approx(q * q + q * p * q, rel=1e-12)
    # Overtake needs one block more than a tie, so its deficit barrier is N + 1: at z = 0 and
    # N = 1 it wins iff the very next block is its own (a barrier at N would give 0).
    assert exact_probability(q, 0, "overtake", 1) == pytest.approx(q, rel=1e-12)
    assert exact_probability(0.5, 0, "overtake", 3) == pytest.approx(3 / 4, rel=1e-12)


def test_ruin_probability_limits() -> None:
    from consensus.attack_theory import ruin_probability

    assert ruin_probability(0.5, 2, 5) == pytest.approx(3 / 5)
    # Continuous in r across 1: the expm1 forms must meet the linear one.
    assert ruin_probability(0.5 - 1e-9, 2, 5) == pytest.approx(0.6, abs=1e-7)
    assert ruin_probability(0.5 + 1e-9, 2, 5) == pytest.approx(0.6, abs=1e-7)
    r = 0.6 / 0.4
    assert ruin_probability(0.6, 3, 7) == pytest.approx((r**3 - r**7) / (1 - r**7))
    assert ruin_probability(0.6, 3, 5000) == pytest.approx(1.0)  # r^B would overflow
    assert ruin_probability(0.2, 3, 5000) == pytest.approx(0.25**3)
    assert ruin_probability(0.3, 0, 4) == 1.0 and ruin_probability(0.3, 4, 4) == 0.0
    assert ruin_probability(0.0, 1, 4) == 0.0 and ruin_probability(1.0, 3, 4) == 1.0


@pytest.mark.parametrize("model", ["catch-up", "overtake", "premined"])
@pytest.mark.parametrize(("q", "z"), [(0.1, 3), (0.3, 2), (0.3, 6), (0.45, 4)])
def test_give_up_tends_to_never_giving_up(model: str, q: float, z: int) -> None:
    from itertools import pairwise

    infinite = exact_probability(q, z, model)
    values = [exact_probability(q, z, model, n) for n in (1, 2, 4, 8, 16, 64, 256, 1024)]
    assert all(a <= b + 1e-15 for a, b in pairwise(values))
    assert values[-1] <= infinite + 1e-12
    assert values[-1] == pytest.approx(infinite, rel=1e-9, abs=1e-15)
    # At or above half the hash rate the infinite attacker always wins; a finite one only
    # as N grows (linearly in N at q = 1/2).
    assert exact_probability(0.5, z, model, 1000) > 0.99 - 2 * z / 1000
    assert exact_probability(0.6, z, model, 64) == pytest.approx(1.0, abs=1e-9)


def test_give_up_validation_and_cli() -> None:
    with pytest.raises(ValueError):
        exact_probability(0.3, 2, "overtake", 0)
    with pytest.raises(ValueError):
        simulate_doublespend([0.3], [2], 10, seed=1, give_up=0)
    # Without a give-up the rows carry no extra key and the old numbers stay put.
    assert "exact_never_gives_up" not in simulate_doublespend([0.3], [2], 10, seed=1)["rows"][0]
    out = subprocess.run([sys.executable, "-m", "lab", "simulate", "doublespend", "--q", "0.3",
                          "--z", "1..2", "--trials", "500", "--model", "overtake",
                          "--give-up", "3", "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert data["give_up"] == 3 and len(data["rows"]) == 2
    for row in data["rows"]:
        assert row["exact"] == exact_probability(0.3, row["z"], "overtake", 3)
        assert row["exact"] < row["exact_never_gives_up"]


def test_reversal_risk_summary_reads_as_the_issue_describes() -> None:
    from consensus.txstatus import TxStatus

    assert TxStatus(b"t", "final", 6).risk_summary(0.1) == (
        "6 confirmations — reversal risk 0.059% at q = 10%"
    )
    assert TxStatus(b"t", "mempool", 0).risk_summary(0.1).endswith("risk 100% at q = 10%")
    assert TxStatus(b"t", "conflicted", -2).reversal_risk(0.1) == 1.0
    assert TxStatus(b"t", "confirmed", 1).risk_summary(0.25).startswith("1 confirmation —")


# --------------------------------------------------------------------------- zero-conf RBF


@pytest.mark.parametrize("model", ["catch-up", "overtake", "premined"])
@pytest.mark.parametrize(("q", "full_rbf"), [(0.0, 0.0), (0.0, 0.1), (0.0, 0.5), (0.1, 0.5),
                                             (0.3, 1.0), (0.2, 0.0)])
def test_zero_conf_full_rbf_matches_its_exact_value(q: float, full_rbf: float,
                                                    model: str) -> None:
    from lab.simulate.doublespend import zero_conf_exact

    data = simulate_doublespend([q], [0], 4000, seed=3, model=model, full_rbf=full_rbf)
    row = data["rows"][0]
    assert row["exact"] == pytest.approx(zero_conf_exact(q, full_rbf, model))
    lo, hi = wilson_interval(row["successes"], row["trials"], z=3.29)  # 99.9 %
    assert lo <= row["exact"] <= hi
    # By hand: q + p·F + p·(1 − F)·(catching up from one block behind, model's offset).
    p = 1 - q
    catch = catch_up_probability(q, 1 + {"catch-up": 0, "overtake": 1, "premined": -1}[model])
    assert row["exact"] == pytest.approx(q + p * full_rbf + p * (1 - full_rbf) * catch)
    if q == 0 and model != "premined":
        assert row["exact"] == pytest.approx(full_rbf)  # the live race: only honest miners


def test_zero_conf_full_rbf_needs_a_big_enough_bump_and_leaves_z_above_0_alone() -> None:
    from consensus.params import DEFAULT_INCREMENTAL_RELAY_FEE_RATE

    base = simulate_doublespend([0.1, 0.3], [0, 1, 2], 2000, seed=4, model="overtake")
    rbf = simulate_doublespend([0.1, 0.3], [0, 1, 2], 2000, seed=4, model="overtake",
                               full_rbf=0.5)
    small = simulate_doublespend([0.1, 0.3], [0, 1, 2], 2000, seed=4, model="overtake",
                                 full_rbf=0.5,
                                 fee_bump=DEFAULT_INCREMENTAL_RELAY_FEE_RATE - 0.5)
    assert rbf["replaces"] and not small["replaces"]
    for b, r, s in zip(base["rows"], rbf["rows"], small["rows"], strict=True):
        if b["z"] > 0:
            assert b == r == s  # same numbers, same generator
        else:
            assert r["exact"] > s["exact"]
            # Too small a bump: nobody replaces, the first block holds tx1 unless the
            # attacker finds it.
            assert s["exact"] == pytest.approx(b["q"] + (1 - b["q"]) * (b["q"] / (1 - b["q"])) ** 2)
    exact_bump = simulate_doublespend([0.0], [0], 500, seed=4, full_rbf=1.0,
                                      fee_bump=DEFAULT_INCREMENTAL_RELAY_FEE_RATE)
    assert exact_bump["replaces"] and exact_bump["rows"][0]["successes"] == 500


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"full_rbf": 1.5}, r"share in \[0, 1\]"),
    ({"full_rbf": -0.1}, r"share in \[0, 1\]"),
    ({"full_rbf": float("nan")}, r"share in \[0, 1\]"),
    ({"full_rbf": 0.5, "fee_bump": -1.0}, "--fee-bump"),
    ({"full_rbf": 0.5, "fee_bump": float("nan")}, "--fee-bump"),
    ({"full_rbf": 0.5, "fee_bump": float("inf")}, "--fee-bump"),
    ({"fee_bump": 5.0}, "--fee-bump"),
    ({"full_rbf": 0.5, "give_up": 3}, "do not combine"),
])
def test_zero_conf_full_rbf_refuses_bad_settings(kwargs: dict[str, float],
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_doublespend([0.1], [0, 1], 10, seed=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="include 0"):
        simulate_doublespend([0.1], [1, 2], 10, seed=1, full_rbf=0.5)


def test_simulate_cli_full_rbf() -> None:
    out = subprocess.run([sys.executable, "-m", "lab", "simulate", "doublespend", "--q", "0",
                          "--z", "0", "--full-rbf", "0.5", "--trials", "400", "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["full_rbf"] == 0.5 and data["fee_bump"] == 50.0 and data["replaces"]
    assert data["rows"][0]["exact"] == 0.5
    for bad in (["--full-rbf", "2"], ["--full-rbf", "x"], ["--full-rbf", "0.5", "--z", "1"]):
        out = subprocess.run([sys.executable, "-m", "lab", "simulate", "doublespend", *bad],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, bad
