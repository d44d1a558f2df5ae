"""Every `powlab attack` scenario on every topology `testnet up` offers (line, ring, star,
mesh), at its default size and roles: 4 nodes, n1 and n2 mining, so n2 is the attacker and n4
the victim. On the line n2 is a cut vertex: isolating it must cut only its links and add
n1<->n3, never switch the node off the network.

One testnet per topology (starting and funding it is the slow part); each test runs every
scenario on it in sequence. The compose network (docker-compose.yml, a mesh with its own
roles) gets the same sequence when Docker is usable. Node addresses use a random 127.X.Y subnet.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import run_powlab, tear_down_testnet

pytestmark = pytest.mark.slow

KEYS = ("attack", "success", "reorg_depth", "victim_confirmations_seen", "detected", "timeline")


def attack(directory: Path, *args: str) -> dict[str, Any]:
    started = time.monotonic()
    result = run_powlab("attack", *args, "--dir", str(directory), "--json", timeout=400)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    data = json.loads(result.stdout)
    for key in KEYS:
        assert key in data, key
    print(f"{args[0]:9s} {time.monotonic() - started:5.1f}s  {data['verdict']}")
    return data


def isolations(data: dict[str, Any]) -> list[str]:
    notes = [e["note"] for e in data["timeline"] if e["event"] == "isolated"]
    assert not any("setnetworkactive" in n for n in notes), notes
    return notes


@pytest.fixture(params=["line", "ring", "star", "mesh"])
def testnet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "net"
    subnet = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    try:
        result = run_powlab("testnet", "up", "--dir", str(directory), "--topology",
                            request.param, "--subnet", subnet, "--block-time", "5",
                            timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        yield request.param, directory
    finally:
        tear_down_testnet(directory)


def test_every_scenario_on_the_topology(testnet: tuple[str, Path]) -> None:
    topology, directory = testnet
    every_scenario(directory, "n2", "n4", ["n1"],
                   "banned n2<->n1, n2<->n3; added n1<->n3" if topology == "line" else None)


@pytest.mark.docker
def test_every_scenario_on_the_compose_network(tmp_path: Path) -> None:
    """The compose network's own roles (attacker, merchant, miner1/2, observer)."""
    from tests.test_docker import _ensure_docker, _free_ports

    _ensure_docker()
    directory = tmp_path / "compose"
    env = {f"POWLAB_{name.upper()}_RPC_PORT": str(port) for name, port in
           zip(("miner1", "miner2", "merchant", "attacker", "observer"), _free_ports(5),
               strict=True)}
    env["COMPOSE_PROJECT_NAME"] = f"powlabtopo{random.randint(0, 10**6)}"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the subprocesses (and `down`) find the same project
    try:
        result = run_powlab("testnet", "up", "--docker", "--dir", str(directory), timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        every_scenario(directory, "attacker", "merchant", ["miner1", "miner2"], None)
        # The same attack as a scenario file, on the compose network found by --docker.
        result = run_powlab("scenario", "run", "examples/scenarios/race.py", "--docker",
                            "--json", timeout=400)
        assert result.returncode == 0, result.stderr
        race = json.loads(result.stdout)
        assert race["attack"] == "race" and race["roles"]["victim"] == "merchant"
        assert race["origin"].endswith("examples/scenarios/race.py")
        dashboard_on_compose(directory)
    finally:
        run_powlab("testnet", "down", "--dir", str(directory), "--purge", timeout=300)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def every_scenario(directory: Path, attacker: str, victim: str, honest: list[str],
                   isolation: str | None) -> None:
    """Each scenario in turn on one network. `isolation`: the expected note of isolating the
    attacker (None: only bans on its own links, nothing added)."""
    race = attack(directory, "race")
    assert race["roles"] == {"attacker": attacker, "victim": victim, "honest": honest}

    finney = attack(directory, "finney")
    assert finney["success"]

    v76 = attack(directory, "vector76")
    assert v76["success"]
    assert isolations(v76)[0].startswith(f"banned {victim}<->")

    majority = attack(directory, "majority", "--hashrate-share", "0.8", "--confirmations", "2")
    [note] = isolations(majority)
    assert note.startswith(f"banned {attacker}<->")
    if isolation is not None:
        assert note == isolation
    else:
        assert "added" not in note  # the attacker is no cut vertex there
    assert majority["outcome"] in ("published", "gave up")
    if majority["outcome"] == "published":
        assert majority["success"] and majority["victim_final_status"] == "conflicted"

    selfish = attack(directory, "selfish", "--blocks", "12")
    assert len(isolations(selfish)) >= 1

    split = attack(directory, "split")
    survivor = split["survivor"]
    assert all(st[survivor] in ("confirmed", "final") for st in split["per_node"].values())
    # Every node that saw the loser reports it conflicted; the nodes of the winning half never
    # saw it (no alerts) and cannot tell.
    losing_half = split["other_half"] if survivor == "tx1" else split["victim_half"]
    assert set(losing_half) <= set(split["loser_conflicted_on"])
    assert split["success"] == (survivor == "tx2")
    assert split["detected"] == (survivor == "tx2")


def nodes_of(state: dict[str, Any]) -> list[str]:
    return [n["name"] for n in state.get("nodes", [])]


def dashboard_on_compose(directory: Path) -> None:
    """`powlab testnet dashboard --dir D` on a compose (or swarm) testnet: every container is a
    node on the page's state, up, with its role and the chain, the race's run record is there,
    and none of the nodes' credentials (their cookies, or a swarm's D/secrets/) is."""
    from lab.waiting import wait_until
    from tests.dashboard_harness import DashboardProcess

    dash = DashboardProcess("--dir", str(directory))
    try:
        def ready() -> dict[str, Any] | None:
            state = dash.json("/api/state")
            nodes = {n["name"]: n for n in state.get("nodes", [])}
            if len(nodes) == 5 and all(n["up"] and n["height"] for n in nodes.values()):
                return state
            return None

        state = wait_until(ready, 120, "the dashboard to show the compose nodes")
        roles = {n["name"]: n["role"] for n in state["nodes"]}
        assert roles["merchant"] == "merchant" and roles["attacker"] == "attacker", roles
        assert state.get("runs"), "the scenarios' run records"
        body = dash.get("/api/state")[1]
        assert b"powlab:powlab" not in body and b"rpcpassword" not in body.lower()
        from lab.testnet.cli import compose_testnet

        engine = compose_testnet(directory)
        passwords = [engine.endpoint(name)[1][1] for name in nodes_of(state)]
        assert len(set(passwords)) == 5, "the testnet's per-node credentials"
        assert not [p for p in passwords if p.encode() in body]
    finally:
        dash.stop()
