"""`simulate network --preset bitcoin` against Gervais et al. 2016, the columns' meanings and
the `simulate` help texts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from consensus.attack_theory import exact_probability
from lab.simulate import presets
from lab.simulate.network import (
    NetworkConfig,
    blocks_for_target,
    effective_attacker_share,
    simulate_network,
)
from tests.daemon_harness import REPO


@pytest.mark.parametrize("ref", presets.REFERENCE_STALE_RATES,
                         ids=lambda r: f"{r.block_interval:g}s")
def test_bitcoin_preset_reproduces_the_published_stale_rate(ref: presets.Reference) -> None:
    run = presets.annotate(simulate_network(presets.bitcoin_config(ref.block_interval)),
                           "bitcoin")
    ratio = run["stale_rate"] / ref.stale_rate
    assert abs(ratio - 1) <= presets.TOLERANCE, (ref, run["stale_rate"])
    assert run["reference"]["within_tolerance"] and run["reference"]["ratio"] == ratio


def test_reference_table_is_the_one_source() -> None:
    points = presets.reference_stale_rates()
    assert [(p["block_interval"], p["stale_rate"]) for p in points] == [
        (r.block_interval, r.stale_rate) for r in presets.REFERENCE_STALE_RATES]
    assert all("Gervais" in p["source"] for p in points)
    assert presets.reference_for(600.0) is presets.REFERENCE_STALE_RATES[0]
    assert presets.reference_for(7.0) is None


def test_bitcoin_preset_parameters() -> None:
    cfg = presets.bitcoin_config(600.0)
    assert cfg.block_size == 1_000_000 and cfg.miners == 16 and cfg.degree == 8
    assert presets.bitcoin_config(60.0).block_size == 100_000
    assert presets.bitcoin_config(0.001).block_size == presets.MIN_BLOCK_SIZE
    assert cfg.validation_delay == pytest.approx(0.2)


def test_bitcoin_preset_is_deterministic() -> None:
    a = simulate_network(presets.bitcoin_config(1.0, seed=5, blocks=300))
    b = simulate_network(presets.bitcoin_config(1.0, seed=5, blocks=300))
    c = simulate_network(presets.bitcoin_config(1.0, seed=6, blocks=300))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


def test_reorgs_count_network_events_not_node_events() -> None:
    run = simulate_network(NetworkConfig(nodes=40, blocks=300, block_interval=0.5,
                                         latency="100ms", miners=8, seed=3))
    events = sum(run["reorg_depths"].values())
    node_events = sum(run["node_reorg_depths"].values())
    assert run["reorg_events"] == events > 0
    # Many nodes leave the same branch: one network event, many node reorgs.
    assert node_events > events
    # Every abandoned branch holds at least one stale block, and stale blocks that nobody
    # built on top of and nobody adopted cause no reorg: events <= stale blocks.
    assert events <= run["stale_blocks"]


def test_z_column_follows_the_stale_rate() -> None:
    assert effective_attacker_share(0.1, 0.0) == pytest.approx(0.1)
    assert effective_attacker_share(0.1, 0.5) == pytest.approx(0.1 / 0.55)
    fast = simulate_network(NetworkConfig(nodes=30, blocks=200, block_interval=0.3,
                                          latency="150ms", miners=6, seed=2))
    slow = simulate_network(NetworkConfig(nodes=30, blocks=200, block_interval=600,
                                          latency="150ms", miners=6, seed=2))
    for run in (fast, slow):
        q = effective_attacker_share(0.1, run["stale_rate"])
        assert run["finality"]["effective_attacker_share"] == pytest.approx(q)
        z = run["finality"]["blocks_for_target"]
        assert z == blocks_for_target(q, 1e-6)
        assert exact_probability(q, z) < 1e-6 <= exact_probability(q, z - 1)
    assert slow["stale_rate"] == 0 and fast["stale_rate"] > 0.2
    assert fast["finality"]["blocks_for_target"] > slow["finality"]["blocks_for_target"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", "simulate", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=True)


def test_cli_preset_json_carries_the_references() -> None:
    data = json.loads(_run("network", "--preset", "bitcoin", "--sweep",
                           "block-interval=60,5", "--blocks", "200", "--json").stdout)
    first, second = data["runs"]
    assert first["preset"] == "bitcoin" and first["block_size"] == 100_000
    assert first["reference"]["stale_rate"] == presets.reference_for(60.0).stale_rate
    assert second["reference"] is None


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from lab.simulate.cli import add_simulate_parser

    root = argparse.ArgumentParser(prog="powlab")
    add_simulate_parser(root.add_subparsers())
    sim = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    simulate = sim.choices["simulate"]
    experiments = next(a for a in simulate._actions
                       if isinstance(a, argparse._SubParsersAction))
    return dict(experiments.choices)


@pytest.mark.parametrize("experiment", ["network", "doublespend", "selfish"])
def test_every_option_has_help_and_its_default(experiment: str) -> None:
    parser = _subparsers()[experiment]
    assert parser.description
    flat = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{experiment} {action.option_strings[0]} has no help"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in flat, action.option_strings[0]
    if experiment == "doublespend":
        assert "(default: 0.1,0.2,0.3)" in flat and "(default: 1..10)" in flat
        assert "--model catch-up --give-up N+1" in flat
    if experiment == "network":
        assert "(default: 100ms)" in flat and "--preset" in flat


def test_help_runs_from_the_command_line() -> None:
    assert "(default: 10000)" in " ".join(_run("doublespend", "--help").stdout.split())
