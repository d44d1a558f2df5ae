"""`powlab scenario run` on the testnet `scripts/run` starts (4 nodes in a line, n1 and n3
mining; a shorter block time), in a temporary directory on a free loopback subnet: the
template `scenario new` writes, a built-in attack as an example file, every network-shaping
call of the API for real, and a scenario that fails half-way and must leave the network as it
found it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import datadir_endpoint
from lab.testnet.manifest import load_manifest
from lab.testnet.processes import process_alive
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet
from tests.test_tour import scripts_run_arguments

pytestmark = pytest.mark.slow

EXAMPLES = Path(REPO) / "examples" / "scenarios"


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("scenarios") / "testnet"
    try:
        result = run_powlab("testnet", "up", "--dir", str(directory), *scripts_run_arguments(),
                            "--block-time", "5", "--subnet", subnets.subnet(subnets.SCENARIOS),
                            timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def rpc(directory: Path, node: str, method: str, *params: Any) -> Any:
    entry = load_manifest(directory).node(node)
    return datadir_endpoint(entry.datadir, entry.url).call(method, *params)


def scenario(directory: Path, file: Path | str, *args: str, own: tuple[str, ...] = (),
             ok: bool = True) -> dict[str, Any]:
    extra = ["--", *own] if own else []
    result = run_powlab("scenario", "run", str(file), "--dir", str(directory), "--json", *args,
                        *extra, timeout=400)
    assert (result.returncode == 0) == ok, f"exit {result.returncode}\n{result.stderr}"
    data = json.loads(result.stdout)
    print(data["verdict"])
    return data


def network_state(directory: Path) -> dict[str, Any]:
    """What a scenario must give back: bans, who mines at what limit, the links."""
    state = {}
    for node in ("n1", "n2", "n3", "n4"):
        mining = rpc(directory, node, "getmininginfo")
        ids = sorted(p.get("node_id", "") for p in rpc(directory, node, "getpeerinfo")
                     if p.get("status") == "established")
        state[node] = {"banned": rpc(directory, node, "listbanned"),
                       "mining": (mining.get("mining"), mining.get("hashrate_limit")),
                       "peers": ids}
    return state


def wait_state(directory: Path, want: dict[str, Any]) -> None:
    from lab import waiting

    # Cut links redial on their own after the bans go; give them the time that takes.
    try:
        waiting.wait_until(lambda: network_state(directory) == want, 60,
                           "the network to be as it was before the scenario")
    except TimeoutError:
        now = network_state(directory)
        raise AssertionError(f"before: {want}\nnow: {now}") from None


def test_the_template_runs_as_written(testnet: Path, tmp_path: Path) -> None:
    made = run_powlab("scenario", "new", str(tmp_path / "first"))
    assert made.returncode == 0, made.stderr
    data = scenario(testnet, tmp_path / "first.py", "--plot", str(tmp_path / "first.png"),
                    own=("--blocks", "2"))
    assert data["success"] and data["confirmations"] >= 2
    assert data["victim_confirmations_seen"] >= 2  # the payee is the victim, n4
    assert data["roles"] == {"attacker": "n3", "victim": "n4", "honest": ["n1"]}
    assert data.get("plot") is None or (tmp_path / "first.png").stat().st_size > 10_000


def test_a_built_in_attack_runs_as_a_file_like_the_command(testnet: Path) -> None:
    data = scenario(testnet, EXAMPLES / "finney.py", own=("--wait", "1"))
    assert data["attack"] == "finney" and data["success"], data["verdict"]
    assert data["params"]["wait"] == 1
    command = run_powlab("attack", "finney", "--dir", str(testnet), "--json", timeout=400)
    assert command.returncode == 0, command.stderr
    assert set(json.loads(command.stdout)) - {"plot"} == set(data) - {"plot"}


SHAPES = '''"""Every shaping call, for real."""
def run(net):
    with net.staged():
        net.sync_blocks()
        net.partition(["n1", "n2"], ["n3", "n4"])
        a, b = net.mine("n1", 2), net.mine("n3", 1)
        net.wait_tip(["n1", "n2"], a[-1])
        net.wait_tip(["n3", "n4"], b[-1])
        net.heal()
        tip = net.sync_blocks()
        orphaned = any(t["hash"] == b[-1] and t["status"] != "active"
                       for t in net.nodes["n4"].getchaintips())
        net.connect("n1", "n4")
        net.wait_for(lambda: any(p.get("node_id") == net.nodes["n4"].getnetworkinfo()["node_id"]
                                 for p in net.nodes["n1"].getpeerinfo()), 30, "n1 to reach n4")
        net.link_fault("n1", "n2", delay=0.2)
        net.isolate("n2")
        c = net.mine("n1")[-1]
        net.wait_tip(["n1", "n3", "n4"], c)
        behind = net.nodes["n2"].getbestblockhash() != c
        net.reconnect("n2")
        net.sync_blocks()
        txid = net.pay("n1", "n4", 100000)
        net.sync_mempools()
    net.report(verdict="shapes: SUCCESS — each call did what it says", success=a[-1] != b[-1]
               and tip == a[-1] and orphaned and behind, txid=txid)
'''


def test_every_shaping_call_and_the_network_handed_back(testnet: Path, tmp_path: Path) -> None:
    before = network_state(testnet)
    file = tmp_path / "shapes.py"
    file.write_text(SHAPES)
    data = scenario(testnet, file)
    assert data["success"], data
    events = [e["event"] for e in data["timeline"]]
    for event in ("partition", "healed", "connected", "link fault", "isolated", "reconnected",
                  "payment sent"):
        assert event in events, event
    wait_state(testnet, before)


FAILS = '''"""Fails half-way through."""
def run(net):
    net.connect("n1", "n4")
    net.link_fault("n2", "n3", delay=0.5)
    net.partition(["n1", "n2"], ["n3", "n4"])
    net.set_hashrates({"n2": 1.0}, block_interval=5)
    net.timeline.mark("*", "about to fail")
    raise RuntimeError("the experiment broke")
'''


def test_a_failing_scenario_leaves_the_network_as_it_found_it(testnet: Path,
                                                                tmp_path: Path) -> None:
    before = network_state(testnet)
    file = tmp_path / "fails.py"
    file.write_text(FAILS)
    data = scenario(testnet, file, ok=False)
    assert data["error"] == "RuntimeError: the experiment broke"
    assert "about to fail" in [e["event"] for e in data["timeline"]]
    wait_state(testnet, before)
    plain = run_powlab("scenario", "run", str(file), "--dir", str(testnet), timeout=400)
    assert plain.returncode == 1
    assert "about to fail" in plain.stdout and "the experiment broke" in plain.stderr
    wait_state(testnet, before)


HANGS = '''"""Cuts the network, then waits for something that never happens."""
def run(net):
    net.link_fault("n2", "n3", delay=0.4)
    net.partition(["n1", "n2"], ["n3", "n4"])
    net.set_hashrates({"n2": 1.0}, block_interval=30)
    net.restart_node("n4", max_inbound=3, keep_book=False)
    net.timeline.mark("*", "cut and waiting")
    net.wait_for(lambda: False, 3600, "nothing")
'''

NOOP = '''"""Does nothing."""
def run(net):
    net.report(verdict="noop: SUCCESS", success=True)
'''


def test_a_run_killed_outright_is_undone_by_the_next_one(testnet: Path, tmp_path: Path) -> None:
    """kill -9 of the runner mid-run: its journal lets the next run hand the network back."""
    import os
    import signal
    import subprocess
    import sys

    from lab import waiting
    from lab.scenario.runlog import run_files

    before = network_state(testnet)
    hangs, noop = tmp_path / "hangs.py", tmp_path / "noop.py"
    hangs.write_text(HANGS)
    noop.write_text(NOOP)
    known = set(run_files(testnet))
    proc = subprocess.Popen([sys.executable, "-m", "lab", "scenario", "run", str(hangs),
                             "--dir", str(testnet), "--quiet"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def cut() -> bool:
            new = [p for p in run_files(testnet) if p not in known]
            return bool(new) and "cut and waiting" in new[0].read_text()

        waiting.wait_until(cut, 120, "the scenario to cut the network")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert network_state(testnet) != before  # the kill left the network cut
    assert list((testnet / "runs").glob("restore-*.json"))
    result = run_powlab("scenario", "run", str(noop), "--dir", str(testnet), timeout=400)
    assert result.returncode == 0, result.stderr
    assert "ended without handing the network back" in result.stderr
    assert "recovered a killed run" in result.stdout
    wait_state(testnet, before)
    left = list((testnet / "runs").glob("restore-*"))
    assert not left, (result.stderr, result.stdout[-2000:], [p.read_text() for p in left])
    assert not (testnet / "n4" / "powlab.toml.scenario").exists()
    entry = load_manifest(testnet).node("n4")
    assert process_alive(entry.pid, entry.config)  # on its own configuration again
