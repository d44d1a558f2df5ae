"""The testnet as a Docker Swarm stack (`powlab testnet up --swarm`, lab/testnet/swarm.py).

The tests at the top need no Docker and run in the fast suite: the generated stack file has
what a stack needs on these machines (version 3.8, no profiles, an overlay network, dnsrr,
host-mode ports), per-node secrets and bounded restarts, and docker-stack.yml is current.

``test_swarm_stack_end_to_end`` (marker ``docker``) builds the image from this tree, makes
the engine a single-node swarm if it is in none (and leaves it again afterwards only if it
made it one and no other service runs), deploys a five-node stack under a random name,
checks convergence, that a node's password opens its own RPC and not another's, a partition
and heal, a majority attack and a scenario, then removes the stack and its volumes.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from lab.testnet.control import resolve_splits
from lab.testnet.docker import BAN_SECONDS, DockerTestnet, _local_endpoint
from lab.testnet.swarm import (
    ENTRYPOINT,
    SECRET_TARGET,
    SwarmTestnet,
    apply_constraints,
    default_layout,
    layout,
    layout_differences,
    main,
    stack_definition,
)
from tests.daemon_harness import run_powlab

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# No Docker needed
# --------------------------------------------------------------------------------------------


def test_stack_has_what_a_swarm_needs() -> None:
    nodes = default_layout()
    files = {n.name: f"/tmp/secrets/{n.name}" for n in nodes}
    stack = stack_definition(nodes, "powlab:x", files)
    assert stack["version"] == "3.8"
    assert stack["networks"]["powlab"]["driver"] == "overlay"
    assert set(stack["services"]) == {"miner1", "miner2", "merchant", "attacker", "observer"}
    ports = set()
    for name, svc in stack["services"].items():
        assert "profiles" not in svc and "restart" not in svc
        assert svc["deploy"]["endpoint_mode"] == "dnsrr"
        policy = svc["deploy"]["restart_policy"]
        assert policy["condition"] == "any" and policy["max_attempts"] == 3
        (port,) = svc["ports"]
        assert port["mode"] == "host" and port["target"] == 18443
        ports.add(port["published"])
        # Its own secret, nothing else; no password in the environment.
        assert svc["secrets"] == [{"source": f"powlab_rpc_{name}", "target": SECRET_TARGET}]
        assert stack["secrets"][f"powlab_rpc_{name}"] == {"file": files[name]}
        env = svc["environment"]
        assert "POWLAB_RPC_PASSWORD" not in env
        assert env["POWLAB_RPC_PASSWORD_FILE"] == f"/run/secrets/{SECRET_TARGET}"
        assert f"{name}:18444" not in env["POWLAB_ADDNODE"]
        assert svc["entrypoint"] == ENTRYPOINT
    assert len(ports) == 5
    roles = {n: s["labels"]["powlab.role"] for n, s in stack["services"].items()}
    assert roles == {"miner1": "miner", "miner2": "miner", "merchant": "merchant",
                     "attacker": "attacker", "observer": "observer"}
    mining = {n for n, s in stack["services"].items() if s["environment"].get("POWLAB_MINE")}
    assert mining == {"miner1", "miner2", "attacker"}


def test_layout_sizes_and_shares() -> None:
    nodes = layout(15, 3, [0.3, 0.3, 0.2, 0.2], 10.0, base_port=20000)
    assert [n.name for n in nodes[:6]] == ["miner1", "miner2", "miner3", "merchant",
                                           "attacker", "observer"]
    assert nodes[-1].name == "observer10" and len(nodes) == 15
    assert [n.rpc_port for n in nodes] == list(range(20000, 20015))
    assert sum(n.hashrate for n in nodes) == pytest.approx(0.2)  # 2 hashes per 10 s block
    assert nodes[4].hashrate == pytest.approx(0.04)
    with pytest.raises(ValueError, match="shares"):
        layout(6, 2, [0.5, 0.5], 10.0)
    with pytest.raises(ValueError, match="at least"):
        layout(4, 2, None, 10.0)


def test_large_stacks_link_observers_in_a_ring() -> None:
    nodes = layout(100, 2, None, 10.0)
    services = stack_definition(nodes, "powlab:x")["services"]

    def dials(name: str) -> list[str]:
        return [a.split(":")[0] for a in services[name]["environment"]["POWLAB_ADDNODE"]
                .split(",")]

    hubs = ["miner1", "miner2", "merchant", "attacker", "observer"]
    assert dials("observer50") == [*hubs, "observer49", "observer51"]
    assert dials("observer") == [*hubs[:4], "observer96", "observer2"]  # the ring closes
    assert dials("miner1") == [h for h in hubs if h != "miner1"]
    # The five-node default (docker-stack.yml) is unchanged: everyone dials the others.
    five = stack_definition(default_layout(), "x")["services"]
    assert five["observer"]["environment"]["POWLAB_ADDNODE"].count(":18444") == 4


def test_placement_constraints() -> None:
    nodes = default_layout()
    apply_constraints(nodes, ["miner1:node.hostname==a", "*:node.role==worker"])
    stack = stack_definition(nodes, "powlab:x")
    assert stack["services"]["miner1"]["deploy"]["placement"]["constraints"] == [
        "node.hostname==a", "node.role==worker"]
    assert stack["services"]["observer"]["deploy"]["placement"]["constraints"] == [
        "node.role==worker"]
    assert "placement" not in stack_definition(default_layout(), "x")["services"]["miner1"][
        "deploy"]
    with pytest.raises(ValueError, match="NODE:CONSTRAINT"):
        apply_constraints(nodes, ["nobody:node.role==worker"])


def test_external_secrets_without_files() -> None:
    stack = stack_definition(default_layout(), "powlab:latest")
    assert all(v == {"external": True} for v in stack["secrets"].values())


def test_docker_stack_yml_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    main(["stack"])
    assert (ROOT / "docker-stack.yml").read_text() == capsys.readouterr().out


def test_healthcheck_reads_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    url, auth = _local_endpoint({"POWLAB_RPC_USER": "powlab",
                                 "POWLAB_RPC_PASSWORD_FILE": str(secret)})
    assert url == "http://127.0.0.1:18443/" and auth == ("powlab", "s3cret")


def test_layout_differences_name_what_would_change() -> None:
    stored = [asdict(n) for n in layout(7, 2, [0.4, 0.4, 0.2], 10.0)]
    state = {"nodes": stored, "image": "powlab:a"}
    assert layout_differences(state) == []
    # Options equal to the stored layout agree with it.
    assert layout_differences(state, nodes=7, miners=2, shares=[0.4, 0.4, 0.2],
                              block_time=10.0, image="powlab:a") == []
    assert layout_differences(state, block_time=10.0) == []  # the stored split kept
    assert layout_differences(state, nodes=12) == ["--nodes 12 (it has 7)"]
    assert layout_differences(state, miners=3) == ["--miners 3 (it has 2)"]
    assert layout_differences(state, image="powlab:b") == ["--image powlab:b (it runs "
                                                          "powlab:a)"]
    [rates] = layout_differences(state, block_time=5.0)
    assert rates.startswith("--block-time (its rates: miner1 0.08 H/s")
    [rates] = layout_differences(state, shares=[0.6, 0.2, 0.2])
    assert rates.startswith("--hashrates")
    [constraint] = layout_differences(state, constraints=["miner1:node.role==worker"])
    assert constraint == "--constraint (its constraints: none)"


def test_up_swarm_refuses_another_layout_on_an_existing_stack(tmp_path: Path) -> None:
    """Refused before any docker command (so no engine is needed here)."""
    stored = [asdict(n) for n in layout(6, 2, None, 10.0)]
    (tmp_path / "testnet.json").write_text(json.dumps({"version": 1, "mode": "swarm",
                                                       "stack": "powlabzz"}))
    (tmp_path / "swarm.json").write_text(json.dumps({"stack": "powlabzz", "nodes": stored,
                                                     "image": "powlab:latest"}))
    for extra in (["--nodes", "9"], ["--miners", "3"], ["--block-time", "3"],
                  ["--stack", "other"], ["--image", "powlab:x"]):
        result = run_powlab("testnet", "up", "--swarm", "--dir", str(tmp_path), *extra,
                            timeout=60)
        assert result.returncode != 0
        assert "holds swarm stack powlabzz with another layout" in result.stderr, result.stderr
        assert extra[0] in result.stderr


def test_resolve_splits_on_any_testnet() -> None:
    """`heal --resolve` on compose and swarm testnets: the same decision over RPC callers."""
    calls: list[tuple[str, str, tuple[Any, ...]]] = []
    infos = {
        "a": {"bestblockhash": "h1", "chainwork": "0x20", "finality_conflicts": []},
        "b": {"bestblockhash": "h2", "chainwork": "0x10", "finality_conflicts": [
            {"hash": "h1", "chainwork": "0x20", "fork_height": 4},
            {"hash": "h0", "chainwork": "0x18", "fork_height": 2}]},
        "c": {"bestblockhash": "h3", "chainwork": "0x11", "finality_conflicts": []},
    }

    def caller(name: str) -> Any:
        def rpc(method: str, *params: Any) -> Any:
            calls.append((name, method, params))
            if method == "getblockchaininfo":
                return infos[name]
            return "own5" if method == "getblockhash" else None
        return rpc

    actions = resolve_splits({n: caller(n) for n in infos})
    assert actions == ["b: invalidateblock own5 (own branch above height 4), "
                       "reconsiderblock h1"]
    assert [c for c in calls if c[1] != "getblockchaininfo"] == [
        ("b", "getblockhash", (5,)), ("b", "invalidateblock", ("own5",)),
        ("b", "reconsiderblock", ("h1",))]
    assert resolve_splits({}) == []


def test_a_partition_that_fails_half_way_is_recorded_and_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that does not answer: the partition says it is not in force, and every ban it
    did set is on record for `heal` to lift."""
    from lab.client import RPCConnectionError
    from lab.testnet.docker import DockerError, NodeContainer

    net = SwarmTestnet(tmp_path, "st")
    found = [NodeContainer(id=n, container=n, node=n, service=n, number=1, role="observer",
                           running=True, health=None, networks={"st_powlab": f"10.0.0.{k}"})
             for k, n in enumerate(("a", "b", "c"), start=2)]
    calls: dict[str, list[Any]] = {}

    def fake_calls(c: NodeContainer, batch: list[Any], timeout: float = 60.0,
                   errors: str = "raise") -> list[Any]:
        if c.node == "b":
            raise RPCConnectionError("b does not answer")
        calls.setdefault(c.node, []).extend(batch)
        return [[] if method == "getpeerinfo" else None for method, _ in batch]

    monkeypatch.setattr(net, "containers", lambda: found)
    monkeypatch.setattr(net, "_calls", fake_calls)
    with pytest.raises(DockerError, match=r"not in force.*b does not answer"):
        net.partition([["a"], ["b", "c"]])
    bans = json.loads((tmp_path / "swarm.json").read_text())["bans"]
    assert bans == {"a": ["10.0.0.3", "10.0.0.4"], "b": ["10.0.0.2"], "c": ["10.0.0.2"]}
    assert ("setban", ["10.0.0.2", "add", BAN_SECONDS]) in calls["c"]


def test_scenario_restarts_refused_on_a_swarm(tmp_path: Path) -> None:
    from lab.scenario import nodes as scenario_nodes
    from lab.scenario.engine import ScenarioError
    from lab.testnet.swarm import SwarmTestnet

    state = scenario_nodes._Compose(SwarmTestnet(tmp_path, "powlabzz"))
    for what in ("net.restart_node", "net.start_nodes"):
        with pytest.raises(ScenarioError, match=f"{what} is not available on a swarm testnet"):
            scenario_nodes._refuse_on_swarm(state, what)
    compose = scenario_nodes._Compose(DockerTestnet(ROOT, ROOT / "docker-compose.yml"))
    scenario_nodes._refuse_on_swarm(compose, "net.restart_node")  # a compose network may


# --------------------------------------------------------------------------------------------
# A stack on this engine
# --------------------------------------------------------------------------------------------

RESTART_SCENARIO = '''"""restart: restarts the merchant with another option."""

from lab.scenario import Network


def run(net: Network) -> None:
    net.restart_node("merchant", max_inbound=4)
    net.report(verdict="restarted", success=True)
'''


def _docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True,
                            timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _powlab(*args: str, timeout: float = 300) -> str:
    result = run_powlab(*args, timeout=timeout)
    assert result.returncode == 0, f"powlab {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _status(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(_powlab("testnet", "status", "--dir",
                                                    str(directory), "--json"))
    return rows


@pytest.mark.docker
def test_swarm_stack_end_to_end(tmp_path: Path) -> None:
    from tests.test_docker import _ensure_docker
    from tests.test_docker import wait_for as wait

    _ensure_docker()
    suffix = secrets.token_hex(3)
    image, stack, directory = f"powlab:swarmtest-{suffix}", f"powlabst{suffix}", tmp_path / "t"
    _docker("build", "--network", "host", "-q", "-t", image, str(ROOT), timeout=1800)
    initialised = _docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip() != "active"
    try:
        _powlab("testnet", "up", "--swarm", "--swarm-init", "--stack", stack, "--image", image,
                "--dir", str(directory), "--timeout", "180", timeout=600)
        rows = _status(directory)
        assert [r["node"] for r in rows] == ["miner1", "miner2", "merchant", "attacker",
                                             "observer"]
        assert all(r["up"] for r in rows)
        services = _docker("stack", "services", stack, "--format", "{{.Name}}").split()
        assert len(services) == 5

        def converged() -> bool:
            tips = {r["bestblockhash"] for r in _status(directory)}
            return len(tips) == 1 and None not in tips

        wait(converged, 60, "the stack's nodes on one tip")

        # Each container holds only its own password: the attacker's is refused by the
        # merchant's node, accepted by its own.
        attacker = _docker("ps", "-q", "--filter",
                           f"label=com.docker.swarm.service.name={stack}_attacker").split()[0]
        probe = (
            "from lab.client import rpc_call_sync, RPCAuthError\n"
            f"pw = open('/run/secrets/{SECRET_TARGET}').read().strip()\n"
            "try:\n"
            "    rpc_call_sync('http://merchant:18443/', 'getblockcount', [], ('powlab', pw), 5)\n"
            "    print('merchant: open')\n"
            "except RPCAuthError:\n"
            "    print('merchant: refused')\n"
            "rpc_call_sync('http://127.0.0.1:18443/', 'getblockcount', [], ('powlab', pw), 5)\n"
            "print('own: ok')\n"
        )
        out = _docker("exec", attacker, "python", "-c", probe)
        assert out.split("\n")[:2] == ["merchant: refused", "own: ok"], out
        inspect = _docker("service", "inspect", f"{stack}_merchant")
        assert (directory / "secrets" / "merchant").read_text() not in inspect

        # Partition by RPC bans over the overlay, both sides mine, heal, converge.
        _powlab("testnet", "partition", "--dir", str(directory), "miner1,merchant,observer",
                "miner2,attacker")
        _powlab("testnet", "mine", "--dir", str(directory), "miner1", "2")
        _powlab("testnet", "mine", "--dir", str(directory), "attacker", "1")
        rows = {r["node"]: r for r in _status(directory)}
        assert rows["attacker"]["partitioned"] and not rows["miner1"]["partitioned"]
        assert rows["merchant"]["bestblockhash"] != rows["attacker"]["bestblockhash"]
        _powlab("testnet", "heal", "--dir", str(directory))
        wait(converged, 60, "convergence after heal")

        # The lab's attacks and scenarios find the stack's nodes and roles.
        result = run_powlab("attack", "majority", "--dir", str(directory), "--hashrate-share",
                            "0.8", "--confirmations", "2", "--json", timeout=400)
        majority = json.loads(result.stdout)
        assert majority["roles"] == {"attacker": "attacker", "victim": "merchant",
                                     "honest": ["miner1", "miner2"]}
        assert majority["success"] is True and majority["reorg_depth"] >= 2
        race = json.loads(_powlab("scenario", "run", "examples/scenarios/race.py", "--dir",
                                  str(directory), "--json", timeout=400))
        assert race["attack"] == "race"

        # heal --resolve goes through the stack's nodes (no split left here to resolve).
        out = _powlab("testnet", "heal", "--resolve", "--dir", str(directory))
        assert "no chain split left by a refused reorganisation" in out, out
        # A scenario that restarts a node stops with a reason, and the stack is left as it was.
        scenario = tmp_path / "restart.py"
        scenario.write_text(RESTART_SCENARIO)
        result = run_powlab("scenario", "run", str(scenario), "--dir", str(directory),
                            timeout=300)
        assert result.returncode != 0
        assert "net.restart_node is not available on a swarm testnet" in result.stderr, \
            result.stdout + result.stderr
        assert all(r["up"] for r in _status(directory))
        # The dashboard shows every node of the stack, with its role; no password in its state.
        from tests.test_attack_topologies import dashboard_on_compose

        dashboard_on_compose(directory)
        # Another layout for the same directory is refused, not silently ignored.
        result = run_powlab("testnet", "up", "--swarm", "--nodes", "8", "--dir",
                            str(directory), timeout=120)
        assert result.returncode != 0 and "another layout" in result.stderr, result.stderr
    finally:
        run_powlab("testnet", "down", "--purge", "--dir", str(directory), timeout=300)
        left = _docker("ps", "-a", "-q", "--filter",
                       f"label=com.docker.stack.namespace={stack}").split()
        vols = _docker("volume", "ls", "-q", "--filter",
                       f"label=com.docker.stack.namespace={stack}").split()
        _docker("rmi", image, check=False)
        if initialised and not _docker("service", "ls", "-q").split():
            _docker("swarm", "leave", "--force", check=False)
    assert not left and not vols


# --------------------------------------------------------------------------------------------
# Across two engines
# --------------------------------------------------------------------------------------------


def _bridge_gateway() -> str:
    return _docker("network", "inspect", "bridge", "--format",
                   "{{(index .IPAM.Config 0).Gateway}}").strip()


@pytest.mark.docker
@pytest.mark.swarm
def test_swarm_across_two_engines(tmp_path: Path) -> None:
    """A second dockerd in a container joins as a worker; 12 nodes spread over both engines
    converge, are partitioned across the engines and healed, and a majority attack wins."""
    from tests.test_docker import _ensure_docker
    from tests.test_docker import wait_for as wait

    _ensure_docker()
    state = _docker("info", "--format",
                    "{{.Swarm.LocalNodeState}} {{.Swarm.NodeAddr}}").split()
    gateway = _bridge_gateway()
    initialised = state[0] != "active"
    if not initialised and (len(state) < 2 or state[1] != gateway):
        pytest.skip(f"this engine is in a swarm advertised at {state[1:]}, which a container "
                    f"cannot reach; the test needs none, or one advertised at {gateway}")
    suffix = secrets.token_hex(3)
    image, stack = f"powlab:swarmtest-{suffix}", f"powlabmx{suffix}"
    worker_image, worker = "powlab-swarm-worker:test", f"powlab-swarm-worker-{suffix}"
    directory = tmp_path / "t"
    _docker("build", "--network", "host", "-q", "-t", image, str(ROOT), timeout=1800)
    _docker("build", "--network", "host", "-q", "-t", worker_image,
            str(ROOT / "tests" / "swarm_worker"), timeout=1800)
    worker_id = ""
    try:
        if initialised:
            _docker("swarm", "init", "--advertise-addr", gateway)
        _docker("run", "-d", "--name", worker, "--hostname", worker, "--cap-add", "ALL",
                "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                "--security-opt", "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "-v", "/var/lib/docker", worker_image)
        wait(lambda: _docker("exec", worker, "docker", "info", check=False), 60,
             "the worker's engine")
        token = _docker("swarm", "join-token", "-q", "worker").strip()
        _docker("exec", worker, "docker", "swarm", "join", "--token", token, f"{gateway}:2377")
        worker_id = _docker("exec", worker, "docker", "info", "--format",
                            "{{.Swarm.NodeID}}").strip()
        saved = subprocess.run(["docker", "save", image], capture_output=True, check=True,
                               timeout=600).stdout
        subprocess.run(["docker", "exec", "-i", worker, "docker", "load"], input=saved,
                       capture_output=True, check=True, timeout=600)

        _powlab("testnet", "up", "--swarm", "--nodes", "12", "--stack", stack, "--image",
                image, "--dir", str(directory), "--timeout", "300", timeout=900)
        engines = _docker("stack", "ps", stack, "--filter", "desired-state=running",
                          "--format", "{{.Node}}").split()
        assert len(engines) == 12 and set(engines) == {worker, _docker(
            "info", "--format", "{{.Name}}").strip()}, engines
        rows = _status(directory)
        assert len(rows) == 12 and all(r["up"] for r in rows)
        remote = {r["node"] for r in rows if not r["rpc"].startswith("http://127.0.0.1:")}
        assert remote, rows  # some nodes answer on the worker's address

        def converged() -> bool:
            tips = {r["bestblockhash"] for r in _status(directory)}
            return len(tips) == 1 and None not in tips

        wait(converged, 90, "12 nodes on one tip")
        local = [r["node"] for r in rows if r["node"] not in remote]
        # Each side has nodes on both engines where it can; the attacker is on side B.
        side_a = [n for n in local if n != "attacker"] + sorted(remote - {"attacker"})[:1]
        side_b = [n for n in (r["node"] for r in rows) if n not in side_a]
        assert "attacker" in side_b and side_a
        _powlab("testnet", "partition", "--dir", str(directory), ",".join(side_a),
                ",".join(side_b))
        _powlab("testnet", "mine", "--dir", str(directory), side_a[0], "2")
        _powlab("testnet", "mine", "--dir", str(directory), "attacker", "1")
        rows = {r["node"]: r for r in _status(directory)}
        assert len({rows[n]["bestblockhash"] for n in side_a}) == 1
        assert rows[side_a[0]]["bestblockhash"] != rows["attacker"]["bestblockhash"]
        _powlab("testnet", "heal", "--dir", str(directory))
        wait(converged, 90, "convergence after heal, across engines")

        result = run_powlab("attack", "majority", "--dir", str(directory), "--hashrate-share",
                            "0.8", "--confirmations", "2", "--json", timeout=400)
        majority = json.loads(result.stdout)
        assert majority["success"] is True and majority["reorg_depth"] >= 2
    finally:
        run_powlab("testnet", "down", "--purge", "--dir", str(directory), timeout=300)
        _docker("exec", worker, "docker", "swarm", "leave", "--force", check=False)
        _docker("rm", "-f", "-v", worker, check=False)
        if worker_id:
            _docker("node", "rm", "--force", worker_id, check=False)
        _docker("rmi", image, check=False)
        if initialised and not _docker("service", "ls", "-q").split():
            _docker("swarm", "leave", "--force", check=False)
