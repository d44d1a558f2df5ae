"""examples/scenarios/balance.py end to end: scripts/run's testnet (4 nodes in a line, n1 and n3
mining), one trial per cell, and a JSON report whose figures agree with each other and with the
simulator's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.simulate.balance import NOT_CONFIRMED, SUCCESS, SURVIVED, partition_limit
from lab.stats import wilson_interval
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet

# About 15–20 s in all (the testnet's start and funding, four short trials): not marked slow.
SCENARIO = str(Path(REPO) / "examples" / "scenarios" / "balance.py")


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("balance") / "net"
    try:
        up = run_powlab("testnet", "up", "--dir", str(directory), "--nodes", "4",
                        "--miner-nodes", "n1,n3", "--topology", "line", "--block-time", "3",
                        "--subnet", subnets.subnet(subnets.BALANCE), timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def scenario(directory: Path, *args: str, plot: Path | None = None) -> dict[str, Any]:
    result = run_powlab("scenario", "run", SCENARIO, "--dir", str(directory), "--json",
                        *(["--plot", str(plot)] if plot else []), "--", *args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def test_one_trial_per_cell_reports_consistent_figures(testnet: Path, tmp_path: Path) -> None:
    png = tmp_path / "balance.png"
    data = scenario(testnet, "--delay", "0,3", "--q", "0.4", "--trials", "1",
                    "--confirmations", "1", "--sim-trials", "300",
                    plot=png if _have_matplotlib() else None)
    assert "error" not in data, data.get("error")
    if _have_matplotlib():
        assert data["plot"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert data["scenario"] == "balance" and data["confirmations"] == 1
    # The halves of the line, the merchant (n4) in the transaction half, and the attacker
    # (the manifest's last miner, n3, is in the merchant's half) moved to the block half.
    assert data["halves"]["transaction_half"] == ["n3", "n4"]
    assert data["halves"]["block_half"] == ["n1", "n2"]
    assert data["roles"] == {"attacker": "n2", "victim": "n4", "honest": ["n3", "n1"]}
    rows = data["rows"]
    assert [(r["delay"], r["q"]) for r in rows] == [(0.0, 0.4), (3.0, 0.4)]
    for row in rows:
        counted = sum(row["outcomes"].values())
        assert counted == row["trials"] and counted + row["timed_out"] == 1
        assert row["successes"] == row["outcomes"][SUCCESS]
        assert row["ci95"] == list(wilson_interval(row["successes"], row["trials"]))
        assert row["partition_limit"] == partition_limit(0.4, 1)
        sim = row["simulator"]
        assert sim["trials"] == 300 and sim["ci95"][0] <= sim["success_rate"] <= sim["ci95"][1]
    assert data["trials"] == sum(r["trials"] for r in rows)
    assert data["successes"] == sum(r["successes"] for r in rows)
    assert data["success"] == (data["successes"] > 0)
    # Without a delay the simulated halves never fork: no success. (Live, two blocks found at
    # once can still fork the network for a moment, and with z = 1 that is enough now and
    # then: one trial says nothing about the rate.)
    no_delay = rows[0]
    assert no_delay["simulator"]["successes"] == 0
    assert no_delay["timed_out"] == 0
    assert set(no_delay["outcomes"]) == {SUCCESS, SURVIVED, NOT_CONFIRMED}
    # With 3 s between the halves at one block a second the simulator gives the attack a real
    # chance; one live trial can only be one of the outcomes.
    assert rows[1]["simulator"]["success_rate"] > 0.1
    for result in data["trial_results"]:
        assert result["outcome"] in (SUCCESS, SURVIVED, NOT_CONFIRMED)
    delayed = [e for e in data["timeline"] if e["event"] == "link fault"]
    assert delayed and all(e.get("delay_ms") == 3000 for e in delayed)
    assert any(e["event"] == "link faults cleared" for e in data["timeline"])


def test_the_scenario_names_the_outcomes_as_the_simulator_does() -> None:
    from lab.scenario.runner import load_file
    from lab.simulate.balance import OUTCOMES

    module = load_file(SCENARIO).module
    assert (module.SUCCESS, module.SURVIVED, module.NOT_CONFIRMED) == OUTCOMES


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_bad_arguments_are_errors_not_crashes(testnet: Path) -> None:
    result = run_powlab("scenario", "run", SCENARIO, "--dir", str(testnet), "--json", "--",
                        "--q", "1.2", "--trials", "1", timeout=120)
    data = json.loads(result.stdout)
    assert result.returncode == 1 and "q must be within" in data["error"]
    result = run_powlab("scenario", "run", SCENARIO, "--dir", str(testnet), "--json", "--",
                        "--halves", "n1,n2", "n2,n3,n4", timeout=120)
    assert "overlap" in json.loads(result.stdout)["error"]
