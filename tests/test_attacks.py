"""`powlab attack` end to end on a real five-node testnet (mesh; n1–n3 mine, n3 is the
attacker by default, n5 the victim).

One testnet serves every scenario (starting and funding it is the slow part); the tests run in
file order. The last two restart the nodes with countermeasures switched on: double-spend
alerts, then finality enforcement. Node addresses use a free 127.A.B range of this run
(tests/subnets.py), so a run never collides with a developer's ./testnet or another test's
nodes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import NodeEndpoint
from lab.scenario.engine import NetNode, resolve_roles
from lab.testnet.control import wait_connected, wait_ready
from lab.testnet.manifest import load_manifest
from lab.testnet.processes import spawn_node, stop_node
from tests import subnets
from tests.daemon_harness import run_powlab, tear_down_testnet

FINALITY = 4


def powlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_powlab(*args, timeout=timeout)


def attack(directory: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    result = powlab("attack", *args, "--dir", str(directory), "--json", timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    data = json.loads(result.stdout)
    for key in ("attack", "success", "reorg_depth", "victim_confirmations_seen", "detected",
                "timeline"):
        assert key in data, key
    assert all({"t", "node", "event"} <= set(e) for e in data["timeline"])
    print(data["verdict"])
    return data


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("attacks") / "net"
    subnet = subnets.subnet(subnets.ATTACK_TESTS)
    try:
        result = powlab("testnet", "up", "--dir", str(directory), "--nodes", "5", "--miners",
                        "3", "--topology", "mesh", "--block-time", "5", "--finality-depth",
                        str(FINALITY), "--subnet", subnet)
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def restart_with(directory: Path, **options: bool) -> None:
    """Restarts every node with config options switched (same chain, wallets, ports)."""
    manifest = load_manifest(directory)
    for entry in manifest.nodes:
        stop_node(entry)
        path = Path(entry.config)
        text = path.read_text()
        for key, value in options.items():
            text, count = re.subn(rf"^{key} = .*$", f"{key} = {str(value).lower()}", text,
                                  flags=re.M)
            assert count == 1, key
        path.write_text(text)
        spawn_node(manifest, entry)
    manifest.save()
    wait_ready(manifest.nodes, 60)
    wait_connected(manifest, 60)


# --------------------------------------------------------------------------- fast unit tests


def test_default_roles() -> None:
    def node(name: str, role: str, share: float = 0.0) -> NetNode:
        return NetNode(name, role, NodeEndpoint("http://x/", None), share)

    plain = [node("n1", "miner", 0.5), node("n2", "miner", 0.5), node("n3", "node"),
             node("n4", "node")]
    roles = resolve_roles(plain, None, None, None)
    assert (roles.attacker.name, roles.victim.name) == ("n2", "n4")
    assert [n.name for n in roles.honest] == ["n1"]
    tagged = [node("m1", "miner"), node("a", "attacker"), node("shop", "merchant"),
              node("obs", "observer")]
    roles = resolve_roles(tagged, None, None, None)
    assert (roles.attacker.name, roles.victim.name) == ("a", "shop")
    assert [n.name for n in roles.honest] == ["m1"]
    roles = resolve_roles(plain, "n1", "n3", "n2")
    assert (roles.attacker.name, roles.victim.name, roles.honest[0].name) == ("n1", "n3", "n2")


# --------------------------------------------------------------------------- real testnet


@pytest.mark.slow
def test_race_succeeds_when_tx2_reaches_the_miners_first(testnet: Path, tmp_path: Path) -> None:
    plot = tmp_path / "race.png"
    # The victim's relay lags 0.5 s, so the attacker's direct tx2 reaches the miners first.
    data = attack(testnet, "race", "--victim-latency", "500", "--plot", str(plot))
    assert data["success"] and data["mined"] == "tx2"
    assert data["victim_accepted_zero_conf"]
    assert not data["detected"]
    assert data["victim_final_status"] == "conflicted"
    assert set(data["miners_mempools"]["n1"]) == {"tx2"}
    assert plot.stat().st_size > 10_000


@pytest.mark.slow
def test_finney_succeeds_when_released_before_an_honest_block(testnet: Path) -> None:
    data = attack(testnet, "finney")
    assert data["success"]
    assert data["victim_accepted_zero_conf"]
    assert data["victim_final_status"] == "conflicted"
    assert data["victim_confirmations_seen"] == 0
    # And fails when an honest block (holding tx1) comes first.
    lost = attack(testnet, "finney", "--honest-block-first", "--seed", "2")
    assert not lost["success"]
    assert lost["victim_final_status"] in ("confirmed", "final")


@pytest.mark.slow
def test_vector76_reorganises_one_confirmation_away(testnet: Path) -> None:
    data = attack(testnet, "vector76")
    assert data["success"]
    assert data["victim_confirmations_seen"] == 1
    assert data["reorg_depth"] == 1


@pytest.mark.slow
def test_majority_reverses_a_final_payment(testnet: Path, tmp_path: Path) -> None:
    plot = tmp_path / "majority.png"
    data = attack(testnet, "majority", "--hashrate-share", "0.7", "--plot", str(plot))
    assert data["success"] and data["outcome"] == "published"
    history = data["victim_status_history"]
    assert "final" in history and history[-1] == "conflicted"
    assert history.index("final") < history.index("conflicted")
    assert data["victim_confirmations_seen"] >= FINALITY
    assert data["reorg_depth"] >= FINALITY
    assert not data["chain_split"]
    assert plot.exists()


@pytest.mark.slow
def test_majority_with_a_small_share_gives_up(testnet: Path) -> None:
    data = attack(testnet, "majority", "--hashrate-share", "0.1", "--confirmations", "6",
                  "--give-up", "6")
    assert not data["success"]
    assert data["outcome"] == "gave up"
    # reorg_depth is the deepest reorganisation the victim performed, natural one-block forks
    # between the honest miners included: none may reach back to the payment.
    assert data["reorg_depth"] < data["victim_confirmations_seen"]
    assert data["victim_final_status"] in ("confirmed", "final")


@pytest.mark.slow
def test_selfish_mining_beats_its_share(testnet: Path) -> None:
    started = time.monotonic()
    data = attack(testnet, "selfish", "--alpha", "0.45", "--gamma", "0", "--blocks", "300",
                  "--seed", "3")
    assert data["success"]
    assert data["ci95"][0] > 0.45, data["ci95"]  # the interval excludes α
    # Near α = 0.5 the theory is steep: compare at the share the seeded lottery drew.
    assert data["eyal_sirer_at_lottery_share"] is not None
    assert abs(data["attacker_share"] - data["eyal_sirer_at_lottery_share"]) < 0.12
    print(f"selfish run took {time.monotonic() - started:.1f}s")


@pytest.mark.slow
def test_race_with_alerts_flags_tx1_before_a_block(testnet: Path) -> None:
    restart_with(testnet, double_spend_alerts=True)
    data = attack(testnet, "race", "--victim-latency", "500", "--seed", "3")
    assert data["detected"]
    assert data["alert_t"] is not None and data["alert_t"] < data["first_block_t"]
    flagged = [e for e in data["timeline"] if e["node"] == "n5" and e["event"] == "tx1"
               and e.get("double_spend_alert")]
    assert flagged and flagged[0]["confirmations"] == 0


@pytest.mark.slow
def test_majority_against_finality_enforcement_splits_the_chain(testnet: Path) -> None:
    restart_with(testnet, double_spend_alerts=False, enforce_finality=True)
    data = attack(testnet, "majority", "--hashrate-share", "0.7", "--seed", "4")
    assert not data["success"]
    assert data["chain_split"] and data["enforce_finality"]
    assert data["attacker_tip_status_at_victim"] not in (None, "active")
    assert data["victim_final_status"] == "final"
    # The attacker's reorganisation was refused; a natural one-block fork between the honest
    # miners may still show, but nothing reached back to the payment.
    assert data["reorg_depth"] < data["victim_confirmations_seen"]
