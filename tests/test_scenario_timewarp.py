"""examples/scenarios/timewarp.py end to end, on a three-node testnet of its own with
retargeting (`--network testnet`): n1 mines honestly, n2 is the attacker, n3 judges the probes.

The run keeps a virtual clock (setmocktime on every node) and mines ~300 blocks at testnet
difficulty for real, so it takes about a minute. The test checks the --json document against
itself: the figures must follow from the blocks and the timeline.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet

pytestmark = pytest.mark.slow

SCENARIO = REPO / "examples" / "scenarios" / "timewarp.py"
WINDOW = 60  # testnet's retarget_window
LIMIT_RULES = {"time-too-new", "time-too-old", "time-timewarp-attack"}


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("timewarp") / "net"
    try:
        result = run_powlab("testnet", "up", "--dir", str(directory), "--network", "testnet",
                            "--nodes", "3", "--miners", "2", "--no-hints", "--subnet",
                            subnets.subnet(subnets.TIMEWARP))
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


@pytest.fixture(scope="module")
def document(testnet: Path) -> dict[str, Any]:
    result = run_powlab("scenario", "run", str(SCENARIO), "--dir", str(testnet), "--json",
                        "--", "--windows", "3", "--virtual-trials", "40", timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    data = json.loads(result.stdout)
    print(data["verdict"])
    return data


def test_every_block_is_in_the_timeline_and_the_chain_as_recorded(document: dict[str, Any]
                                                                   ) -> None:
    blocks = document["blocks"]
    heights = [b["height"] for b in blocks]
    assert heights == list(range(heights[0], heights[0] + len(heights)))
    events = [e for e in document["timeline"] if e["event"] == "block"]
    assert [(e["height"], e["time"], e["bits"], e["node"]) for e in events] == [
        (b["height"], b["time"], b["bits"], b["miner"]) for b in blocks]
    for b in blocks:
        assert b["offset"] == b["time"] - b["vtime"]
        assert (b["miner"] == document["roles"]["attacker"]) == b["attacker"]
        if not b["attacker"] or b["phase"] != "attack":
            # Honest stamps follow the clock, unless a rule holds them up (above the median
            # time past, or at a window start at most the timewarp grace before the parent).
            assert b["offset"] >= 0
    # Bits change only at window starts.
    for prev, b in itertools.pairwise(blocks):
        if b["height"] % WINDOW:
            assert b["bits"] == prev["bits"]
        else:  # the timewarp rule held at every window start
            assert b["time"] >= prev["time"] - document["timewarp_grace_s"]


def test_window_figures_follow_from_the_blocks(document: dict[str, Any]) -> None:
    blocks = {b["height"]: b for b in document["blocks"]}
    windows = document["windows"]
    assert [w["phase"] for w in windows].count("attack") == 3
    for w in windows:
        first, last = blocks[w["start"]], blocks[w["start"] + WINDOW - 1]
        assert w["measured_span"] == last["time"] - first["time"]
        assert w["difficulty"] == first["difficulty"]
        assert w["last_by_attacker"] == last["attacker"]
        assert w["attacker_blocks"] == sum(blocks[h]["attacker"]
                                           for h in range(w["start"], w["start"] + WINDOW))
    attacked = [w for w in windows if w["phase"] in ("attack", "recovery")]
    assert document["honest_difficulty"] == attacked[0]["difficulty"]
    assert document["difficulty_after_windows"][:-1] == [w["difficulty"] for w in attacked[1:]]
    assert document["lowest_difficulty"] == min(document["difficulty_after_windows"])
    assert document["dropped"] == (document["lowest_difficulty"]
                                   < document["honest_difficulty"] / 2)
    assert document["future_stamped_window_ends"] == [
        w["start"] for w in attacked if w["phase"] == "attack" and w["last_by_attacker"]
        and w["last_offset"] > 600]
    # A window measuring ~2 h instead of 600 s makes the next one easier by the clamp (4x,
    # give or take the compact rounding).
    after = {w["start"]: w for w in windows}
    for start in document["future_stamped_window_ends"]:
        assert after[start]["measured_span"] > 4 * 600
        nxt = after.get(start + WINDOW)
        if nxt is not None:
            assert nxt["difficulty"] == pytest.approx(after[start]["difficulty"] / 4, rel=0.01)
            # ...and, by the timewarp rule, starts at most the grace before that stamp.
            assert blocks[start + WINDOW]["time"] >= (blocks[start + WINDOW - 1]["time"]
                                                      - document["timewarp_grace_s"])


def test_probes_beyond_each_limit_are_refused_by_that_rule(document: dict[str, Any]) -> None:
    refusals = document["refusals"]
    assert refusals, "no probe was made"
    for r in refusals:
        assert r["result"] == r["expected"], r
    counted: dict[str, int] = {}
    for r in refusals:
        counted[r["result"]] = counted.get(r["result"], 0) + 1
    assert counted == document["refused"]
    assert set(counted) <= LIMIT_RULES
    # Window ends and starts are probed whoever mines them.
    assert {"time-too-new", "time-timewarp-attack"} <= set(counted)
    assert document["probes_accepted"] == 0
    probe_events = [e for e in document["timeline"] if e["event"] == "probe refused"]
    assert len(probe_events) == len(refusals)


def test_the_clocks_are_given_back_and_the_virtual_comparison_is_whole(
        document: dict[str, Any]) -> None:
    assert any(e["event"] == "clocks given back" for e in document["timeline"])
    assert 0 < document["clock_lead_s"] < 7200
    virtual = document["virtual"]
    for name in ("no_attack", "attack", "attack_without_rule"):
        assert len(virtual[name]["relative_difficulty"]) == virtual["windows"]
    # Without the timewarp rule the attack buys more blocks than with it.
    assert (virtual["attack_without_rule"]["blocks_per_window_time"]
            > virtual["attack"]["blocks_per_window_time"])
    assert "error" not in document
