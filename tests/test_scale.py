"""Scaling the process testnet: the random topology, addresses beyond one /24, the fork
server's protocol, and a real testnet forked from it (issue 15; docs/scaling.md).

The end-to-end test forks 12 nodes on a random graph of degree 4 from the fork server and
checks what a user would: they converge, each costs less unshared memory than a node started
the plain way, one node stops and restarts by pid, and killing the fork server (-9) leaves
every node running and `testnet down` still stops them all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.testnet import forkserver
from lab.testnet import manifest as manifest_module
from lab.testnet.control import call, funded_nodes, wait_converged
from lab.testnet.figures import group_memory_kb
from lab.testnet.manifest import (
    host_of,
    load_manifest,
    neighbours,
    new_manifest,
    random_links,
    topology_links,
)
from lab.testnet.processes import NodeProcess, process_alive, process_group
from tests import subnets
from tests.daemon_harness import REPO, wait_for

SEED = int(os.environ.get("POWLAB_TEST_SEED") or random.SystemRandom().randrange(2**32))


def _undirected(links: dict[int, list[int]]) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {k: set() for k in links}
    for a, outs in links.items():
        for b in outs:
            adj[a].add(b)
            adj[b].add(a)
    return adj


def _connected(adj: dict[int, set[int]]) -> bool:
    if not adj:
        return True
    seen, todo = {0}, deque([0])
    while todo:
        for other in adj[todo.popleft()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return len(seen) == len(adj)


# --------------------------------------------------------------------------- topology


def test_random_graph_is_connected_with_degree_about_d() -> None:
    links = random_links(1000, 8, SEED)
    adj = _undirected(links)
    assert _connected(adj), f"seed {SEED}"
    assert all(len(outs) == 4 for outs in links.values()), f"seed {SEED}"
    degrees = [len(a) for a in adj.values()]
    assert min(degrees) >= 4 and 7.5 <= sum(degrees) / len(degrees) <= 8.5, f"seed {SEED}"
    # No self-links and no pair dialled twice (either way): each link is one connection.
    pairs = [frozenset((a, b)) for a, outs in links.items() for b in outs]
    assert all(len(p) == 2 for p in pairs) and len(pairs) == len(set(pairs)), f"seed {SEED}"


def test_random_graph_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    assert random_links(50, 8, SEED) == random_links(50, 8, SEED)
    assert random_links(50, 8, 1) != random_links(50, 8, 2)
    a = new_manifest(tmp_path, 30, 2, [0.5, 0.5], "random", "regtest", 10, None, seed=7)
    b = new_manifest(tmp_path, 30, 2, [0.5, 0.5], "random", "regtest", 10, None, seed=7)
    assert [e.connect for e in a.nodes] == [e.connect for e in b.nodes]
    assert (a.degree, a.seed) == (8, 7)
    # Without --seed one is drawn and recorded, so the graph can be rebuilt.
    c = new_manifest(tmp_path, 30, 2, [0.5, 0.5], "random", "regtest", 10, None, degree=6)
    assert c.seed is not None
    rebuilt = random_links(30, 6, c.seed)
    assert [e.connect for e in c.nodes] == [[c.nodes[j].p2p for j in rebuilt[k]]
                                            for k in range(30)]


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 80), degree=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_random_graph_properties(count: int, degree: int, seed: int) -> None:
    links = random_links(count, degree, seed)
    adj = _undirected(links)
    assert _connected(adj)
    for k, outs in links.items():
        assert k not in outs
        assert len(outs) <= max(1, degree // 2)
        if count > 1:
            assert len(adj[k]) >= min(max(1, degree // 2), count - 1)


def test_line_stays_the_default_layout(tmp_path: Path) -> None:
    m = new_manifest(tmp_path, 4, 2, [0.5, 0.5], "line", "regtest", 10, None)
    assert [e.connect for e in m.nodes] == [[], ["127.0.0.2:18444"], ["127.0.0.3:18444"],
                                            ["127.0.0.4:18444"]]
    assert (m.launcher, m.degree, m.seed) == ("exec", None, None)
    assert topology_links(4, "line") == {0: [], 1: [0], 2: [1], 3: [2]}


def test_addresses_spill_into_the_next_ranges() -> None:
    assert host_of("127.77.0", 0) == "127.77.0.2"
    assert host_of("127.77.0", 253) == "127.77.0.255"
    assert host_of("127.77.0", 254) == "127.77.1.2"
    assert host_of("127.77.0", 999) == "127.77.3.239"
    hosts = {host_of("127.77.0", k) for k in range(1000)}
    assert len(hosts) == 1000
    with pytest.raises(manifest_module.TestnetError, match="do not fit"):
        host_of("127.77.254", 600)
    assert host_of("127.255.254", 506) == "127.255.255.254"
    with pytest.raises(manifest_module.TestnetError, match="broadcast"):
        host_of("127.255.254", 507)


def test_large_testnets_fund_the_first_sixteen_and_the_miners(tmp_path: Path) -> None:
    small = new_manifest(tmp_path, 100, 2, [0.5, 0.5], "random", "regtest", 10, None, seed=1)
    assert funded_nodes(small) == small.nodes
    big = new_manifest(tmp_path, 1000, 2, [0.5, 0.5], "random", "regtest", 10, None, seed=1,
                       miner_names=["n1", "n500"])
    assert [e.name for e in funded_nodes(big)] == [f"n{k}" for k in range(1, 17)] + ["n500"]


# --------------------------------------------------------------------------- fork server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    forkserver.ensure_server(tmp_path, REPO, env)
    try:
        yield tmp_path
    finally:
        forkserver.stop_server(tmp_path)


def test_fork_server_socket_is_private_and_bad_requests_do_not_kill_it(server: Path) -> None:
    path = forkserver.socket_path(server)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    bad = [
        {"op": "exec", "argv": []},
        {"op": "spawn", "argv": "--config x", "log": "/tmp/x.log", "cwd": "/tmp"},
        {"op": "spawn", "argv": [1, 2], "log": "/tmp/x.log", "cwd": "/tmp"},
        {"op": "spawn", "argv": [], "log": "relative.log", "cwd": "/tmp"},
        {"op": "spawn", "argv": [], "log": "/tmp/x.log", "cwd": str(server / "missing")},
        {"op": "spawn", "argv": [], "log": "/tmp/x.log", "cwd": "/tmp", "env": {"A": 1}},
        {"op": "spawn", "argv": [], "log": str(server / "no" / "such.log"), "cwd": "/tmp"},
        [1, 2, 3],
    ]
    for message in bad:
        reply = forkserver.request(path, message)  # type: ignore[arg-type]
        assert reply["ok"] is False and reply["error"], message
    for raw in (b"not json\n", b"\xff\xfe\n", b"{" + b" " * 70_000 + b"\n", b"[" * 60_000 + b"\n",
                json.dumps({"op": "spawn", "argv": [], "log": "/tmp/x\u0000y",
                            "cwd": "/tmp"}).encode() + b"\n",
                json.dumps({"op": "spawn", "argv": [], "log": "/tmp/\ud800",
                            "cwd": "/tmp"}).encode() + b"\n",
                json.dumps({"op": "spawn", "argv": ["\ud800"], "log": "/tmp/x.log",
                            "cwd": "/tmp", "env": {"A=B": "1"}}).encode() + b"\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(raw)
            reply = json.loads(conn.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:  # connects, says nothing
        conn.connect(str(path))
    assert forkserver.ping(server)
    assert forkserver.request(path, {"op": "ping"})["pid"] == forkserver.server_pid(server)


def test_a_fork_server_of_older_code_is_replaced(server: Path) -> None:
    """A testnet resumed after the code changed must not fork nodes from a server that
    imported the old code: `ensure_server` replaces it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    first = forkserver.server_pid(server)
    assert first and forkserver.ensure_server(server, REPO, env) == first  # same code: kept
    (server / forkserver.STAMP_NAME).write_text("0\n")  # as if started before an edit
    second = forkserver.ensure_server(server, REPO, env)
    assert second != first and forkserver.server_pid(server) == second
    assert not process_alive(first)


def test_fork_server_child_runs_the_daemon_main_and_is_reaped(server: Path) -> None:
    log = server / "child.log"
    pid = forkserver.spawn(server, ["--datadir", str(server / "d"), "--print-config"], log,
                           server, {"PATH": os.environ.get("PATH", "")})
    wait_for(lambda: not process_alive(pid), 30, "the child to exit and be reaped")
    config = json.loads(log.read_text())
    assert config["datadir"] == str(server / "d")
    # A configuration error reaches the child's log with the daemon's usage exit, and the
    # server carries on.
    bad = forkserver.spawn(server, ["--no-such-option"], log, server, {})
    wait_for(lambda: not process_alive(bad), 30, "the failing child to exit")
    assert "no-such-option" in log.read_text()
    assert forkserver.ping(server)


# --------------------------------------------------------------------------- end to end


def powlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def forked_testnet(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "net"
    try:
        yield directory
    finally:
        powlab("testnet", "down", "--dir", str(directory), "--purge")
        forkserver.stop_server(directory)


def _plain_node_rss_kb(tmp_path: Path) -> int:
    node = NodeProcess(tmp_path / "plain").start()
    try:
        assert node.pid is not None
        text = Path(f"/proc/{node.pid}/status").read_text()
        return int(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("VmRSS:")))
    finally:
        node.stop()


@pytest.mark.slow
def test_forked_testnet_on_a_random_graph(forked_testnet: Path, tmp_path: Path) -> None:
    directory = forked_testnet
    out = ok(powlab("testnet", "up", "--dir", str(directory), "--nodes", "12",
                    "--topology", "random", "--degree", "4", "--seed", str(SEED % 1000),
                    "--launcher", "fork", "--subnet", subnets.subnet(subnets.SCALE),
                    "--no-hints"))
    assert "all 12 nodes at" in out, out
    manifest = load_manifest(directory)
    assert manifest.launcher == "fork" and manifest.topology == "random"
    server = forkserver.server_pid(directory)
    assert server is not None
    adj = neighbours(manifest)
    assert all(adj[e.name] for e in manifest.nodes)
    for entry in manifest.nodes:
        assert entry.pid is not None and process_alive(entry.pid, entry.config)
        # Forked, yet shown (and recognised) as the daemon it runs.
        cmdline = Path(f"/proc/{entry.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:5] == [b"-m", b"node", b"--config", entry.config.encode()]
        assert process_group(entry.pid)[0:1] and os.getpgid(entry.pid) == entry.pid
        assert call(entry, "getconnectioncount") >= 1

    # Unshared memory of each non-mining node, below what one plain node holds in all.
    plain_rss = _plain_node_rss_kb(tmp_path)
    for entry in manifest.nodes:
        if not entry.is_miner:
            uss, _ = group_memory_kb(entry.pid or 0)
            assert 0 < uss < plain_rss, (entry.name, uss, plain_rss)

    # A payment mined on n1 reaches every node.
    n1, n12 = manifest.node("n1"), manifest.node("n12")
    call(n1, "sendtoaddress", call(n12, "getnewaddress"), 100000)
    mined = call(n1, "generatetoaddress", 1, call(n1, "getnewaddress"))[0]
    wait_for(lambda: all(call(e, "getblockheader", mined) for e in manifest.nodes), 60,
             "the block on every node", ignore=(Exception,))

    # Restart one node by pid, as `down`/`up` and scenarios do.
    n5 = manifest.node("n5")
    old = n5.pid
    os.kill(old or 0, signal.SIGTERM)
    wait_for(lambda: not process_alive(old, n5.config), 30, "n5 to stop")
    out = ok(powlab("testnet", "up", "--dir", str(directory), "--no-hints"))
    manifest = load_manifest(directory)
    n5 = manifest.node("n5")
    assert n5.pid != old and process_alive(n5.pid, n5.config)
    wait_converged(manifest.nodes, 60)

    # The fork server dies: no node goes with it, and `down` still stops everything.
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: forkserver.server_pid(directory) is None, 30, "the fork server to die")
    assert all(process_alive(e.pid, e.config) for e in manifest.nodes)
    assert call(n12, "getblockcount") >= 1
    # …and the next `up` that has a node to start brings a new server.
    n7 = manifest.node("n7")
    os.kill(n7.pid or 0, signal.SIGTERM)
    wait_for(lambda: not process_alive(n7.pid, n7.config), 30, "n7 to stop")
    ok(powlab("testnet", "up", "--dir", str(directory), "--no-hints"))
    new_server = forkserver.server_pid(directory)
    assert new_server is not None and new_server != server
    manifest = load_manifest(directory)
    n7 = manifest.node("n7")
    assert process_alive(n7.pid, n7.config)
    assert Path(f"/proc/{n7.pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
        new_server)  # forked by the new server
    pids = [e.pid or 0 for e in manifest.nodes]
    ok(powlab("testnet", "down", "--dir", str(directory)))
    assert not any(process_alive(pid) or process_group(pid) for pid in pids)
    assert forkserver.server_pid(directory) is None


@pytest.mark.slow
def test_a_large_testnet_is_funded_before_the_rest_start(forked_testnet: Path) -> None:
    """Beyond FUND_ALL_LIMIT nodes `up` starts the funded nodes first, funds them while the
    others are down, then starts the rest, which catch up in bulk: every node ends on the
    funded chain, the funded wallets hold matured coins, the others none."""
    from lab.testnet.control import FUND_ALL_LIMIT

    count = FUND_ALL_LIMIT + 10
    out = ok(powlab("testnet", "up", "--dir", str(forked_testnet), "--nodes", str(count),
                    "--topology", "random", "--seed", str(SEED % 1000),
                    "--subnet", subnets.subnet(subnets.SCALE), "--no-hints"))
    manifest = load_manifest(forked_testnet)
    funded = funded_nodes(manifest)
    assert f"the {len(funded)} nodes up so far at" in out, out
    assert f"all {count} nodes at" in out, out
    assert out.index("starting the funded nodes") < out.index("starting the others"), out
    tip = wait_converged(manifest.nodes, 120)
    assert call(manifest.nodes[-1], "getblockheader", tip)["height"] >= 100
    for entry in funded:
        assert call(entry, "getbalance") > 0, entry.name
    for entry in manifest.nodes[len(funded) + 5: len(funded) + 10]:
        if entry not in funded:
            assert call(entry, "getbalance") == 0, entry.name
