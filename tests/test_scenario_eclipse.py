"""examples/scenarios/eclipse.py on the testnet `scripts/run` starts (4 nodes in a line, n1 and
n3 mining, so n3 is the attacker and n4 the victim), on a free loopback subnet: one trial of
each countermeasure, the figures and the plot, and the network handed back as it was (the
victim with its own configuration and peers, the sybils stopped, no bans, mining as before).
The same on the compose network (docker-compose.yml: the attacker container, the merchant as
the victim, sybil containers beside them), when Docker is usable."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import waiting
from lab.client import datadir_endpoint
from lab.scenario import ScenarioError
from lab.scenario.nodes import _book_archive, option_environment, process_manifest
from lab.testnet.manifest import load_manifest
from lab.testnet.processes import process_alive
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet
from tests.test_tour import scripts_run_arguments

ECLIPSE = Path(REPO) / "examples" / "scenarios" / "eclipse.py"


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("eclipse") / "testnet"
    try:
        result = run_powlab("testnet", "up", "--dir", str(directory), *scripts_run_arguments(),
                            "--block-time", "5", "--subnet", subnets.subnet(subnets.ECLIPSE),
                            timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def rpc(directory: Path, node: str, method: str, *params: Any) -> Any:
    entry = load_manifest(directory).node(node)
    return datadir_endpoint(entry.datadir, entry.url).call(method, *params)


def network_state(directory: Path) -> dict[str, Any]:
    state = {}
    for node in ("n1", "n2", "n3", "n4"):
        mining = rpc(directory, node, "getmininginfo")
        ids = sorted(p.get("node_id", "") for p in rpc(directory, node, "getpeerinfo")
                     if p.get("status") == "established")
        state[node] = {"banned": rpc(directory, node, "listbanned"),
                       "mining": (mining.get("mining"), mining.get("hashrate_limit")),
                       "peers": ids}
    return state


@pytest.mark.slow
def test_one_trial_of_each_countermeasure_and_the_network_handed_back(
        testnet: Path, tmp_path: Path) -> None:
    before = network_state(testnet)
    plot = tmp_path / "eclipse.png"
    result = run_powlab("scenario", "run", str(ECLIPSE), "--dir", str(testnet), "--json",
                        "--plot", str(plot), "--", "--trials", "1", "--sybils", "6",
                        "--campaign", "5", timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    data = json.loads(result.stdout)
    print(data["verdict"])
    assert data["roles"]["attacker"] == "n3" and data["roles"]["victim"] == "n4"
    results = data["countermeasures"]
    assert list(results) == ["none", "no-listen", "fixed-peers", "all"]
    for figures in results.values():
        assert figures["trials"] == 1 and figures["successes"] in (0, 1)
        lo, hi = figures["ci95"]
        assert 0 <= lo <= figures["rate"] <= hi <= 1
    # Fixed peers: the victim's only peers are the honest nodes it named; never eclipsed.
    for trial in data["trials"]:
        if trial["countermeasure"] in ("fixed-peers", "all"):
            assert not trial["eclipsed"] and not trial["success"]
            assert trial["victim_peers"]["attacker"] == 0
        if trial["countermeasure"] in ("no-listen", "all"):
            assert trial["victim_peers"]["inbound"] == 0
        # A fooled victim was eclipsed, and healing reversed its payment.
        if trial["success"]:
            assert trial["eclipsed"] and trial["reversed"]
    events = {e["event"] for e in data["timeline"]}
    for event in ("sybils started", "restarted", "book", "cut off", "cut lifted"):
        assert event in events, event
    assert events & {"eclipsed", "not eclipsed"} and events & {"fooled", "not fooled"}
    assert data.get("plot") is None or plot.stat().st_size > 10_000

    # Handed back: the sybils are gone, the victim runs its own configuration again.
    extra = sorted((testnet / "scenario-nodes").glob("s*.toml"))
    assert len(extra) == 6
    for config in extra:
        assert not any(process_alive(pid, str(config)) for pid in _pids())
    assert not (testnet / "n4" / "powlab.toml.scenario").exists()
    try:
        waiting.wait_until(lambda: network_state(testnet) == before, 60,
                           "the network to be as it was before the scenario")
    except TimeoutError:
        raise AssertionError(f"before: {before}\nnow: {network_state(testnet)}") from None


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


class _Net:
    def __init__(self, directory: Path, docker: bool) -> None:
        self.args = argparse.Namespace(dir=str(directory), docker=docker)
        self.nodes: dict[str, Any] = {}


def test_restarts_refuse_a_compose_network_clearly(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="process testnets only"):
        process_manifest(_Net(tmp_path, docker=True))
    with pytest.raises(ScenarioError, match="needs a process testnet"):
        process_manifest(_Net(tmp_path / "nothing", docker=False))


def test_options_become_environment_variables_and_a_book_an_archive() -> None:
    env = option_environment({"no_listen": True, "mine": False, "connect": ["a@h:1", "b@h:2"],
                              "addnode": [], "max_inbound": 4, "hashrate": None})
    assert env == {"POWLAB_NO_LISTEN": "true", "POWLAB_MINE": "false",
                   "POWLAB_CONNECT": "a@h:1,b@h:2", "POWLAB_ADDNODE": "",
                   "POWLAB_MAX_INBOUND": "4"}
    book = [{"host": "172.18.0.2", "port": 18444, "node_id": "ab" * 32, "last_seen": 1}]
    old = io.BytesIO()
    with tarfile.open(fileobj=old, mode="w") as tar:
        info = tarfile.TarInfo("peers.json")
        info.uid = info.gid = 10001
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(b""))
    with tarfile.open(fileobj=io.BytesIO(_book_archive(book, old.getvalue()))) as tar:
        [member] = tar.getmembers()
        assert (member.name, member.uid, member.mode) == ("peers.json", 10001, 0o600)
        data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert data == {"version": 1, "addresses": book}


COMPOSE_NODES = ("miner1", "miner2", "merchant", "attacker", "observer")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def compose_state(directory: Path, project: str) -> dict[str, Any]:
    """Per node: bans, mining and added links; the merchant container's environment and
    image; the extra containers."""
    from lab.scenario.engine import load_nodes

    state: dict[str, Any] = {}
    for node in load_nodes(str(directory)):
        mining = node.call("getmininginfo")
        state[node.name] = {"banned": node.call("listbanned"),
                            "mining": (mining.get("mining"), mining.get("hashrate_limit")),
                            "added": sorted(a["addednode"]
                                            for a in node.call("getaddednodeinfo"))}
    merchant = _docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                       "--filter", "label=com.docker.compose.service=merchant").split()
    config = json.loads(_docker("inspect", "--format", "{{json .Config}}", *merchant))
    state["merchant_env"] = sorted(e for e in config["Env"] if e.startswith("POWLAB_"))
    state["merchant_image"] = config["Image"]
    state["extra"] = _docker("ps", "-a", "-q", "--filter", f"label=powlab.extra={project}")
    return state


@pytest.mark.slow
@pytest.mark.docker
def test_one_trial_of_each_countermeasure_on_the_compose_network(tmp_path: Path) -> None:
    from tests.test_docker import _ensure_docker, _free_ports

    _ensure_docker()
    directory = tmp_path / "compose"
    project = f"powlabeclipse{random.randint(0, 10**6)}"
    env = {f"POWLAB_{name.upper()}_RPC_PORT": str(port) for name, port in
           zip(COMPOSE_NODES, _free_ports(len(COMPOSE_NODES)), strict=True)}
    env["COMPOSE_PROJECT_NAME"] = project
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the subprocesses (and `down`) find the same project
    try:
        started = time.monotonic()
        result = run_powlab("testnet", "up", "--docker", "--dir", str(directory), timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        print(f"compose testnet up in {time.monotonic() - started:.0f}s")
        before = compose_state(directory, project)
        assert before["extra"] == ""
        started = time.monotonic()
        result = run_powlab("scenario", "run", str(ECLIPSE), "--dir", str(directory), "--json",
                            "--", "--trials", "1", "--sybils", "4", "--campaign", "5",
                            timeout=900)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
        data = json.loads(result.stdout)
        print(f"eclipse in {time.monotonic() - started:.0f}s: {data['verdict']}")
        assert data["roles"]["attacker"] == "attacker" and data["roles"]["victim"] == "merchant"
        results = data["countermeasures"]
        assert list(results) == ["none", "no-listen", "fixed-peers", "all"]
        for figures in results.values():
            assert figures["trials"] == 1 and figures["successes"] in (0, 1)
            lo, hi = figures["ci95"]
            assert 0 <= lo <= figures["rate"] <= hi <= 1
        for trial in data["trials"]:
            if trial["countermeasure"] in ("fixed-peers", "all"):
                assert not trial["eclipsed"] and not trial["success"]
                assert trial["victim_peers"]["attacker"] == 0
            if trial["countermeasure"] in ("no-listen", "all"):
                assert trial["victim_peers"]["inbound"] == 0
            if trial["success"]:
                assert trial["eclipsed"] and trial["reversed"]
        events = [e for e in data["timeline"]]
        [started_event] = [e for e in events if e["event"] == "sybils started"]
        assert started_event["count"] == 4
        names = {e["event"] for e in events}
        for event in ("restarted", "book", "cut off", "cut lifted"):
            assert event in names, event

        # Handed back: the sybil containers are gone, the merchant runs the compose file's
        # environment again, no bans, mining as before.
        try:
            waiting.wait_until(lambda: compose_state(directory, project) == before, 60,
                               "the compose network to be as it was before the scenario")
        except TimeoutError:
            raise AssertionError(f"before: {before}\nnow: {compose_state(directory, project)}"
                                 ) from None
    finally:
        run_powlab("testnet", "down", "--dir", str(directory), "--purge", timeout=300)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
