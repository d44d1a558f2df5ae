"""The docker-compose testnet, end to end: image, five nodes, a payment, a partition, a heal.

Marked ``docker``: the fast suite deselects it (``-m "not docker"``) and CI runs it as a
stage of its own (``pytest -m docker tests/test_docker.py``). It first runs the shared
``docker-offline.sh`` (installs Docker and Compose from Debian, starts the engine, provides
the base image without a registry); where Docker still is not usable it skips, saying why.

The compose project is named ``powlabpytest`` plus a random suffix, one per run, and
publishes its RPC ports on free ports, so it runs next to a developer's own
``docker-compose up`` and next to another run of this test without touching either. The few
tests at the top need no Docker and run in the fast suite.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import RPCError, rpc_call_sync
from lab.testnet.docker import (
    DockerError,
    DockerTestnet,
    NodeContainer,
    _parse_container,
    check_engine,
    find_compose_command,
    healthcheck,
)
from lab.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
PROJECT = f"powlabpytest{secrets.token_hex(3)}"  # one per run: runs share engines
NODES = ("miner1", "miner2", "merchant", "attacker", "observer")
ROLES = {"miner1": "miner", "miner2": "miner", "merchant": "merchant",
         "attacker": "attacker", "observer": "observer"}
SETUP_TIMEOUT = 900  # the first run installs packages and builds a base image


# A node restarting or cut off raises instead of answering: keep polling, once a second.
def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 1.0) -> Any:
    return wait_until(predicate, timeout, what, interval, AssertionError, ignore=(Exception,))


# --------------------------------------------------------------------------------------------
# No Docker needed
# --------------------------------------------------------------------------------------------


def _inspect_sample(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "Id": "abc123" * 10,
        "Name": "/powlab_miner2_1",
        "Config": {
            "Labels": {
                "com.docker.compose.project": "powlab",
                "com.docker.compose.service": "miner2",
                "com.docker.compose.container-number": "1",
                "powlab.role": "miner",
            },
            "Env": ["POWLAB_RPC_USER=powlab", "POWLAB_RPC_PASSWORD=pw=with=equals", "PATH=/x"],
        },
        "State": {"Running": True, "Health": {"Status": "healthy"}},
        "NetworkSettings": {
            "Networks": {"powlab_powlab": {"IPAddress": "172.18.0.3"}},
            "Ports": {"18443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18502"}],
                      "18444/tcp": None},
        },
        "HostConfig": {"PortBindings": {"18443/tcp": [{"HostIp": "127.0.0.1",
                                                       "HostPort": "18502"}]}},
    }
    data.update(overrides)
    return data


def test_parse_container_reads_labels_ports_and_credentials() -> None:
    c = _parse_container(_inspect_sample())
    assert isinstance(c, NodeContainer)
    assert (c.node, c.service, c.role, c.container) == ("miner2", "miner2", "miner",
                                                         "powlab_miner2_1")
    assert c.running and c.health == "healthy" and c.rpc_mapped
    assert c.rpc_url == "http://127.0.0.1:18502/"
    assert c.auth == ("powlab", "pw=with=equals")
    assert c.networks == {"powlab_powlab": "172.18.0.3"}


def test_parse_container_while_cut_off_and_scaled() -> None:
    sample = _inspect_sample(NetworkSettings={"Networks": {}, "Ports": {}})
    sample["Config"]["Labels"]["com.docker.compose.container-number"] = "3"
    c = _parse_container(sample)
    assert c.node == "miner2-3"
    assert c.networks == {}
    assert c.rpc_port == 18502  # from HostConfig while no live mapping exists
    assert not c.rpc_mapped


def test_missing_docker_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DockerError, match="not installed"):
        find_compose_command()
    with pytest.raises(DockerError, match="not installed"):
        check_engine()
    net = DockerTestnet(ROOT, Path("docker-compose.yml"), project_name="x")
    with pytest.raises(DockerError, match="not installed"):
        net.status()


def test_healthcheck_without_a_node_fails(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"POWLAB_RPC_BIND": f"0.0.0.0:{port}", "POWLAB_DATADIR": str(tmp_path)}
    assert healthcheck(env, timeout=1.0) == 1


# --------------------------------------------------------------------------------------------
# The real thing
# --------------------------------------------------------------------------------------------


def _setup_script() -> Path | None:
    candidates = [
        os.environ.get("POWLAB_DOCKER_SETUP", ""),
        ROOT.parent / "shared" / "tools" / "docker-offline.sh",
        "/work/shared/tools/docker-offline.sh",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _docker_problem() -> str | None:
    try:
        check_engine()
        find_compose_command()
    except DockerError as exc:
        return str(exc)
    return None


def _ensure_docker() -> None:
    script = _setup_script()
    output = ""
    if script is not None:
        try:
            result = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=SETUP_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            output = (result.stdout + result.stderr).strip()
        except subprocess.TimeoutExpired:
            output = f"{script} did not finish within {SETUP_TIMEOUT}s"
    problem = _docker_problem()
    if problem is not None:
        tail = "\n".join(output.splitlines()[-5:])
        pytest.skip(
            f"Docker is not usable here: {problem}"
            + (f"\n{script} said:\n{tail}" if script else "\n(no docker-offline.sh found)")
        )


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def testnet() -> Iterator[DockerTestnet]:
    _ensure_docker()
    ports = _free_ports(len(NODES))
    env = {f"POWLAB_{name.upper()}_RPC_PORT": str(port) for name, port in zip(NODES, ports,
                                                                               strict=True)}
    net = DockerTestnet(ROOT, ROOT / "docker-compose.yml", project_name=PROJECT, env=env,
                        log=lambda m: print(f"[docker testnet] {m}", flush=True))
    try:
        started = time.monotonic()
        try:
            net.up(build=True, fund=False, wait=180)
        except DockerError:
            _dump_logs(net)
            raise
        print(f"[docker testnet] built and up in {time.monotonic() - started:.0f}s", flush=True)
        yield net
    finally:
        net.down(purge=True)


def _dump_logs(net: DockerTestnet) -> None:
    for c in net.containers():
        logs = subprocess.run(["docker", "logs", "--tail", "30", c.id],
                              capture_output=True, text=True, check=False)
        print(f"---- {c.node} ({c.container}) ----\n{logs.stdout}{logs.stderr}")
    for row in net.status():
        print(row)


@pytest.mark.docker
def test_compose_testnet_end_to_end(testnet: DockerTestnet) -> None:
    try:
        _end_to_end(testnet)
    except BaseException:
        _dump_logs(testnet)
        raise


def _end_to_end(net: DockerTestnet) -> None:
    t0 = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", flush=True)

    # --- five nodes, the right roles, published RPC, healthy, mining on their own
    containers = {c.node: c for c in net.containers()}
    assert sorted(containers) == sorted(NODES)
    for name, c in containers.items():
        assert c.role == ROLES[name]
        url, auth = net.endpoint(name)
        assert url.startswith("http://127.0.0.1:") and auth == ("powlab", "powlab")
    wait_for(lambda: all(c.health == "healthy" for c in net.containers()), 120,
             "every container healthy")
    step("all five healthy")
    # The three miners mine on their own (POWLAB_MINE) at ~0.25 H/s together.
    net.wait_converged(180, min_height=2)
    rows = {r["node"]: r for r in net.status()}
    assert all(r["up"] for r in rows.values())
    assert all(r["peers"] >= 3 for r in rows.values()), rows
    step(f"mining and converged at height {rows['observer']['height']}")

    # --- fund a wallet, pay the merchant, mine it to finality on another miner
    payer = net.rpc("miner1", "getnewaddress")
    net.rpc("miner1", "generatetoaddress", 101, payer)
    assert net.rpc("miner1", "getbalance") >= 50 * 100_000_000
    merchant_address = net.rpc("merchant", "getnewaddress")
    amount = 7 * 100_000_000
    txid = net.rpc("miner1", "sendtoaddress", merchant_address, amount)
    wait_for(lambda: txid in net.rpc("miner2", "getrawmempool"), 60,
             "the payment in miner2's mempool", 0.5)
    depth = net.rpc("merchant", "getblockchaininfo")["finality_depth"]
    net.rpc("miner2", "generatetoaddress", depth, net.rpc("miner2", "getnewaddress"))
    final = wait_for(
        lambda: (tx := net.rpc("merchant", "gettransaction", txid))["status"] == "final" and tx,
        60, "the payment final at the merchant", 0.5,
    )
    assert final["confirmations"] >= depth
    assert net.rpc("merchant", "getbalance") >= amount
    net.wait_converged(60)
    step(f"payment {txid[:12]} final ({final['confirmations']} confirmations)")

    # --- cut the attacker off, mine on both sides
    net.partition([["miner1", "miner2", "merchant", "observer"], ["attacker"]])
    wait_for(lambda: {r["node"]: r for r in net.status()}["attacker"]["peers"] == 0, 30,
             "the attacker isolated")
    cut_off = net.container("attacker")
    assert not cut_off.networks, cut_off.networks
    attacker_blocks = net.rpc("attacker", "generatetoaddress", 2,
                              net.rpc("attacker", "getnewaddress"))
    honest_blocks = net.rpc("miner1", "generatetoaddress", 6, net.rpc("miner1", "getnewaddress"))
    time.sleep(3)  # an observation window for a "never crosses" check, not synchronisation
    attacker_tip = net.rpc("attacker", "getbestblockhash")
    honest_tip = net.wait_converged(60, nodes=["miner1", "miner2", "merchant", "observer"])
    assert attacker_tip != honest_tip
    with pytest.raises(RPCError):  # the rest never heard of the attacker's blocks
        net.rpc("observer", "getblock", attacker_blocks[-1])
    # `powlab rpc --node attacker` reaches it anyway, through docker exec.
    marker = Path(tempfile.mkdtemp(prefix="powlab-docker-marker-"))
    try:
        (marker / "testnet.json").write_text(json.dumps({
            "version": 1, "mode": "docker", "project_dir": str(ROOT),
            "compose_file": str(ROOT / "docker-compose.yml")}))
        out = subprocess.run(
            [sys.executable, "-m", "lab", "rpc", "--dir", str(marker), "--node", "attacker",
             "getbestblockhash"], capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "COMPOSE_PROJECT_NAME": net.project},
        )
        assert out.returncode == 0 and out.stdout.strip() == attacker_tip, out.stderr
    finally:
        shutil.rmtree(marker)
    step("partitioned: the attacker and the rest mine apart")

    # --- heal: all on one chain, the honest (longer) one
    net.heal()
    assert all(net._main_network_name() in c.networks for c in net.containers())
    best = net.wait_converged(120)
    step(f"healed and converged on {best[:12]}")
    for block in attacker_blocks:
        assert net.rpc("attacker", "getblock", block)["confirmations"] == -1
    assert net.rpc("attacker", "getblock", honest_blocks[-1])["confirmations"] >= 1
    assert net.rpc("merchant", "gettransaction", txid)["status"] == "final"
    url, auth = net.endpoint("attacker")  # its published port answers again
    assert rpc_call_sync(url, "getbestblockhash", [], auth) == net.rpc("observer",
                                                                        "getbestblockhash")

    # --- down -v removes everything
    net.down(purge=True)
    assert net.containers() == []
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter",
         f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert volumes == []
    step("down -v: no containers or volumes left")
