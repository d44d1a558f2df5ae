"""The daemon end to end: real `powlab node` processes, RPC over HTTP with the cookie."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.client import RPCAuthError, rpc_call_sync
from lab.testnet.processes import NodeProcess
from tests.daemon_harness import REPO, wait_for

pytestmark = pytest.mark.slow

MATURITY = 100


@pytest.fixture
def node(tmp_path: Path):
    n = NodeProcess(tmp_path / "n1").start()
    yield n
    n.ensure_dead()


def fund(n: NodeProcess, blocks: int = MATURITY + 20) -> str:
    address = n.rpc("getnewaddress")
    n.rpc("generatetoaddress", blocks, address)
    return address


def powlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def test_mine_send_and_confirm_to_final(node: NodeProcess) -> None:
    info = node.rpc("getblockchaininfo")
    assert info["chain"] == "regtest" and info["blocks"] == 0
    assert info["finality_depth"] == 6
    cookie = node.datadir / ".cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600

    fund(node)
    assert node.rpc("getblockcount") == MATURITY + 20
    # 20 mature coinbases of 50 coins each (the later 100 are still immature).
    assert node.rpc("getbalance") == 21 * 50 * 10**8

    payee = node.rpc("getnewaddress")
    txid = node.rpc("sendtoaddress", payee, 12_345)
    assert node.rpc("getrawmempool") == [txid]
    status = node.rpc("gettransaction", txid)
    assert status["status"] == "mempool" and status["confirmations"] == 0

    miner = node.rpc("getnewaddress")
    seen = []
    for _ in range(6):
        node.rpc("generatetoaddress", 1, miner)
        seen.append(node.rpc("gettransaction", txid)["confirmations"])
    assert seen == [1, 2, 3, 4, 5, 6]
    final = node.rpc("gettransaction", txid)
    assert final["status"] == "final" and final["blockheight"] == MATURITY + 21
    assert node.rpc("getrawmempool") == []
    assert node.stop() == 0


def test_restart_resumes_tip_wallet_and_mempool(node: NodeProcess) -> None:
    fund(node)
    payee = node.rpc("getnewaddress")
    txid = node.rpc("sendtoaddress", payee, 5_000)
    tip = node.rpc("getbestblockhash")
    balance = node.rpc("getbalance", 0)
    assert node.stop() == 0
    node.start()
    assert node.rpc("getbestblockhash") == tip
    assert node.rpc("getrawmempool") == [txid]
    assert node.rpc("getbalance", 0) == balance
    assert node.rpc("validateaddress", payee)["ismine"] is True


def test_second_node_on_same_datadir_is_refused(node: NodeProcess) -> None:
    second = NodeProcess(node.datadir)
    second.start(wait=False)
    assert second.proc is not None
    code = second.proc.wait(60)
    assert code != 0
    assert "in use by another powlab node" in second.log_path.read_text()
    assert node.rpc("getblockcount") == 0


def test_sigkill_while_mining_then_restart(tmp_path: Path) -> None:
    rng = random.Random(1234)
    n = NodeProcess(tmp_path / "n1", args=["--mine", "--hashrate", "40", "--miner-processes", "1"])
    try:
        heights = []
        for _ in range(3):
            n.start()
            start = n.rpc("getblockcount")
            wait_for(lambda s=start: n.rpc("getblockcount") >= s + 3, 60, "blocks mined")
            time.sleep(rng.uniform(0.0, 0.5))  # kill at a random point in the mining flow
            n.kill()
            n.start()
            # One call for both: the node keeps mining between two calls.
            chain = n.rpc("getblockchaininfo")
            height, tip = chain["blocks"], chain["bestblockhash"]
            assert height >= start + 3
            # The chain is consistent: every block links to its parent and the tip matches.
            assert n.rpc("getblockhash", height) == tip
            header = n.rpc("getblockheader", tip)
            assert header["height"] == height
            info = n.rpc("getmininginfo")
            assert info["mining"] is True
            wait_for(lambda h=height: n.rpc("getblockcount") > h, 60, "mining again")
            heights.append(height)
            n.kill()
        assert heights == sorted(heights)
    finally:
        n.ensure_dead()


def test_bad_rpc_inputs_get_errors_and_node_keeps_serving(node: NodeProcess) -> None:
    assert "Method not found" in node.rpc_error("nosuchmethod").message
    assert node.rpc_error("getblockhash").code == -32602
    assert node.rpc_error("getblockhash", "one").code == -32602
    assert node.rpc_error("getblockhash", True).code == -32602
    assert node.rpc_error("getblockhash", 10**6).code == -8
    assert node.rpc_error("getblock", "zz").code == -8
    assert node.rpc_error("getblock", "00" * 32).code == -5
    assert node.rpc_error("sendrawtransaction", "not hex").code == -22
    assert node.rpc_error("sendrawtransaction", "c0ffee").code == -22
    assert node.rpc_error("submitblock", "00").code == -22
    assert "Invalid address" in node.rpc_error("sendtoaddress", "tpow1abc", 5).message
    assert node.rpc_error("generatetoaddress", 1, "rpow1qqqq").code == -5
    assert node.rpc_error("sendtoaddress", node.rpc("getnewaddress"), 10).code == -6

    def raw(body: bytes, auth: bool = True) -> tuple[int, bytes]:
        request = urllib.request.Request(node.url, data=body, method="POST")
        if auth:
            import base64

            assert node.auth is not None
            token = base64.b64encode(f"{node.auth[0]}:{node.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    status, body = raw(b"{not json")
    assert status == 200 and json.loads(body)["error"]["code"] == -32700
    status, body = raw(b"[]")
    assert json.loads(body)["error"]["code"] == -32600
    status, body = raw(b"x" * 2_000_000)
    assert status == 413
    batch = json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "getblockcount"},
        {"jsonrpc": "2.0", "id": 2, "method": "nosuch"},
    ]).encode()
    status, body = raw(batch)
    replies = {r["id"]: r for r in json.loads(body)}
    assert replies[1]["result"] == 0 and replies[2]["error"]["code"] == -32601
    status, _ = raw(b'{"jsonrpc":"2.0","id":1,"method":"stop"}', auth=False)
    assert status == 401
    with pytest.raises(RPCAuthError):
        rpc_call_sync(node.url, "stop", [], ("__cookie__", "wrong"))
    # Still alive and serving after all of that (and the unauthenticated `stop` did not run).
    assert node.rpc("getblockcount") == 0
    assert node.proc is not None and node.proc.poll() is None


def test_sigterm_stops_cleanly(node: NodeProcess) -> None:
    fund(node, 3)
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 20
    assert not (node.datadir / ".cookie").exists()


def test_watch_final_and_conflicted(node: NodeProcess) -> None:
    fund(node)
    payee = node.rpc("getnewaddress")
    miner = node.rpc("getnewaddress")
    endpoint = ["--datadir", str(node.datadir)]

    txid = node.rpc("sendtoaddress", payee, 7_000)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "lab", "watch", txid, *endpoint, "--interval", "0.1",
         "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    node.rpc("generatetoaddress", 6, miner)
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out
    assert "final" in out

    # A payment confirmed once, then reorganised out by a conflicting spend of the same coin.
    coin = next(u for u in node.rpc("listunspent") if u["spendable"] and u["coinbase"])
    pay = node.rpc("createrawtransaction", [{"txid": coin["txid"], "vout": coin["vout"]}],
                   {payee: coin["amount"] - 1_000})
    pay = node.rpc("signrawtransactionwithwallet", pay)["hex"]
    steal = node.rpc("createrawtransaction", [{"txid": coin["txid"], "vout": coin["vout"]}],
                     {miner: coin["amount"] - 2_000})
    steal = node.rpc("signrawtransactionwithwallet", steal)["hex"]
    pay_txid = node.rpc("sendrawtransaction", pay)
    rejected = node.rpc_error("sendrawtransaction", steal)
    assert "txn-mempool-conflict" in rejected.message and pay_txid in rejected.message
    block = node.rpc("generatetoaddress", 1, miner)[0]
    assert node.rpc("gettransaction", pay_txid)["confirmations"] == 1

    watcher = subprocess.Popen(
        [sys.executable, "-m", "lab", "watch", pay_txid, *endpoint, "--interval", "0.1",
         "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    node.rpc("invalidateblock", block)
    node.rpc("generateblock", miner, [steal])
    node.rpc("generatetoaddress", 1, miner)
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 2, out
    assert "CONFLICTED" in out
    status = node.rpc("gettransaction", pay_txid)
    assert status["status"] == "conflicted" and status["confirmations"] == -2
    assert len(status["conflicts"]) == 1


def test_cli_rpc_prints_json_and_fails_on_errors(node: NodeProcess) -> None:
    ok = powlab("rpc", "--datadir", str(node.datadir), "getblockchaininfo")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["chain"] == "regtest"
    bad = powlab("rpc", "--datadir", str(node.datadir), "getblockhash", "99")
    assert bad.returncode != 0 and "out of range" in bad.stderr
    address = powlab("wallet", "new-address", "--datadir", str(node.datadir))
    assert address.stdout.startswith("rpow1")


def test_config_error_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("hashrate = 'fast'\n")
    result = powlab("node", "--config", str(config), "--datadir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "hashrate" in result.stderr


def test_events_stream_reports_blocks(node: NodeProcess) -> None:
    import base64

    assert node.auth is not None
    token = base64.b64encode(f"{node.auth[0]}:{node.auth[1]}".encode()).decode()
    request = urllib.request.Request(node.url + "events?types=block_connected")
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as stream:
        node.rpc("generatetoaddress", 2, node.rpc("getnewaddress"))
        events = []
        while len(events) < 2:
            line = stream.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["height"] for e in events] == [1, 2]
    assert all(e["type"] == "block_connected" for e in events)


def test_metrics_endpoint(node: NodeProcess) -> None:
    import base64

    fund(node, 2)
    assert node.auth is not None
    token = base64.b64encode(f"{node.auth[0]}:{node.auth[1]}".encode()).decode()
    request = urllib.request.Request(node.url + "metrics")
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        text = resp.read().decode()
    assert "powlab_block_height 2.0" in text
    assert "powlab_blocks_connected_total 2.0" in text


def test_env_overrides(tmp_path: Path) -> None:
    n = NodeProcess(tmp_path / "n1", env={"POWLAB_FINALITY_DEPTH": "3"})
    try:
        n.start()
        assert n.rpc("getblockchaininfo")["finality_depth"] == 3
    finally:
        n.ensure_dead()
    assert os.path.exists(tmp_path / "n1" / "chain.sqlite3")


def _children(pid: int) -> dict[int, str]:
    """Live children of `pid` and their command lines (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if stat_fields[1] == str(pid) and stat_fields[0] not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_miner_prefork_forks_an_idle_worker_that_mines_and_stops(tmp_path: Path) -> None:
    n = NodeProcess(tmp_path / "n1", args=["--miner-prefork", "--miner-processes", "1"],
                    own_session=True)
    try:
        n.start()
        assert n.pid is not None
        # Forked at start-up, before mining: one worker, a copy of the daemon (same command
        # line), not a spawned interpreter, and no multiprocessing resource tracker.
        children = _children(n.pid)
        assert len(children) == 1, children
        (worker, cmdline), = children.items()
        assert "spawn_main" not in cmdline and "resource_tracker" not in cmdline
        assert n.rpc("getmininginfo")["mining"] is False
        n.rpc("setmining", True, 200)
        wait_for(lambda: n.rpc("getblockcount") >= 2, 60, "blocks mined by the forked worker")
        assert _children(n.pid) == children  # the same worker, none spawned
        assert n.stop() == 0
        wait_for(lambda: not _running(worker), 20, "the worker gone")
    finally:
        n.ensure_dead()
