"""`powlab simulate balance`: the balance attack (Natoli & Gramoli 2017) in virtual time."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.simulate.balance import (
    NOT_CONFIRMED,
    OUTCOMES,
    SUCCESS,
    balance_trial,
    partition_limit,
    simulate_balance,
    simulate_cell,
)
from lab.stats import wilson_interval

REPO = Path(__file__).resolve().parents[1]


def test_no_delay_no_success_whatever_the_share() -> None:
    # Without a delay the halves never fork: whichever payment is mined first is everyone's.
    for q in (0.0, 0.2, 0.45):
        cell = simulate_cell(0.0, q, 2, 1000, seed=1)
        assert cell.successes == 0
        assert sum(cell.outcomes.values()) == 1000


def test_no_share_and_a_short_delay_rarely_succeeds() -> None:
    cell = simulate_cell(0.05, 0.0, 2, 2000, seed=1)
    assert cell.successes / cell.trials < 0.01


@pytest.mark.parametrize(("q", "trips", "delays"), [
    (0.0, 1, [0.0, 1.0, 3.0, 10.0]), (0.2, 1, [0.0, 1.0, 3.0, 10.0]),
    (0.4, 1, [0.0, 1.0, 3.0, 10.0]), (0.0, 3, [0.0, 0.5, 1.0, 2.0]),
    (0.4, 3, [0.0, 0.5, 1.0, 2.0, 5.0]),
])
def test_success_grows_with_the_delay(q: float, trips: int, delays: list[float]) -> None:
    rows = simulate_balance(delays, [q], z=2, trials=1500, seed=2, payment_trips=trips)["rows"]
    for shorter, longer in itertools.pairwise(rows):
        # Each step up in delay is significantly better: the intervals do not even overlap.
        assert longer["ci95"][0] > shorter["ci95"][1], (shorter, longer)


def test_the_payment_blocks_round_trip_helps_the_attacker() -> None:
    # Fetching the payment the other half rejected costs two more trips: the branches stay
    # apart longer, as if the delay were longer.
    plain = simulate_cell(1.0, 0.2, 2, 3000, seed=4, payment_trips=1)
    powlab = simulate_cell(1.0, 0.2, 2, 3000, seed=4, payment_trips=3)
    assert wilson_interval(powlab.successes, powlab.trials)[0] > \
        wilson_interval(plain.successes, plain.trials)[1]
    assert powlab.to_json()["payment_trips"] == 3


def test_a_long_delay_tends_to_the_partition_limit() -> None:
    for q in (0.0, 0.3):
        row = simulate_balance([200.0], [q], z=2, trials=3000, seed=3)["rows"][0]
        lo, hi = wilson_interval(row["successes"], row["trials"], z=3.29)  # 99.9 %
        assert lo <= partition_limit(q, 2) <= hi
        assert row["outcomes"][NOT_CONFIRMED] == 0  # the merchant's half is never overtaken


def test_partition_limit_closed_form() -> None:
    # Equal halves, z = 1: the block half needs 2 blocks before the merchant's 1st (1/4), or
    # 1 block then the tie-breaker (1/4 · 1/2).
    assert partition_limit(0.0, 1) == pytest.approx(0.25 + 0.125)
    assert partition_limit(0.0, 2) == pytest.approx(1 - 0.5 - 0.5 * 3 / 16)
    # More attacker power, more success. In a partition, waiting for more confirmations does
    # not protect the merchant: equal halves tend to a coin toss, a stronger block half to 1.
    assert partition_limit(0.1, 2) < partition_limit(0.3, 2) < partition_limit(0.6, 2)
    assert partition_limit(0.0, 1) < partition_limit(0.0, 3) < partition_limit(0.0, 6) < 0.5
    assert partition_limit(0.2, 1) < partition_limit(0.2, 6) < partition_limit(0.2, 30)
    assert partition_limit(0.2, 30) > 0.9
    with pytest.raises(ValueError):
        partition_limit(0.1, 0)


def test_same_seed_same_output_and_cells_are_independent() -> None:
    one = simulate_balance([0.5, 2.0], [0.1, 0.3], z=2, trials=300, seed=7)
    assert one == simulate_balance([0.5, 2.0], [0.1, 0.3], z=2, trials=300, seed=7)
    assert one != simulate_balance([0.5, 2.0], [0.1, 0.3], z=2, trials=300, seed=8)
    # Adding a cell leaves the others' numbers alone.
    alone = simulate_balance([2.0], [0.3], z=2, trials=300, seed=7)["rows"][0]
    assert alone == next(r for r in one["rows"] if r["delay"] == 2.0 and r["q"] == 0.3)
    rng = random.Random(5)
    assert all(balance_trial(0.2, 3.0, 2, rng) in OUTCOMES for _ in range(200))


def test_only_the_delay_relative_to_the_interval_matters() -> None:
    # Same delay ÷ interval, a different seed stream: statistically the same success rate.
    fast = simulate_cell(2.0, 0.2, 2, 3000, seed=1, block_interval=1.0)
    slow = simulate_cell(20.0, 0.2, 2, 3000, seed=1, block_interval=10.0)
    lo, hi = wilson_interval(fast.successes, fast.trials, z=3.29)
    assert lo <= slow.successes / slow.trials <= hi


def test_validation() -> None:
    for bad in ({"delays": [-1.0]}, {"qs": [1.0]}, {"z": 0}, {"trials": 0},
                {"block_interval": 0.0}, {"payment_trips": 0}):
        kwargs: dict[str, Any] = {"delays": [1.0], "qs": [0.1], "z": 2, "trials": 10,
                                  "seed": 1, "block_interval": 1.0, "payment_trips": 3} | bad
        with pytest.raises(ValueError):
            simulate_balance(**kwargs)


def test_cli_json_and_table() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lab", "simulate", "balance", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=120)

    out = run("--delay", "0,2", "--q", "0.2", "--z", "1", "--trials", "200", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["confirmations"] == 1 and data["trials"] == 200 and data["seed"] == 1
    assert [(r["delay"], r["q"]) for r in data["rows"]] == [(0.0, 0.2), (2.0, 0.2)]
    for row in data["rows"]:
        assert sum(row["outcomes"].values()) == row["trials"] == 200
        assert row["successes"] == row["outcomes"][SUCCESS]
        assert row["ci95"] == list(wilson_interval(row["successes"], row["trials"]))
        assert row["partition_limit"] == partition_limit(0.2, 1)
    again = run("--delay", "0,2", "--q", "0.2", "--z", "1", "--trials", "200", "--json")
    assert json.loads(again.stdout) == data
    table = run("--delay", "1", "--q", "0.1", "--trials", "50")
    assert table.returncode == 0 and "partition limit" in table.stdout
    bad = run("--delay", "-1", "--trials", "5")
    assert bad.returncode == 2 and "delays" in bad.stderr


def test_plot_says_what_the_data_show() -> None:
    pytest.importorskip("matplotlib")
    from lab.plotting import pyplot
    from lab.simulate.plots import build_balance_figure

    data = simulate_balance([0.0, 2.0, 10.0], [0.0, 0.4], z=2, trials=400, seed=1)
    try:
        ax = build_balance_figure(data).axes[0]
        assert "success grows with the delay between the halves, up to the partition limit" \
            in ax.get_title()  # by 10 s both shares are at their limits
        assert "crosses in 3 delays" in ax.get_xlabel()
        short = simulate_balance([0.0, 1.0], [0.4], z=2, trials=400, seed=1)
        assert "the more double spends succeed" in build_balance_figure(short).axes[0].get_title()
        assert len(ax.containers) == 2  # one series with error bars per share
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:2] == ["q = 0: simulated, 95 % CI",
                              f"q = 0: partition limit {partition_limit(0.0, 2):.2f}"]
        flat = simulate_balance([0.0, 0.01], [0.1], z=2, trials=100, seed=1)
        assert "grows" not in build_balance_figure(flat).axes[0].get_title()
        assert "the more" not in build_balance_figure(flat).axes[0].get_title()
    finally:
        pyplot().close("all")


def test_cli_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "balance.png"
    out = subprocess.run([sys.executable, "-m", "lab", "simulate", "balance", "--delay", "0,2",
                          "--q", "0.2", "--trials", "100", "--plot", str(png)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
