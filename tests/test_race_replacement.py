"""`powlab attack race` under mempool replacement policies, and the race_rbf sweep, on the
README's default testnet: four nodes in a line, n1 and n3 mining (attacker n3, victim n4,
honest miner n1). One testnet serves the module; each attack gives it back as it was (nodes
restarted for a policy are restarted on their own configuration at the end).

The fast tests check the option parsing (bad policies and shares refused), the share draw
and the text helpers without nodes."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.attack import race, racesweep
from lab.attack.replacement import (
    POLICIES,
    Holdings,
    add_policy_arguments,
    describe_holdings,
    pick_share,
)
from lab.scenario import ScenarioError
from tests import subnets
from tests.daemon_harness import run_powlab, tear_down_testnet


def holds_events(data: dict[str, Any], node: str) -> list[dict[str, Any]]:
    return [e for e in data["timeline"] if e["node"] == node and e["event"] == "holds"]


def held_before_block(data: dict[str, Any], node: str) -> list[str]:
    """What `node` held, change by change, before the first block (from the timeline)."""
    block = data["first_block_t"]
    seq: list[str] = []
    for e in holds_events(data, node):
        if e["t"] < block and e["holds"] != "none" and (not seq or seq[-1] != e["holds"]):
            seq.append(e["holds"])
    return seq


def attack(directory: Path, *args: str) -> dict[str, Any]:
    result = run_powlab("attack", "race", "--dir", str(directory), "--json", *args,
                        timeout=240)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    data = json.loads(result.stdout)
    print(data["verdict"])
    return data


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("racerbf") / "net"
    try:
        result = run_powlab("testnet", "up", "--dir", str(directory), "--nodes", "4",
                            "--miner-nodes", "n1,n3", "--topology", "line", "--block-time",
                            "10", "--subnet", subnets.subnet(subnets.RACE_REPLACEMENT),
                            "--no-hints", timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def policies_now(directory: Path) -> dict[str, str]:
    out = {}
    for name in ("n1", "n2", "n3", "n4"):
        r = run_powlab("rpc", "--dir", str(directory), "--node", name, "getmempoolinfo")
        assert r.returncode == 0, r.stderr
        out[name] = json.loads(r.stdout)["replacement_policy"]
    return out


# --------------------------------------------------------------------------- real testnet


@pytest.mark.slow
def test_outbidding_fails_under_first_seen(testnet: Path) -> None:
    data = attack(testnet, "--outbid", "--replacement", "first-seen", "--seed", "1")
    assert not data["success"] and data["mined"] == "tx1"
    assert data["replacement_policies"] == dict.fromkeys(("n1", "n2", "n3", "n4"),
                                                         "first-seen")
    assert data["restarted_for_policy"] == []  # the testnet already runs first-seen
    rejected = [e for e in data["timeline"] if e["event"] == "tx2 rejected"]
    assert rejected and "txn-mempool-conflict" in rejected[0]["reason"]
    for node in ("n1", "n2", "n3", "n4"):
        assert held_before_block(data, node) == ["tx1"], node
    assert data["victim_accepted_zero_conf"] and not data["detected"]


@pytest.mark.slow
def test_outbidding_succeeds_under_full_rbf_and_the_victim_sees_the_replacement(
        testnet: Path) -> None:
    data = attack(testnet, "--outbid", "--replacement", "full", "--seed", "2")
    assert data["success"] and data["mined"] == "tx2"
    assert sorted(data["restarted_for_policy"]) == ["n1", "n2", "n3", "n4"]
    for node in ("n1", "n2", "n3", "n4"):
        assert held_before_block(data, node) == ["tx1", "tx2"], node
        assert data["holdings"][node] == {"policy": "full",
                                          "held": ["tx1", "tx2", "mined tx2"]}
    # Every node showed tx1 as replaced (not merely gone) before the block.
    for node in ("n1", "n2", "n3", "n4"):
        assert any(e["tx1"] == "replaced" for e in holds_events(data, node)
                   if e["t"] < data["first_block_t"]), node
    assert data["detected"] and "flagged tx1 as replaced" in data["verdict"]
    assert "n4 (full) tx1 → tx2 → mined tx2" in data["verdict"]
    # Given back: the nodes run their own configuration (first-seen) again.
    assert set(policies_now(testnet).values()) == {"first-seen"}


@pytest.mark.slow
def test_mixed_network_timeline_shows_who_held_which(testnet: Path) -> None:
    data = attack(testnet, "--outbid", "--full-rbf-nodes", "n1,n2", "--seed", "4")
    assert data["replacement_policies"] == {"n1": "full", "n2": "full", "n3": "first-seen",
                                            "n4": "first-seen"}
    assert not data["tx1_bip125"]
    assert held_before_block(data, "n1") == ["tx1", "tx2"]
    assert held_before_block(data, "n2") == ["tx1", "tx2"]
    # The first-seen nodes keep the payment until the block: the merchant's node never hears
    # of tx2 (no alerts), so the attack succeeds unnoticed.
    assert held_before_block(data, "n3") == ["tx1"]
    assert held_before_block(data, "n4") == ["tx1"]
    assert data["success"] and not data["detected"]
    assert data["holdings"]["n4"]["held"] == ["tx1", "mined tx2"]


@pytest.mark.slow
def test_sweep_smallest_mode(testnet: Path) -> None:
    result = run_powlab("scenario", "run", "examples/scenarios/race_rbf.py", "--dir",
                        str(testnet), "--json", "--seed", "5", "--", "--trials", "1",
                        "--shares", "0,1", "--defences", "on", "--listening-period", "3",
                        "--base", "opt-in", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    cells = {c["share"]: c for c in data["cells"]}
    assert set(cells) == {0.0, 1.0}
    # Opt-in everywhere (tx1 signals, so it is replaced) and full RBF everywhere: tx2 mined,
    # but the merchant saw tx1 replaced within its listening period and never accepted it
    # (3 s: tx1 crosses the line to n1 and tx2 comes back in about 1 s, 2 s under load).
    for c in cells.values():
        assert c["tx2_mined"]["k"] == 1 and c["warned"]["k"] == 1
        assert c["defrauded"]["k"] == 0
    assert [t["mined"] for t in data["trials"]] == ["tx2", "tx2"]
    assert cells[0.0]["mean_full_rbf_nodes"] == 0
    assert cells[1.0]["mean_full_rbf_nodes"] == 4
    for c in cells.values():
        assert c["tx2_mined"]["ci95"][0] <= c["tx2_mined"]["rate"] <= c["tx2_mined"]["ci95"][1]
    assert "| on | 100% | 4.0 | 1/1" in data["table"]
    trial_events = [e for e in data["timeline"] if e["event"] == "trial"]
    assert [e["share"] for e in trial_events] == [0.0, 1.0]
    restarted = [e for e in data["timeline"] if e["event"] == "restarted"]
    assert all(e["double_spend_alerts"] and e["listening_period"] == 3 for e in restarted)
    assert [e["mempool_replacement"] for e in restarted] == ["opt-in"] * 4 + ["full"] * 4
    assert set(policies_now(testnet).values()) == {"first-seen"}


@pytest.mark.slow
def test_unknown_node_and_bad_delay_are_errors_not_crashes(testnet: Path) -> None:
    for args in (["--full-rbf-nodes", "n9"], ["--outbid", "--delay", "-1"]):
        r = run_powlab("attack", "race", "--dir", str(testnet), "--quiet", *args)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ScenarioError" in r.stderr and "Traceback" not in r.stderr
    r = run_powlab("scenario", "run", "examples/scenarios/race_rbf.py", "--dir", str(testnet),
                   "--quiet", "--", "--trials", "0")
    assert r.returncode == 1 and "--trials must be" in r.stderr


# --------------------------------------------------------------------------- no nodes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    race.add_arguments(p)
    return p


@pytest.mark.parametrize("args", [
    ["--replacement", "bogus"], ["--replacement", ""], ["--replacement", "FULL"],
    ["--full-rbf-fraction", "1.5"], ["--full-rbf-fraction", "-0.1"],
    ["--full-rbf-fraction", "nan"], ["--full-rbf-fraction", "abc"],
    ["--full-rbf-fraction", "inf"],
    ["--full-rbf-nodes", "n1", "--full-rbf-fraction", "0.5"],
])
def test_bad_policy_arguments_are_refused(args: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser().parse_args(args)


def test_policy_names_match_the_node() -> None:
    from consensus.replacement import REPLACEMENT_POLICIES

    assert set(POLICIES) == set(REPLACEMENT_POLICIES)


def test_tx1_signals_bip125_when_an_opt_in_node_takes_part() -> None:
    args = parser().parse_args(["--outbid"])
    assert race.plan_of(args, {"n1": "full", "n2": "opt-in"}).replaceable
    assert not race.plan_of(args, {"n1": "full", "n2": "first-seen"}).replaceable
    with pytest.raises(ScenarioError):
        race.plan_of(parser().parse_args(["--outbid", "--delay", "-1"]), {})


def test_default_keeps_the_nodes_as_they_run() -> None:
    args = parser().parse_args([])
    assert args.replacement is None and not args.outbid
    assert args.full_rbf_nodes is None and args.full_rbf_fraction is None


@pytest.mark.parametrize("text", ["0,2", "", "x", "0.1,-1"])
def test_sweep_refuses_bad_shares(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        racesweep.shares(text)


def test_sweep_refuses_out_of_range_settings() -> None:
    p = argparse.ArgumentParser()
    racesweep.add_arguments(p)
    for bad in (["--trials", "0"], ["--trials", str(racesweep.MAX_TRIALS + 1)],
                ["--listening-period", "-1"], ["--wait", "-2"], ["--amount", "0"]):
        with pytest.raises(ScenarioError):
            racesweep.check(p.parse_args(bad))
    racesweep.check(p.parse_args([]))


class FakeNet:
    def __init__(self, names: list[str], seed: int) -> None:
        self.nodes = dict.fromkeys(names)
        self.rng = random.Random(seed)


@pytest.mark.parametrize(("share", "count"), [(0.0, 0), (0.1, 0), (0.25, 1), (0.5, 2),
                                              (1.0, 4)])
def test_pick_share_draws_round_f_n_nodes(share: float, count: int) -> None:
    picked = pick_share(FakeNet(["n1", "n2", "n3", "n4"], 7), share)  # type: ignore[arg-type]
    assert len(picked) == count and len(set(picked)) == count
    assert picked == pick_share(FakeNet(["n1", "n2", "n3", "n4"], 7), share)  # type: ignore[arg-type]
    with pytest.raises(ScenarioError):
        pick_share(FakeNet(["n1"], 1), 1.01)  # type: ignore[arg-type]


def test_holdings_history_and_description() -> None:
    class Node:
        def __init__(self, name: str, pool: list[str], statuses: dict[str, str]) -> None:
            self.name, self.pool, self.statuses = name, pool, statuses

        def try_call(self, method: str, *params: Any) -> Any:
            if method == "getrawmempool":
                return self.pool
            return {"status": self.statuses.get(params[0], "unknown")}

    class Timeline:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def mark(self, node: str, event: str, **extra: Any) -> None:
            self.events.append({"node": node, "event": event, **extra})

    class Net:
        timeline = Timeline()

    a = Node("a", [], {})
    h = Holdings(Net(), "t1", "t2", [a])  # type: ignore[arg-type]
    h.poll()
    a.pool, a.statuses = ["t1"], {"t1": "mempool"}
    h.poll()
    h.poll()  # no change, no event
    a.pool, a.statuses = ["t2"], {"t1": "replaced", "t2": "mempool"}
    h.poll()
    a.pool, a.statuses = [], {"t1": "conflicted", "t2": "confirmed"}
    h.poll()
    assert h.history["a"] == ["tx1", "tx2", "mined tx2"]
    assert [e["holds"] for e in Net.timeline.events] == ["none", "tx1", "tx2", "none"]
    assert describe_holdings(h.summary({"a": "full"})) == "a (full) tx1 → tx2 → mined tx2"


def test_add_policy_arguments_is_self_contained() -> None:
    p = argparse.ArgumentParser()
    add_policy_arguments(p)
    args = p.parse_args(["--replacement", "opt-in", "--full-rbf-fraction", "0.5"])
    assert (args.replacement, args.full_rbf_fraction) == ("opt-in", 0.5)
