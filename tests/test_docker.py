"""The docker-compose testnet, end to end: image, five nodes, a payment, a partition, a heal.

Marked ``docker``: the fast suite deselects it (``-m "not docker"``) and CI runs it as a
stage of its own (``pytest -m docker tests/test_docker.py``). It first runs the shared
``docker-offline.sh`` (installs Docker and Compose from Debian, starts the engine, provides
the base image without a registry); where Docker still is not usable it skips, saying why.

The compose project is named ``powlabpytest`` plus a random suffix, one per run, builds the
image under a tag of its own (``powlab:pytest-SUFFIX``, removed afterwards) and publishes
its RPC ports on free ports, so it runs
next to a developer's own ``docker-compose up`` and next to another run of this test without
touching either. The few tests at the top need no Docker and run in the fast suite.
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
    COOKIE_PATH,
    PROJECT_LABEL,
    SECRET_PATH,
    DockerError,
    DockerTestnet,
    NodeContainer,
    _parse_container,
    check_engine,
    find_compose_command,
    healthcheck,
    write_password_files,
)
from lab.testnet.engine import ContainerEngine
from lab.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = secrets.token_hex(3)  # one per run: runs share engines
PROJECT = f"powlabpytest{SUFFIX}"
IMAGE = f"powlab:pytest-{SUFFIX}"
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


def test_parse_container_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "miner2"
    secret.write_text("per-node-password\n")
    sample = _inspect_sample(Mounts=[
        {"Type": "volume", "Source": "/var/lib/docker/volumes/x/_data", "Destination": "/data"},
        {"Type": "bind", "Source": str(secret), "Destination": SECRET_PATH},
    ])
    sample["Config"]["Env"] = ["POWLAB_RPC_USER=powlab", f"POWLAB_RPC_PASSWORD_FILE={SECRET_PATH}"]
    c = _parse_container(sample)
    assert c.auth is None and c.rpc_user == "powlab"
    assert (c.password_file, c.password_source) == (SECRET_PATH, str(secret))
    net = DockerTestnet(ROOT, Path("docker-compose.yml"), project_name="x")
    assert net.credentials(c) == ("powlab", "per-node-password")


def test_password_files(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    written = write_password_files(directory, ["a", "b"])
    assert [p.name for p in written] == ["a", "b"]
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in written)  # read by uid 10001
    first = (directory / "a").read_text()
    assert first != (directory / "b").read_text() and len(first.strip()) >= 32
    assert write_password_files(directory, ["a", "c"]) == [directory / "c"]
    assert (directory / "a").read_text() == first  # kept: a running node read it


def test_the_compose_file_configures_no_credentials_and_open_mode_the_fixed_pair() -> None:
    """Per-node credentials by default: no RPC user or password anywhere in the compose
    file, so each node uses its own cookie; docker/open.yml, the documented open mode, gives
    every service (extra too) the fixed pair."""
    text = (ROOT / "docker-compose.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "POWLAB_RPC_USER" not in body and "POWLAB_RPC_PASSWORD" not in body
    assert "secrets:" not in body
    services = [line.strip().rstrip(":") for line in body.splitlines()
                if line.startswith("  ") and not line.startswith("   ") and line.endswith(":")]
    open_text = (ROOT / "docker" / "open.yml").read_text()
    for name in ("miner1", "miner2", "merchant", "attacker", "observer", "extra"):
        assert name in services
        assert f"  {name}: *open\n" in open_text
    assert "POWLAB_RPC_USER: powlab\n" in open_text
    assert "POWLAB_RPC_PASSWORD: powlab\n" in open_text


def test_a_cookie_is_read_once_per_start_and_again_when_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Read with `docker exec`, kept once the node accepts it: for the container's start, or
    until asked afresh. A stale cookie (a kill leaves the last start's file until the new
    node writes its own) is refused by the node, so it is not kept, and the caller retries."""
    from lab.client import RPCAuthError, RPCConnectionError

    net = DockerTestnet(ROOT, Path("docker-compose.yml"), project_name="x")
    assert isinstance(net, ContainerEngine)
    reads: list[list[str]] = []
    cookies = iter(["__cookie__:stale", "__cookie__:one", "__cookie__:two", "__cookie__:three",
                    "__cookie__:cut", "__cookie__:cut2", ""])
    current = {"password": "one", "reachable": True}

    def fake_run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        reads.append(argv)
        return subprocess.CompletedProcess(argv, 0, next(cookies), "")

    def fake_rpc(url: str, method: str, params: list[Any], auth: tuple[str, str],
                 timeout: float) -> int:
        if not current["reachable"]:
            raise RPCConnectionError("cut off")
        if auth[1] != current["password"]:
            raise RPCAuthError("401")
        return 7

    monkeypatch.setattr("lab.testnet.docker._run", fake_run)
    monkeypatch.setattr("lab.testnet.docker.rpc_call_sync", fake_rpc)
    c = _parse_container(_inspect_sample())
    c.auth = None
    with pytest.raises(DockerError, match="not the current one"):
        net.credentials(c)
    assert net.credentials(c) == ("__cookie__", "one")
    assert net.credentials(c) == ("__cookie__", "one")  # kept for this start
    assert reads == [["docker", "exec", c.id, "cat", COOKIE_PATH]] * 2
    current["password"] = "two"
    assert net.credentials(c, fresh=True) == ("__cookie__", "two")
    c.started_at = "2026-11-29T08:00:00Z"  # the container restarted: a new cookie
    current["password"] = "three"
    assert net.credentials(c) == ("__cookie__", "three")
    c.started_at = "later"
    current["reachable"] = False  # cut off: used as read, not kept
    assert net.credentials(c) == ("__cookie__", "cut")
    assert net.credentials(c) == ("__cookie__", "cut2")
    with pytest.raises(DockerError, match="no RPC cookie"):  # not written yet
        net.credentials(c)


def test_a_scenario_reads_a_recreated_nodes_new_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    """`net.restart_node` on compose: the new container's node has a new cookie at the same
    URL; waiting for it re-reads the cookie when the old one is refused."""
    from types import SimpleNamespace

    from lab import client
    from lab.client import NodeEndpoint, RPCAuthError
    from lab.scenario import nodes
    from lab.scenario.engine import NetNode

    url = "http://127.0.0.1:18502/"

    def fake(u: str, method: str, params: list[Any], auth: tuple[str, str] | None,
             timeout: float) -> int:
        if auth != ("__cookie__", "new"):
            raise RPCAuthError("401")
        return 1

    monkeypatch.setattr(client, "rpc_call_sync", fake)
    fetched: list[bool] = []

    def credentials(c: Any, fresh: bool = False) -> tuple[str, str]:
        fetched.append(fresh)
        return ("__cookie__", "new")

    node = NetNode("miner1", "miner", NodeEndpoint(url, ("__cookie__", "old")))
    nodes._compose_ready(node, SimpleNamespace(rpc_url=url, container="c", id="new"),
                         SimpleNamespace(credentials=credentials), timeout=5)
    assert node.endpoint.auth == ("__cookie__", "new") and fetched == [True]


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
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerTestnet]:
    _ensure_docker()
    ports = _free_ports(len(NODES))
    env = {f"POWLAB_{name.upper()}_RPC_PORT": str(port) for name, port in zip(NODES, ports,
                                                                               strict=True)}
    env["POWLAB_IMAGE"] = IMAGE  # compose builds and runs this tag
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
        subprocess.run(["docker", "image", "rm", IMAGE], capture_output=True, check=False)


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


@pytest.mark.docker
def test_open_mode_gives_every_node_the_fixed_pair(testnet: DockerTestnet) -> None:
    """docker/open.yml over the compose file: the documented open mode. Containers are
    created, not started."""
    project = f"{PROJECT}open"
    ports = {f"POWLAB_{n.upper()}_RPC_PORT": str(p) for n, p in zip(NODES, _free_ports(5),
                                                                     strict=True)}
    base = [*testnet.compose_command, "-f", str(ROOT / "docker-compose.yml"), "-f",
            str(ROOT / "docker" / "open.yml"), "-p", project]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **ports, "POWLAB_IMAGE": IMAGE}
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=300, check=False)

    try:
        opened = compose("up", "--no-start", "--no-build", "miner1", "merchant")
        assert opened.returncode == 0, opened.stderr
        for name in ("miner1", "merchant"):
            [cid] = subprocess.run(
                ["docker", "ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}={project}",
                 "--filter", f"label=com.docker.compose.service={name}"],
                capture_output=True, text=True, check=True).stdout.split()
            c = _parse_container(testnet.inspect(cid))
            assert c.auth == ("powlab", "powlab") and testnet.credentials(c) == c.auth
    finally:
        compose("down", "-v")


def _end_to_end(net: DockerTestnet) -> None:
    t0 = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", flush=True)

    # --- five nodes, the right roles, published RPC, healthy, mining on their own
    containers = {c.node: c for c in net.containers()}
    assert sorted(containers) == sorted(NODES)
    assert {net.inspect(c.id)["Config"]["Image"] for c in containers.values()} == {IMAGE}
    passwords = {}
    for name, c in containers.items():
        assert c.role == ROLES[name] and c.auth is None
        url, auth = net.endpoint(name)
        assert url.startswith("http://127.0.0.1:") and auth[0] == "__cookie__"
        passwords[name] = auth[1]
        assert len(auth[1]) >= 32
    assert len(set(passwords.values())) == len(NODES)  # one of its own per node
    wait_for(lambda: all(c.health == "healthy" for c in net.containers()), 120,
             "every container healthy")
    step("all five healthy")
    _check_credentials(net, passwords)
    step("per-node cookies: in no container's configuration, the attacker's refused")
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
    # By the nodes' own bans: every container stays on the network, its RPC port answers.
    assert all(net._main_network_name() in c.networks for c in net.containers())
    attacker_ip = net.container("attacker").networks[net._main_network_name()]
    banned = [b["address"].split("/")[0] for b in net.rpc("merchant", "listbanned")]
    assert attacker_ip in banned, banned
    assert {r["node"]: r for r in net.status()}["attacker"]["partitioned"]
    attacker_blocks = net.rpc("attacker", "generatetoaddress", 2,
                              net.rpc("attacker", "getnewaddress"))
    honest_blocks = net.rpc("miner1", "generatetoaddress", 6, net.rpc("miner1", "getnewaddress"))
    time.sleep(3)  # an observation window for a "never crosses" check, not synchronisation
    attacker_tip = net.rpc("attacker", "getbestblockhash")
    honest_tip = net.wait_converged(60, nodes=["miner1", "miner2", "merchant", "observer"])
    assert attacker_tip != honest_tip
    with pytest.raises(RPCError):  # the rest never heard of the attacker's blocks
        net.rpc("observer", "getblock", attacker_blocks[-1])
    # Cut off at the network level too (`docker network disconnect` by hand): `powlab rpc
    # --node attacker` still reaches it, through docker exec, and heal puts it back.
    subprocess.run(["docker", "network", "disconnect", net._main_network_name(),
                    net.container("attacker").id], check=True, capture_output=True)
    assert not net.container("attacker").networks
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
        assert out.returncode == 0, out.stderr
        # The attacker's tip (it mines on its own, so maybe a block past attacker_tip), which
        # the other side has never seen.
        got = out.stdout.strip()
        assert net.rpc("attacker", "getblock", got)["confirmations"] >= 1
        assert got == attacker_tip or net.rpc("attacker", "getblock", attacker_tip)[
            "confirmations"] >= 2
        with pytest.raises(RPCError):
            net.rpc("observer", "getblock", got)
    finally:
        shutil.rmtree(marker)
    step("partitioned: the attacker and the rest mine apart")

    # --- heal: all on one chain, the honest (longer) one
    net.heal()
    assert all(net._main_network_name() in c.networks for c in net.containers())
    assert attacker_ip not in [b["address"].split("/")[0]
                               for b in net.rpc("merchant", "listbanned")]
    assert not any(r["partitioned"] for r in net.status())
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


def _check_credentials(net: DockerTestnet, passwords: dict[str, str]) -> None:
    """No password in any container's configuration or environment; the attacker's container
    holds only its own cookie, which the merchant's node refuses; the fixed pair is refused
    too."""
    for c in net.containers():
        inspect = subprocess.run(["docker", "inspect", c.id], capture_output=True, text=True,
                                 check=True).stdout
        env = subprocess.run(["docker", "exec", c.id, "env"], capture_output=True, text=True,
                             check=True).stdout
        for password in passwords.values():
            assert password not in inspect and password not in env, c.node
    attacker = net.container("attacker")
    probe = (
        "from lab.client import rpc_call_sync, RPCAuthError\n"
        f"user, _, pw = open('{COOKIE_PATH}').read().strip().partition(':')\n"
        "for url, auth in (('http://merchant:18443/', (user, pw)),\n"
        "                  ('http://merchant:18443/', ('powlab', 'powlab')),\n"
        "                  ('http://127.0.0.1:18443/', (user, pw))):\n"
        "    try:\n"
        "        rpc_call_sync(url, 'getblockcount', [], auth, 20)\n"
        "        print('open')\n"
        "    except RPCAuthError:\n"
        "        print('refused')\n"
    )

    def probed() -> list[str]:
        # Retried: on a loaded machine a node may not answer within the probe's timeout.
        result = subprocess.run(["docker", "exec", attacker.id, "python", "-c", probe],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    out = wait_for(probed, 90, "the attacker container's probe of the merchant's RPC", 2.0)
    assert out == ["refused", "refused", "open"], out
    assert passwords["attacker"] != passwords["merchant"]
