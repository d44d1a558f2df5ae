"""`powlab testnet dashboard`: the model's bounds (fast), then the server against a real
process testnet started like scripts/run (4-node line, n1 and n3 mining): the API, the
controls, and hostile use of the HTTP surface (tokens, non-loopback binds, garbage, oversized
requests, too many streams). The browser tests are in tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import read_cookie
from lab.dashboard import collector as collector_module
from lab.dashboard import model as model_module
from lab.dashboard.collector import Collector
from lab.dashboard.model import Block, Listener, Model
from lab.dashboard.server import (
    DEFAULT_ATTACKER_SHARE,
    MAX_CURVE_DEPTH,
    MAX_REQUEST_BYTES,
    MAX_SSE_CLIENTS,
    SECURITY_HEADERS,
    STATIC_DIR,
    Dashboard,
    DashboardError,
    parse_bind,
)
from lab.dashboard.sources import Sources
from lab.dashboard.untrusted import dumps
from lab.testnet.control import call
from lab.testnet.manifest import load_manifest
from lab.waiting import wait_until
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet
from tests.dashboard_harness import (
    GENESIS,
    DashboardProcess,
    FakeNode,
    fake_dashboard,
    free_port,
    get_text,
    http,
    scripts_run_testnet,
    strict_json,
)

# --------------------------------------------------------------------------- fast


def chain(model: Model, count: int, start: int = 0, prev: str | None = None,
          tag: str = "a") -> list[str]:
    hashes = []
    for height in range(start, start + count):
        block_hash = hashlib.sha256(f"{tag}{height}".encode()).hexdigest()
        model.add_block(Block(block_hash, prev, height, 1_700_000_000 + height, 1, "n1", "n1"))
        hashes.append(block_hash)
        prev = block_hash
    return hashes


def test_the_tree_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "MAX_BLOCKS", 100)
    monkeypatch.setattr(model_module, "EVICT_TO", 80)
    model = Model()
    chain(model, 250)
    assert len(model.blocks) <= 100
    assert model.lowest_height() > 150  # the lowest heights went first
    assert max(b.height for b in model.blocks.values()) == 249


def test_the_log_is_bounded_and_keeps_the_tips_before_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "MAX_LOG", 10)
    model = Model()
    hashes = chain(model, 30)
    model.set_tip("n1", hashes[0], 0, "start")
    for height, block_hash in enumerate(hashes[1:], start=1):
        model.set_tip("n1", block_hash, height, "block connected")
    assert len(model.log) == 10
    # Playback from log[0] starts from the tip the node had just before it.
    first = model.log[0]
    assert model.base_tips["n1"] == first["prev_tip"]


def test_a_slow_browser_is_dropped_not_waited_for() -> None:
    model = Model()
    slow = Listener(backlog=3)
    model.listeners.add(slow)
    chain(model, 10)
    assert slow.dropped and slow not in model.listeners


def test_attack_runs_mark_withheld_and_private_blocks() -> None:
    model = Model()
    hashes = chain(model, 10)
    model.run_record("r1", {"type": "start", "scenario": "majority", "roles": {}})
    model.run_record("r1", {"type": "event", "t": 1.0, "node": "n3", "event": "block withheld",
                            "hash": hashes[3][:16]})
    model.run_record("r1", {"type": "event", "t": 2.0, "node": "n3",
                            "event": "private branch published", "tip": hashes[9][:16],
                            "branch_length": 3})
    model.run_record("r1", {"type": "end", "verdict": "majority: SUCCESS", "success": True})
    assert model.marks[hashes[3][:16]] == "withheld"
    assert {model.marks[h[:16]] for h in hashes[7:10]} == {"private"}
    assert hashes[6][:16] not in model.marks
    assert model.runs["r1"]["end"]["success"] is True
    assert [e["kind"] for e in model.log] == ["attack"] * 4
    # A run recorded before the dashboard started is shown, not logged as happening now.
    model.run_record("r0", {"type": "start", "scenario": "finney"}, log=False)
    model.run_record("r0", {"type": "end", "verdict": "finney: FAILED"}, log=False)
    assert len(model.log) == 4 and model.runs["r0"]["end"]["verdict"] == "finney: FAILED"


def test_link_faults_of_a_run_are_followed() -> None:
    model = Model()
    model.run_record("r", {"type": "start", "scenario": "x"})
    model.run_record("r", {"type": "event", "node": "n3", "event": "link fault", "peer": "n2",
                           "delay_ms": 200.0, "loss": 0.1, "note": "ignored"})
    assert model.link_faults == {"n2|n3": {"delay_ms": 200.0, "loss": 0.1}}
    assert model.snapshot()["link_faults"] == model.link_faults
    model.run_record("r", {"type": "event", "node": "*", "event": "link faults cleared"})
    assert model.link_faults == {}
    model.run_record("r", {"type": "event", "node": "n1", "event": "link fault", "peer": "n2",
                           "jitter_ms": 5})
    model.run_record("r", {"type": "end", "verdict": "x: done"})
    assert model.link_faults == {}  # a run's faults end with it


def test_binding_off_loopback_needs_a_token() -> None:
    model = Model()
    with pytest.raises(DashboardError, match="needs a token"):
        Dashboard(None, model, "0.0.0.0", 8450)  # type: ignore[arg-type]
    Dashboard(None, model, "0.0.0.0", 8450, token="t")  # type: ignore[arg-type]
    Dashboard(None, model, "127.0.0.1", 8450)  # type: ignore[arg-type]
    for bad in ("8450", "host:", ":80", "127.0.0.1:99999", "127.0.0.1:http"):
        with pytest.raises(DashboardError):
            parse_bind(bad)
    result = run_powlab("testnet", "dashboard", "--endpoint", "n1=http://127.0.0.1:1/",
                        "--bind", f"0.0.0.0:{free_port()}", "--no-open", timeout=60)
    assert result.returncode == 1
    assert "needs a token" in result.stderr


def test_sources_of_a_compose_testnet_and_of_bare_endpoints(tmp_path: Path) -> None:
    from lab.dashboard.sources import _docker_sources, endpoint_sources

    rows = [{"node": "miner1", "role": "miner"}, {"node": "observer", "role": "observer"}]
    endpoints = {"miner1": ("http://127.0.0.1:28443/", ("__cookie__", "a")),
                 "observer": ("http://127.0.0.1:28447/", ("__cookie__", "b"))}
    answers = iter([rows, endpoints])
    sources = _docker_sources(tmp_path, lambda path, args, action: next(answers))
    assert sources.docker and sources.partition() is None
    assert [(n.name, n.role) for n in sources.nodes] == [("miner1", "miner"),
                                                         ("observer", "observer")]
    assert sources.nodes[1].endpoint().url == "http://127.0.0.1:28447/"
    cookie = tmp_path / "cookie"
    cookie.write_text("__cookie__:secret")
    bare = endpoint_sources([f"a=http://127.0.0.1:1#{cookie}", "b=http://127.0.0.1:2/"])
    assert bare.nodes[0].endpoint().auth == ("__cookie__", "secret")
    assert bare.nodes[1].endpoint().url == "http://127.0.0.1:2/" and bare.directory is None
    for bad in ("a", "=http://x/", "a=ftp://x/", "a=127.0.0.1:1"):
        with pytest.raises(ValueError):
            endpoint_sources([bad])


def test_the_page_ships_inside_the_package() -> None:
    names = {p.name for p in STATIC_DIR.iterdir()}
    assert {"index.html", "app.js", "tree.js", "style.css"} <= names
    text = (REPO / "pyproject.toml").read_text()
    assert '"lab"' in text.split("[tool.hatch.build.targets.wheel]")[1].split("\n")[1]


# --------------------------------------------------------------------------- a real testnet


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("dash") / "testnet"
    with scripts_run_testnet(directory, subnets.subnet(subnets.DASHBOARD)) as path:
        yield path


@pytest.fixture(scope="module")
def dash(net: Path) -> Iterator[DashboardProcess]:
    proc = DashboardProcess("--dir", str(net))
    yield proc
    proc.stop()


def state(dash: DashboardProcess) -> dict[str, Any]:
    return dash.json("/api/state")


@pytest.mark.slow
def test_state_shows_every_node_and_their_tips(net: Path, dash: DashboardProcess) -> None:
    snap = state(dash)
    assert [n["name"] for n in snap["nodes"]] == ["n1", "n2", "n3", "n4"]
    assert {n["name"]: n["role"] for n in snap["nodes"]} == {
        "n1": "miner", "n2": "node", "n3": "miner", "n4": "node"}
    assert snap["finality_depth"] == 6
    heights = {b["height"] for b in snap["blocks"]}
    assert 0 in heights and max(heights) >= 108  # the whole funded chain
    tips = wait_until(lambda: {n["name"]: n["tip"] for n in state(dash)["nodes"]
                               if n["tip"]} or None, 30, "tips", first=0.1)
    assert len(tips) == 4


@pytest.mark.slow
def test_a_block_mined_by_rpc_appears_with_its_miner(net: Path,
                                                     dash: DashboardProcess) -> None:
    n2 = load_manifest(net).node("n2")
    [block_hash] = call(n2, "generatetoaddress", 1, call(n2, "getnewaddress"))

    def seen() -> dict[str, Any] | None:
        return next((b for b in state(dash)["blocks"] if b["hash"] == block_hash), None)

    block = wait_until(seen, 30, "the block on the dashboard", first=0.05)
    assert block["miner"] == "n2"
    detail = dash.json(f"/api/block?hash={block_hash}")
    assert detail["block"]["hash"] == block_hash and detail["miner"] == "n2"


@pytest.mark.slow
def test_a_payment_on_every_node(net: Path, dash: DashboardProcess) -> None:
    manifest = load_manifest(net)
    n1, n4 = manifest.node("n1"), manifest.node("n4")
    txid = call(n1, "sendtoaddress", call(n4, "getnewaddress"), 100_000)
    info = dash.json(f"/api/tx?txid={txid}")
    assert [r["node"] for r in info["nodes"]] == ["n1", "n2", "n3", "n4"]
    assert info["nodes"][0]["status"] in ("mempool", "confirmed")
    assert len(info["curve"]) == info["finality_depth"] + 1
    assert info["curve"][0]["risk"] == 1.0 and info["curve"][-1]["risk"] < 0.01


@pytest.mark.slow
def test_controls_mine_and_refuse_bad_requests(net: Path, dash: DashboardProcess) -> None:
    url = dash.base + "api/control"
    js = {"Content-Type": "application/json"}

    def post(body: Any, headers: dict[str, str] = js) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, reply, _ = http(url, data, headers, "POST")
        return status, json.loads(reply or b"{}") if reply.startswith(b"{") else {}

    status, reply = post({"action": "mine", "node": "n4", "blocks": 1})
    assert status == 200 and "n4 mined 1 block" in reply["result"], reply
    assert post({"action": "mine", "node": "n9"})[0] == 400
    assert post({"action": "mine", "node": "n1", "blocks": 10_000})[0] == 400
    assert post({"action": "mine", "node": "n1", "blocks": "1; rm -rf /"})[0] == 400
    assert post({"action": "send", "from": "n1", "to": "n2", "amount": -5})[0] == 400
    assert post({"action": "partition", "groups": [["n1"], ["n1"]]})[0] == 400
    assert post({"action": "partition", "groups": "n1,n2 n3,n4"})[0] == 400
    assert post({"action": "shutdown"})[0] == 400
    assert post([1, 2])[0] == 400
    assert post(b"{not json")[0] == 400
    # A form post from another site: not JSON, or not same-origin.
    assert post({"action": "heal"}, {"Content-Type": "application/x-www-form-urlencoded"})[0] \
        == 415
    assert post({"action": "heal"}, {**js, "Origin": "http://evil.example"})[0] == 403
    big = json.dumps({"action": "heal", "pad": "x" * (MAX_REQUEST_BYTES * 2)}).encode()
    assert post(big)[0] == 413


@pytest.mark.slow
def test_garbage_queries_are_refused(dash: DashboardProcess) -> None:
    for path in ("/api/tx", "/api/tx?txid=zz", "/api/tx?txid=" + "A" * 64,
                 "/api/tx?txid=" + "0" * 65, "/api/block?hash=../../etc/passwd",
                 "/api/block?hash=%00", "/api/tx?txid=" + "x" * 5000):
        status, body, _ = dash.get(path)
        assert status == 400, (path, status, body[:200])
    assert dash.get("/api/block?hash=" + "0" * 64)[0] == 404
    for path in ("/static/../../pyproject.toml", "/static/%2e%2e%2fcli.py", "/static/nope.js",
                 "/static/__init__.py", "/nope"):
        assert dash.get(path)[0] == 404, path
    # A request line far over any limit is refused; the server carries on.
    status = dash.get("/api/state?x=" + "a" * 200_000)[0]
    assert status in (400, 414, 431)
    assert dash.get("/api/state")[0] == 200


@pytest.mark.slow
def test_only_loopback_host_names_are_answered(dash: DashboardProcess) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own host name: refused.
    assert dash.get("/api/state", {"Host": "evil.example"})[0] == 421
    assert dash.get("/api/state", {"Host": f"localhost:{dash.port}"})[0] == 200


@pytest.mark.slow
def test_the_page_never_sees_a_cookie(net: Path, dash: DashboardProcess) -> None:
    secrets = [read_cookie(Path(e.datadir))[1] for e in load_manifest(net).nodes]
    seen = b""
    for path in ("/", "/api/state", "/static/app.js", "/static/tree.js", "/static/index.html"):
        status, body, headers = dash.get(path)
        assert status == 200
        seen += body + json.dumps(headers).encode()
        assert headers.get("Content-Security-Policy", "").startswith("default-src 'self'")
    for secret in secrets:
        assert secret.encode() not in seen
    assert b"__cookie__" not in seen


@pytest.mark.slow
def test_streams_are_bounded(dash: DashboardProcess) -> None:
    sockets = []
    try:
        statuses = []
        for _ in range(MAX_SSE_CLIENTS + 4):
            s = socket.create_connection(("127.0.0.1", dash.port), timeout=10)
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\n\r\n".encode())
            statuses.append(s.recv(64).split(b" ")[1])
            sockets.append(s)
        assert statuses.count(b"200") == MAX_SSE_CLIENTS
        assert statuses.count(b"503") == 4
    finally:
        for s in sockets:
            s.close()

    def accepted_again() -> bool:
        with socket.create_connection(("127.0.0.1", dash.port), timeout=10) as s:
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\n\r\n"
                      .encode())
            return s.recv(64).split(b" ")[1] == b"200"

    wait_until(accepted_again, 30, "the closed streams to be forgotten")


@pytest.mark.slow
def test_any_set_of_rpc_endpoints(net: Path) -> None:
    entries = load_manifest(net).nodes
    specs = [f"{e.name}={e.url}#{Path(e.datadir) / '.cookie'}" for e in entries[:2]]
    proc = DashboardProcess(*[arg for spec in specs for arg in ("--endpoint", spec)])
    try:
        snap = wait_until(lambda: (s := proc.json("/api/state"))["nodes"][1]["tip"] and s, 30,
                          "both nodes followed", first=0.1)
        assert [n["name"] for n in snap["nodes"]] == ["n1", "n2"]
        assert snap["runs"] == [] and snap["partition"] is None
    finally:
        proc.stop()


@pytest.mark.slow
def test_a_token_guards_every_request(net: Path) -> None:
    proc = DashboardProcess("--dir", str(net), "--token", "s3cret-token")
    try:
        assert proc.get("/")[0] == 401
        assert proc.get("/api/state")[0] == 401
        assert proc.get("/api/state?token=wrong")[0] == 401
        assert proc.get("/api/state", {"Authorization": "Bearer wrong"})[0] == 401
        status, _, headers = proc.get("/?token=s3cret-token")
        assert status == 200 and "powlab_dashboard=s3cret-token" in headers.get("Set-Cookie", "")
        assert proc.get("/api/state", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert proc.get("/api/state", {"Cookie": "powlab_dashboard=s3cret-token"})[0] == 200
    finally:
        out = proc.stop()
    assert "?token=s3cret-token" in out  # the printed URL carries it


@pytest.mark.slow
def test_controls_partition_heal_and_send(net: Path, dash: DashboardProcess) -> None:
    def post(body: dict[str, Any]) -> dict[str, Any]:
        status, reply, _ = http(dash.base + "api/control", json.dumps(body).encode(),
                                {"Content-Type": "application/json"}, "POST")
        assert status == 200, reply
        return json.loads(reply)

    try:
        assert "partitioned: n1,n2 | n3,n4" in post(
            {"action": "partition", "groups": [["n1", "n2"], ["n3", "n4"]]})["result"]
        assert load_manifest(net).partition == [["n1", "n2"], ["n3", "n4"]]
        wait_until(lambda: state(dash)["partition"] == [["n1", "n2"], ["n3", "n4"]], 30,
                   "the partition on the dashboard", first=0.1)
    finally:
        post({"action": "heal"})
    assert load_manifest(net).partition is None
    snap = wait_until(lambda: (s := state(dash))["partition"] is None and s, 30, "healed")
    assert [e for e in snap["log"] if e["kind"] == "partition"]
    assert [e for e in snap["log"] if e["kind"] == "heal"]
    result = post({"action": "send", "from": "n1", "to": "n3", "amount": 12_345})["result"]
    txid = result.rsplit(" ", 1)[1]
    assert dash.json(f"/api/tx?txid={txid}")["nodes"][0]["status"] in ("mempool", "confirmed")


@pytest.mark.slow
def test_an_invalid_block_is_marked(net: Path, dash: DashboardProcess) -> None:
    n4 = load_manifest(net).node("n4")
    tip = call(n4, "getbestblockhash")
    call(n4, "setnetworkactive", False)
    try:
        call(n4, "invalidateblock", tip)

        def marked() -> bool:
            block = next((b for b in state(dash)["blocks"] if b["hash"] == tip), None)
            return bool(block and block["invalid"])

        wait_until(marked, 30, "the invalid block marked", first=0.1)
    finally:
        call(n4, "reconsiderblock", tip)
        call(n4, "setnetworkactive", True)


@pytest.mark.slow
def test_scripts_run_starts_the_dashboard_and_prints_its_url(tmp_path: Path) -> None:
    directory = tmp_path / "testnet"
    port = free_port()
    env = {**os.environ, "POWLAB_RUN_DIR": str(directory), "POWLAB_RUN_BLOCK_TIME": "3",
           "POWLAB_RUN_SUBNET": subnets.subnet(subnets.DASHBOARD_RUN),
           "POWLAB_RUN_DASHBOARD": f"127.0.0.1:{port}"}
    try:
        run = subprocess.run([str(REPO / "scripts" / "run")], capture_output=True, text=True,
                             env=env, timeout=900, cwd=REPO)
        assert run.returncode == 0, run.stdout + run.stderr
        url = f"http://127.0.0.1:{port}/"
        assert "See it live in a browser" in run.stdout and f"\n  {url}\n" in run.stdout
        status, body, _ = http(url + "api/state")
        assert status == 200 and len(json.loads(body)["nodes"]) == 4
        again = subprocess.run([str(REPO / "scripts" / "run")], capture_output=True, text=True,
                               env=env, timeout=300, cwd=REPO)
        assert again.returncode == 0 and f"\n  {url}\n" in again.stdout  # left alone
        stop = subprocess.run([str(REPO / "scripts" / "run"), "stop"], capture_output=True,
                              text=True, env=env, timeout=300, cwd=REPO)
        assert stop.returncode == 0 and "dashboard: stopped" in stop.stdout, stop.stdout
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        tear_down_testnet(directory)


# --------------------------------------------------------------------------- hostile input
# A node or a run record is not trusted: whatever it sends, every page keeps loading and
# every follower keeps following. These run against an in-process fake node (aiohttp) and the
# real Collector, Model and Dashboard.

def test_non_finite_numbers_and_wrong_types_from_a_node_never_reach_the_page() -> None:
    async def main() -> None:
        node = FakeNode()
        node.answers["getmininginfo"] = lambda p: {"mining": "yes", "hashrate": float("nan")}
        node.answers["getblockchaininfo"] = lambda p: {"blocks": "<b>x</b>",
                                                       "warnings": ["not", "text"]}
        node.answers["getmempoolinfo"] = lambda p: {"size": float("inf")}
        async with fake_dashboard(node=node) as (_, collector, _dash, url):
            await collector.refresh(collector.sources.nodes[0])
            status, text = await get_text(url + "api/state")
            assert status == 200
            state = strict_json(text)  # what the browser's JSON.parse must accept
            (view,) = state["nodes"]
            assert view["height"] is None and view["hashrate"] is None
            assert view["mining"] is None and view["mempool"] is None
            assert view["warnings"] == ""

    asyncio.run(main())


def test_hostile_run_records_are_skipped_one_by_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.jsonl").write_text(
        '{"type":"start","scenario":"s"}\n'
        '{"type":"event","event":"private branch published","tip":"ab","branch_length":'
        'Infinity}\n'
        + "[" * 100_000 + "\n"
        '{"type":"event","event":"link fault","node":"a","peer":"b","delay_ms":NaN}\n'
        '{"type":"event","event":"x","v":1e999}\n'
        '{"type":"event","event":"private branch published","tip":"ab","branch_length":'
        '1e300}\n'
        '{"type":"event","event":"link fault","node":"a","peer":"b","loss":1' + "0" * 400
        + '}\n'
        '{"type":"end","verdict":"still read"}\n')
    model = Model()
    collector = Collector(Sources([], 6, tmp_path), model)
    collector.read_runs(tmp_path)  # raises nothing
    run = model.runs["a"]
    assert run["end"]["verdict"] == "still read"  # the bad records did not drop the rest
    assert [e["event"] for e in run["events"]] == [
        "private branch published", "link fault"]  # 1e300 and 10^400 are finite: kept...
    assert model.link_faults == {}  # ...but not used as numbers; NaN and 1e999 are refused
    strict_json(dumps(model.snapshot()))
    with (runs / "a.jsonl").open("a") as fh:
        fh.write('{"type":"end","verdict":"later"}\n')
    collector.read_runs(tmp_path)  # the file is still followed
    assert model.runs["a"]["end"]["verdict"] == "later"


def test_a_run_record_line_over_the_limit_is_skipped_not_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector_module, "MAX_RUN_LINE", 100, raising=False)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.jsonl").write_text('{"type":"event","event":"big","x":"' + "a" * 450 + '"}\n'
                                  '{"type":"end","verdict":"after the long line"}\n')
    model = Model()
    collector = Collector(Sources([], 6, tmp_path), model)
    for _ in range(10):  # each look reads at most MAX_RUN_LINE bytes of a file
        collector.read_runs(tmp_path)
    assert model.runs["a"]["end"]["verdict"] == "after the long line"
    assert collector.skipped_run_lines == 1
    assert model.runs["a"]["events"] == []


def test_a_hostile_event_does_not_end_the_node_s_stream() -> None:
    async def main() -> None:
        async with fake_dashboard() as (node, collector, _dash, _url):
            seen = asyncio.Event()
            publish = collector.model.publish

            def watch(message: dict[str, Any]) -> None:
                publish(message)
                if message.get("kind") == "log" and message["entry"]["kind"] == "reorg":
                    seen.set()

            collector.model.publish = watch  # type: ignore[method-assign]
            node.events.put_nowait(b"data: " + b"[" * 100_000 + b"\n\n")
            node.events.put_nowait(b'data: {"type":"reorg","depth":NaN}\n\n')
            node.events.put_nowait(b'data: {"type":"block_connected","hash":7}\n\n')
            node.events.put_nowait(b'data: {"type":"reorg","depth":2,"fork_height":1}\n\n')
            await asyncio.wait_for(seen.wait(), 30)
            reorgs = [e for e in collector.model.log if e["kind"] == "reorg"]
            assert [e["depth"] for e in reorgs] == [2]  # the NaN event was refused

    asyncio.run(main())


def test_a_node_cannot_hang_a_block_at_any_height() -> None:
    high, real, stray, orphan = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)

    async def main() -> None:
        node = FakeNode()
        node.blocks[high] = {"hash": high, "previousblockhash": GENESIS, "height": 10**9,
                             "time": 0, "nTx": 1, "tx": []}
        node.blocks[real] = {"hash": real, "previousblockhash": GENESIS, "height": 1,
                             "time": 0, "nTx": 1, "tx": []}
        # A branch whose root the node will not show, high above everything held.
        node.blocks[stray] = {"hash": stray, "previousblockhash": orphan, "height": 500,
                              "time": 0, "nTx": 1, "tx": []}
        node.blocks[orphan] = {"hash": orphan, "previousblockhash": "5" * 64,
                               "height": float("inf"), "time": 0, "nTx": 1, "tx": []}
        async with fake_dashboard(node=node) as (_, collector, _dash, _url):
            src = collector.sources.nodes[0]
            assert GENESIS in collector.model.blocks
            assert await collector.ensure_block(src, high) is None
            assert await collector.ensure_block(src, stray) is None
            assert await collector.ensure_block(src, real) is not None
            assert sorted(b.height for b in collector.model.blocks.values()) == [0, 1]
            # Nor can it point its tip at such a block.
            node.answers["getchaintips"] = lambda p: [
                {"hash": high, "height": 10**9, "status": "active"}]
            await collector.refresh(src)
            assert collector.model.nodes["evil"].tip == GENESIS

    asyncio.run(main())


NODE_JS = shutil.which("node")


@pytest.mark.skipif(NODE_JS is None, reason="node (JavaScript) is not installed")
def test_the_tree_layout_skips_empty_heights() -> None:
    """layoutTree visits the heights that hold blocks, not every height between them: a gap
    of 10^9 heights (which the server refuses anyway) is laid out at once."""
    script = f"""
import {{ layoutTree, renderTree }} from "{STATIC_DIR / 'tree.js'}";
const G = "0".repeat(64), H = "1".repeat(64);
const blocks = new Map([[G, {{hash: G, prev: null, height: 0, time: 0, txs: 1, seen: 1}}],
  [H, {{hash: H, prev: G, height: 1e9, time: 0, txs: 1, seen: 2}}]]);
const lay = layoutTree(blocks, {{evil: H}}, {{}}, 6);
renderTree(lay, {{}}, ["evil"], new Set());
console.log(JSON.stringify(lay.rows.map((r) => r.h ?? [r.from, r.to])));
"""
    assert NODE_JS is not None
    result = subprocess.run([NODE_JS, "--input-type=module", "-e", script],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [10**9, 0]


def test_a_node_s_numbers_do_not_stall_the_transaction_view() -> None:
    async def main() -> None:
        import aiohttp

        node = FakeNode()
        node.answers["gettransaction"] = lambda p: {
            "status": "confirmed", "finality_depth": 10**6,
            "assumed_attacker_share": float("nan")}
        async with fake_dashboard(node=node) as (_, _collector, _dash, url):
            async with aiohttp.ClientSession() as session, session.get(
                    url + "api/tx?txid=" + "2" * 64,
                    timeout=aiohttp.ClientTimeout(total=20)) as resp:
                assert resp.status == 200
                answer = strict_json(await resp.text())
            assert answer["finality_depth"] == MAX_CURVE_DEPTH
            assert answer["q"] == DEFAULT_ATTACKER_SHARE
            assert len(answer["curve"]) == MAX_CURVE_DEPTH + 1
            node.answers["gettransaction"] = lambda p: {"finality_depth": "6",
                                                        "assumed_attacker_share": 7}
            status, text = await get_text(url + "api/tx?txid=" + "2" * 64)
            answer = strict_json(text)
            assert status == 200 and answer["q"] == DEFAULT_ATTACKER_SHARE
            assert answer["finality_depth"] == 6  # the dashboard's own

    asyncio.run(main())


def test_rpc_credentials_in_an_endpoint_url_never_leave_the_dashboard(
        capfd: pytest.CaptureFixture[str]) -> None:
    from lab.client import NodeEndpoint
    from lab.dashboard.sources import NodeSource, endpoint_sources

    (split,) = endpoint_sources(["n1=http://alice:s3cret@127.0.0.1:1/"]).nodes
    assert split.endpoint() == NodeEndpoint("http://127.0.0.1:1/", ("alice", "s3cret"))
    with pytest.raises(ValueError) as refused:
        endpoint_sources(["=http://alice:s3cret@127.0.0.1:1/"])
    assert "s3cret" not in str(refused.value)

    async def main() -> None:
        node = FakeNode()
        async with fake_dashboard(node=node) as (_, collector, _dash, url):
            # A source whose URL still carries credentials (and no node listens there).
            port = free_port()
            collector.sources.nodes.append(NodeSource(
                "n2", "node", 0.0,
                lambda: NodeEndpoint(f"http://alice:s3cret@127.0.0.1:{port}/", None)))
            collector.model.nodes["n2"] = model_module.NodeView("n2")
            await collector.refresh(collector.sources.nodes[-1])
            assert collector.model.nodes["n2"].error  # the failure is shown...
            collector.model.publish_nodes()
            for path in ("api/state", "api/tx?txid=" + "2" * 64):
                status, text = await get_text(url + path)
                assert status == 200 and "s3cret" not in text and "alice" not in text, text

    asyncio.run(main())
    assert "s3cret" not in capfd.readouterr().err  # ...but not the password


async def until(predicate: Any, timeout: float, what: str) -> None:
    """Polls `predicate` on the running loop (lab.waiting.wait_until, for async tests)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # the poll's period


def test_a_page_that_stops_reading_is_cut_off_and_frees_its_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.dashboard import server as server_module

    monkeypatch.setattr(server_module, "SSE_WRITE_TIMEOUT", 1.0, raising=False)

    async def main() -> None:
        async with fake_dashboard() as (_, collector, dashboard, _url):
            model = collector.model
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", dashboard.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{dashboard.port}"
                         "\r\n\r\n".encode())
            await until(lambda: len(model.listeners) == 1, 10, "the stream to open")
            # The page reads nothing from now on; the dashboard keeps publishing.
            writer.transport.pause_reading()
            for k in range(64):
                model.publish({"kind": "log", "entry": {"seq": k, "text": "x" * 100_000}})
            await until(lambda: not model.listeners, 30, "the stuck stream to be cut off")
            writer.transport.resume_reading()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(2**20), 10):
                    pass  # what was sent before the cut, then the end of the stream
            writer.close()

    asyncio.run(main())


def test_a_node_s_transaction_and_block_answers_are_typed_before_the_page_gets_them() -> None:
    evil = "<img src=x onerror=alert(1)>"

    async def main() -> None:
        node = FakeNode()
        node.answers["gettransaction"] = lambda p: {
            "status": ["confirmed"], "confirmations": "5", "blockhash": evil,
            "reversal_risk": "high", "assumed_attacker_share": 0.2,
            "double_spend_alert": "yes", "seen_double_spends": {"a": 1},
            "finality_depth": 6.5, "warnings": 7, "risk_summary": {"x": 1}}
        node.answers["getblock"] = lambda p: {
            "hash": GENESIS, "height": evil, "nTx": "1", "size": [1], "time": 1e300,
            "tx": "not a list", "previousblockhash": evil}
        async with fake_dashboard(node=node) as (_, _collector, _dash, url):
            status, text = await get_text(url + "api/tx?txid=" + "2" * 64)
            assert status == 200 and "<img" not in text
            (row,) = strict_json(text)["nodes"]
            assert row == {"node": "evil", "status": None, "confirmations": None,
                           "blockhash": None, "blockheight": None, "reversal_risk": None,
                           "assumed_attacker_share": 0.2, "risk_summary": None,
                           "double_spend_alert": False, "seen_double_spends": [],
                           "conflicts": [], "finality_depth": None, "warnings": ""}
            status, text = await get_text(url + "api/block?hash=" + GENESIS)
            assert status == 200 and "<img" not in text
            block = strict_json(text)["block"]
            assert block["height"] is None and block["nTx"] is None and block["size"] is None
            assert block["tx"] == [] and block["previousblockhash"] is None

    asyncio.run(main())


def test_the_page_s_policy_forbids_forms_and_base_urls() -> None:
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "form-action 'none'" in policy and "base-uri 'none'" in policy


def test_the_url_file_is_owner_only_from_the_start(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The token is never in a file others may read: not even when a chmod after the write
    would fail (the mode is set on the open file before anything is written)."""
    from lab.dashboard.cli import URL_FILE, _write_url

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError("chmod refused")

    monkeypatch.setattr(Path, "chmod", refuse)

    stale = tmp_path / URL_FILE
    stale.write_text("old\n")
    os.chmod(stale, 0o644)
    old_umask = os.umask(0)  # what a loose umask would give a plain write
    try:
        path = _write_url(tmp_path, "http://127.0.0.1:1/?token=t")
    finally:
        os.umask(old_umask)
    assert path == stale and stale.read_text() == "http://127.0.0.1:1/?token=t\n"
    assert path.stat().st_mode & 0o777 == 0o600
