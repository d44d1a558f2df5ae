"""The scenario API and runner without a testnet: fake nodes that record RPC calls, scenario
files written to a temporary directory, and the `powlab scenario` command line."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.client import RPCConnectionError, RPCError
from lab.scenario import Network, Node, ScenarioError, apidoc
from lab.scenario import runner as runner_module
from lab.scenario.engine import NetNode
from lab.scenario.runner import Scenario, execute, load_builtin, load_file
from tests.daemon_harness import REPO

NAMES = ["n1", "n2", "n3", "n4"]
LINE = {"n1": ["n2"], "n2": ["n1", "n3"], "n3": ["n2", "n4"], "n4": ["n3"]}


class FakeNode(Node):
    """A node of a 4-node line that answers the RPCs the API uses and records the rest."""

    def __init__(self, name: str, role: str = "node", mining: bool = False) -> None:
        super().__init__(name, role, None)  # type: ignore[arg-type]
        self.calls: list[tuple[Any, ...]] = []
        self.mining = mining
        self.limit: float | None = 5.0 if mining else None
        self.bans: set[str] = set()
        self.faults: dict[str, dict[str, float]] = {}
        self.down = False

    @property
    def host(self) -> str:
        return f"127.9.9.{NAMES.index(self.name) + 2}"

    def call(self, method: str, *params: Any, timeout: float = 60) -> Any:
        self.calls.append((method, *params))
        if self.down:
            raise RPCConnectionError(f"{self.name} is down")
        if method == "listbanned":
            return [{"address": host, "banned_until": 0} for host in sorted(self.bans)]
        if method == "getmininginfo":
            return {"mining": self.mining, "hashrate_limit": self.limit}
        if method == "setmining":
            self.mining = bool(params[0])
            self.limit = params[1] if len(params) > 1 and params[1] else self.limit
            return None
        if method == "getnetworkinfo":
            return {"node_id": self.name + "id", "p2p": f"{self.host}:18444"}
        if method == "getpeerinfo":
            return [{"node_id": p + "id", "addr": f"127.9.9.{NAMES.index(p) + 2}:18444",
                     "status": "established"} for p in LINE[self.name]]
        if method == "setban":
            (self.bans.add if params[1] == "add" else self.bans.discard)(params[0])
            return None
        if method == "setlinkfault":
            if params[0]:
                self.faults[params[1]] = params[0]
            else:
                self.faults.pop(params[1], None)
            return None
        if method == "getblockheader":
            return {"bits": "207fffff"}
        if method == "getbestblockhash":
            return "00" * 32
        if method == "getblockcount":
            return 100
        if method == "getblockchaininfo":
            return {"bestblockhash": "00" * 32, "blocks": 100, "finality_conflicts": []}
        if method == "addnode":
            raise RPCError(-23, "Node already added")
        return None


def fake_network(**args: Any) -> tuple[Network, dict[str, FakeNode]]:
    nodes = {"n1": FakeNode("n1", "miner", True), "n2": FakeNode("n2"),
             "n3": FakeNode("n3", "miner", True), "n4": FakeNode("n4")}
    namespace = argparse.Namespace(attacker=None, victim=None, honest=None, **args)
    return Network(list(nodes.values()), namespace, seed=7), nodes


def test_a_node_takes_any_rpc_as_a_method() -> None:
    node = FakeNode("n1")
    assert node.getblockchaininfo()["blocks"] == 100
    node.getnewaddress()
    node.sendtoaddress("addr", 5)
    assert node.calls[-1] == ("sendtoaddress", "addr", 5)
    with pytest.raises(AttributeError):
        node._private  # noqa: B018 - private names are not RPCs


def test_roles_default_to_scripts_runs_line() -> None:
    net, _ = fake_network()
    assert (net.attacker.name, net.victim.name, [n.name for n in net.honest]) == \
        ("n3", "n4", ["n1"])
    assert net.node("n2") is net.nodes["n2"]
    with pytest.raises(ScenarioError, match="no node 'n9'"):
        net.node("n9")


def test_set_hashrates_splits_the_total_and_stops_the_rest() -> None:
    net, nodes = fake_network()
    net.set_hashrates({"n1": 0.75, "n2": 0.25}, block_interval=2.0)
    total = net.hashes_per_block() / 2.0
    assert nodes["n1"].mining and nodes["n1"].limit == pytest.approx(0.75 * total)
    assert nodes["n2"].mining and nodes["n2"].limit == pytest.approx(0.25 * total)
    assert not nodes["n3"].mining and not nodes["n4"].mining
    with pytest.raises(ScenarioError):
        net.set_hashrates({"n1": -1})


def test_link_faults_go_on_both_ends_and_are_lifted_at_the_end() -> None:
    net, nodes = fake_network()
    net.switches.save()
    net.link_fault("n2", "n3", delay=0.25, loss=0.1)
    assert nodes["n2"].faults == {nodes["n3"].host + ":18444": {"delay_ms": 250.0,
                                                                "loss": 0.1}}
    assert nodes["n3"].faults == {nodes["n2"].host + ":18444": {"delay_ms": 250.0,
                                                                "loss": 0.1}}
    with pytest.raises(ScenarioError, match="no link between n1 and n4"):
        net.link_fault("n1", "n4", delay=1)
    net.restore()
    assert not any(n.faults for n in nodes.values())


def test_partition_bans_across_groups_and_heal_lifts_them() -> None:
    net, nodes = fake_network()
    net.partition(["n1", "n2"], ["n3", "n4"])
    assert nodes["n2"].bans == {nodes["n3"].host, nodes["n4"].host}
    assert nodes["n4"].bans == {nodes["n1"].host, nodes["n2"].host}
    net.heal()
    assert not any(n.bans for n in nodes.values())
    with pytest.raises(ScenarioError, match="missing: n4"):
        net.partition(["n1", "n2"], ["n3"])
    with pytest.raises(ScenarioError, match="more than one group"):
        net.partition(["n1", "n2"], ["n2", "n3", "n4"])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_with_fakes(monkeypatch: pytest.MonkeyPatch, scenario: Scenario,
                   plot_to: str | None = None, record_dir: Path | None = None,
                   **args: Any) -> tuple[dict[str, Any], dict[str, FakeNode]]:
    nodes: dict[str, FakeNode] = {}

    def fake_load(*_: Any) -> list[NetNode]:
        _, made = fake_network()
        nodes.update(made)
        return list(made.values())

    monkeypatch.setattr(runner_module, "load_nodes", fake_load)
    # A directory of the test's own: the runner records the run there (runs/*.jsonl).
    namespace = argparse.Namespace(dir=str(record_dir or Path("/nonexistent/powlab-test")),
                                   docker=False, rpc=None, attacker=None,
                                   victim=None, honest=None, seed=3, json=True, quiet=True,
                                   plot=plot_to, **args)
    return execute(scenario, namespace), nodes


def test_a_scenario_that_raises_leaves_the_network_as_it_found_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "boom.py", '''"""Breaks half-way."""
def run(net):
    net.partition(["n1", "n2"], ["n3", "n4"])
    net.link_fault("n1", "n2", delay=0.3)
    net.stop_mining()
    net.timeline.mark("*", "about to fail")
    raise RuntimeError("boom")
''')
    data, nodes = run_with_fakes(monkeypatch, load_file(path))
    assert data["error"] == "RuntimeError: boom" and data["success"] is False
    assert "boom.py" in data["traceback"]
    events = [e["event"] for e in data["timeline"]]
    assert events.index("about to fail") < events.index("error")
    assert not any(n.bans or n.faults for n in nodes.values())
    assert nodes["n1"].mining and nodes["n3"].mining  # the miners mine again
    assert not nodes["n2"].mining and not nodes["n4"].mining


def test_the_document_has_the_attack_keys_and_the_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "fig.py", '''"""Reports figures."""
def run(net):
    net.report(verdict="fig: SUCCESS — it worked", success=True, trials=5, rate=0.4,
               first=net.rng.random())
''')
    data, _ = run_with_fakes(monkeypatch, load_file(path))
    for key in ("attack", "scenario", "seed", "success", "reorg_depth",
                "victim_confirmations_seen", "detected", "verdict", "roles", "params",
                "timeline", "samples"):
        assert key in data, key
    assert data["trials"] == 5 and data["seed"] == 3 and data["success"] is True
    assert data["timeline"][0]["event"] == "start" and data["timeline"][0]["seed"] == 3
    again, _ = run_with_fakes(monkeypatch, load_file(path))
    assert again["first"] == data["first"]  # the same seed, the same draws
    json.dumps(data)


def test_a_run_without_a_report_is_an_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "silent.py", '"""Says nothing."""\ndef run(net):\n    pass\n')
    data, _ = run_with_fakes(monkeypatch, load_file(path))
    assert "without net.report" in data["error"]


@pytest.mark.parametrize(("text", "message"), [
    ("x = 1\n", "defines no run"),
    ("def run(net:\n", "failed to load"),
    ("import not_a_module_anywhere\ndef run(net): pass\n", "failed to load"),
])
def test_bad_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_file(write(tmp_path, "bad.py", text))
    with pytest.raises(ScenarioError, match="no scenario file"):
        load_file(tmp_path / "missing.py")


def test_two_files_with_one_name_stay_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = load_file(write(tmp_path / "a", "same.py", "WHO = 'a'\ndef run(net): pass\n"))
    two = load_file(write(tmp_path / "b", "same.py", "WHO = 'b'\ndef run(net): pass\n"))
    assert (one.module.WHO, two.module.WHO) == ("a", "b")


def powlab(*args: str, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd or REPO,
                          env={**os.environ, "PYTHONPATH": REPO, **(env or {})})


def test_new_writes_a_template_that_loads_and_parses(tmp_path: Path) -> None:
    result = powlab("scenario", "new", "myexp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scenario = load_file(tmp_path / "myexp.py")
    assert scenario.description.startswith("myexp:")
    assert scenario.parser("x").parse_args(["--blocks", "5"]).blocks == 5
    again = powlab("scenario", "new", "myexp", cwd=tmp_path)
    assert again.returncode != 0 and "exists" in again.stderr
    bad = powlab("scenario", "new", "no-dashes", cwd=tmp_path)
    assert bad.returncode != 0 and "identifier" in bad.stderr


def test_list_reads_docstrings_without_running_files(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write(tmp_path, "sidefx.py", f'"""Has a side effect."""\nopen({str(marker)!r}, "w")\n'
                                 "def run(net): pass\n")
    other = tmp_path / "more"
    other.mkdir()
    write(other, "second.py", '"""From the environment."""\ndef run(net): pass\n')
    result = powlab("scenario", "list", "--path", str(tmp_path),
                    env={"POWLAB_SCENARIO_PATH": str(other)})
    assert result.returncode == 0, result.stderr
    assert "sidefx.py" in result.stdout and "Has a side effect." in result.stdout
    assert "From the environment." in result.stdout
    for name in runner_module.BUILTINS:
        assert f"  {name} " in result.stdout
    assert not marker.exists()


def test_the_files_own_arguments_follow_the_double_dash(tmp_path: Path) -> None:
    path = write(tmp_path, "args.py", '''"""Takes --trials."""
def add_arguments(parser):
    parser.add_argument("--trials", type=int, default=1, help="how many TRIALS-HELP")
def run(net): pass
''')
    # Parsing happens before any node is reached: the URL below answers nothing.
    result = powlab("scenario", "run", str(path), "--rpc", "n1=http://127.0.0.1:9", "--",
                    "--help")
    assert result.returncode == 0 and "TRIALS-HELP" in result.stdout, result.stderr
    wrong = powlab("scenario", "run", str(path), "--rpc", "n1=http://127.0.0.1:9", "--",
                   "--nope")
    assert wrong.returncode != 0 and "--nope" in wrong.stderr
    unreachable = powlab("scenario", "run", str(path), "--rpc", "n1=http://127.0.0.1:9")
    assert unreachable.returncode != 0 and "Traceback" not in unreachable.stderr


@pytest.mark.parametrize("text", ["n1", "n1=ftp://x", "=http://h:1", "n1=http://"])
def test_bad_rpc_endpoints_are_refused(text: str) -> None:
    from lab.scenario.engine import endpoint_node

    with pytest.raises(ScenarioError, match="NAME=http"):
        endpoint_node(text)


def test_rpc_endpoints_carry_credentials_and_roles() -> None:
    from lab.scenario.engine import endpoint_node

    node = endpoint_node("m=http://alice:s3cret@127.0.0.5:18443,merchant")
    assert (node.name, node.role, node.endpoint.url, node.endpoint.auth) == \
        ("m", "merchant", "http://127.0.0.5:18443", ("alice", "s3cret"))


def lab_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == "lab"}


def test_built_in_attacks_and_examples_use_the_public_api_only() -> None:
    attack_dir = Path(REPO) / "lab" / "attack"
    files = [attack_dir / f"{name}.py" for name in runner_module.BUILTINS]
    files += sorted((Path(REPO) / "examples" / "scenarios").glob("*.py"))
    assert len(files) > len(runner_module.BUILTINS)
    for file in files:
        private = {m for m in lab_imports(file)
                   if m != "lab.scenario" and not m.startswith("lab.attack")}
        assert not private, f"{file.name} imports {private}"
    for name in runner_module.BUILTINS:
        example = Path(REPO) / "examples" / "scenarios" / f"{name}.py"
        assert load_file(example).module.run is load_builtin(name).module.run


def test_the_api_reference_matches_the_docstrings() -> None:
    text = apidoc.DOC.read_text()
    assert apidoc.current(text) == apidoc.reference(), (
        "docs/scenarios.md's API reference is stale: run "
        "`python -m lab.scenario.apidoc --write`")
    assert "(undocumented)" not in apidoc.reference()


def test_a_file_may_draw_its_own_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    path = write(tmp_path, "drawn.py", '''"""Draws its own figure."""
def run(net):
    net.report(verdict="drawn: SUCCESS", success=True, rates=[0.2, 0.6])

def build_figure(data):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.bar(["a", "b"], data["rates"])
    ax.set_title("OWN-FIGURE")
    return fig
''')
    png = tmp_path / "drawn.png"
    data, _ = run_with_fakes(monkeypatch, load_file(path), plot_to=str(png))
    assert data["plot"] == str(png) and png.stat().st_size > 1000


def test_repeat_reports_a_rate_with_its_interval(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "coin.py", '''"""A seeded coin flip."""
def run(net):
    heads = net.rng.random() < 0.5
    net.report(verdict=f"coin: {'SUCCESS' if heads else 'FAILED'}", success=heads)
''')
    monkeypatch.setattr(runner_module, "load_nodes",
                        lambda *_: list(fake_network()[1].values()))
    args = argparse.Namespace(dir=str(tmp_path), docker=False, rpc=None, attacker=None,
                              victim=None, honest=None, seed=10, json=True, quiet=False, plot=None,
                              repeat=8)
    assert runner_module.run_and_report(load_file(path), args, "scenario") == 0
    data = json.loads(capsys.readouterr().out)
    seeds = [r["seed"] for r in data["runs"]]
    assert seeds == list(range(10, 18)) and data["trials"] == 8
    assert data["successes"] == sum(r["success"] for r in data["runs"])
    lo, hi = data["ci95"]
    assert lo <= data["rate"] <= hi and "timeline" not in data["runs"][0]
    with pytest.raises(ScenarioError, match="--plot draws one run"):
        runner_module.run_and_report(load_file(path), argparse.Namespace(
            **{**vars(args), "plot": "x.png"}), "scenario")


def test_each_run_is_recorded_live_for_the_dashboard(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.scenario.runlog import KEEP_RUNS, run_files

    path = write(tmp_path, "rec.py", '''"""Recorded."""
def run(net):
    net.timeline.mark("n1", "halfway", note="x")
    net.report(verdict="rec: SUCCESS", success=True)
''')
    data, _ = run_with_fakes(monkeypatch, load_file(path), record_dir=tmp_path)
    [record] = run_files(tmp_path)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[0]["type"] == "start" and lines[0]["scenario"] == "rec"
    assert lines[0]["roles"] == {"attacker": "n3", "victim": "n4", "honest": ["n1"]}
    events = [x for x in lines if x["type"] == "event"]
    assert [e["event"] for e in events] == [e["event"] for e in data["timeline"]]
    assert lines[-1] == {"type": "end", "verdict": "rec: SUCCESS", "success": True}
    for _ in range(KEEP_RUNS + 3):
        run_with_fakes(monkeypatch, load_file(path), record_dir=tmp_path)
    assert len(run_files(tmp_path)) == KEEP_RUNS  # bounded


def test_a_journal_undoes_what_it_lists_and_stays_while_a_node_is_down(tmp_path: Path) -> None:
    from lab.scenario.journal import Journal, orphans, undo

    path = tmp_path / "restore-999999999.json"  # no such process
    journal = Journal(path)
    journal.mining({"n1": (True, None), "n2": (False, 0.5)})
    journal.record("bans", "n1", "127.9.9.4")
    journal.record("bans", "n1", "127.9.9.4")  # once is enough
    journal.record("faults", "n2", "127.9.9.4:18444")
    journal.record("links", "n1", "id@127.9.9.5:18444")
    journal.record("offline", "n2")
    assert orphans(tmp_path) == [path]
    calls: list[tuple[str, str, tuple[Any, ...]]] = []
    up = {"n1"}

    def call(node: str, method: str, params: tuple[Any, ...]) -> bool:
        calls.append((node, method, params))
        return node in up

    undo(path, call)
    assert ("n1", "setban", ("127.9.9.4", "remove")) in calls
    assert ("n1", "setmining", (True, -1)) in calls and ("n2", "setmining", (False, 0.5)) in calls
    assert ("n2", "setnetworkactive", (True,)) in calls
    assert path.exists()  # n2 did not answer: the next run tries again
    up.add("n2")
    assert len(undo(path, call)) == 6 and not path.exists()
    (tmp_path / "restore-999999998.json").write_text("{not json")
    assert undo(tmp_path / "restore-999999998.json", call) == [
        "restore-999999998.json: unreadable, removed"]
    (tmp_path / f"restore-{os.getpid()}.json").write_text("{}")
    assert orphans(tmp_path) == []  # this process is alive: not an orphan


def test_dataclasses_undo_hooks_and_reserved_event_fields(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "dc.py", '''"""A dataclass, postponed annotations, an undo hook."""
from __future__ import annotations
from dataclasses import dataclass

@dataclass
class Plan:
    windows: int

def run(net):
    net.on_restore(lambda: net.nodes["n2"].setmocktime(0))
    net.nodes["n2"].setmocktime(1_000)
    try:
        net.timeline.mark("n1", "probe", node="n2")
    except ValueError as exc:
        net.timeline.mark("n1", "refused", why=str(exc))
    raise RuntimeError(f"after {Plan(2)}")
''')
    data, nodes = run_with_fakes(monkeypatch, load_file(path))
    assert data["error"] == "RuntimeError: after Plan(windows=2)"
    assert ("setmocktime", 0) in nodes["n2"].calls
    [refused] = [e for e in data["timeline"] if e["event"] == "refused"]
    assert "own field" in refused["why"]


def test_stop_mining_stops_the_miners_the_scenario_started_too() -> None:
    net, nodes = fake_network()
    net.switches.save()
    net.set_hashrates({"n2": 1.0})
    assert nodes["n2"].mining
    net.stop_mining()
    assert not any(n.mining for n in nodes.values())
    net.restore()
    assert [n.mining for n in nodes.values()] == [True, False, True, False]


def test_a_journal_stops_the_extra_nodes_a_killed_run_left(tmp_path: Path) -> None:
    from lab.scenario.journal import Journal, undo

    marker = str(tmp_path / "s1.toml")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    try:
        journal = Journal(tmp_path / "restore-999999997.json")
        journal.record("processes", str(proc.pid), marker)
        journal.record("processes", "999999996", str(tmp_path / "gone.toml"))
        done = undo(tmp_path / "restore-999999997.json", lambda *_: True)
        assert done == [f"extra node s1 (pid {proc.pid}) stopped"]
        assert proc.wait(30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_ban_set_before_the_run_stays_after_it() -> None:
    """The user's own partition (or a discouragement) is not the run's to lift."""
    net, nodes = fake_network()
    nodes["n2"].bans.add(nodes["n4"].host)
    net.partition(["n1", "n2"], ["n3", "n4"])
    assert nodes["n2"].bans == {nodes["n3"].host, nodes["n4"].host}
    net.heal()
    assert nodes["n2"].bans == {nodes["n4"].host}
    assert not nodes["n4"].bans and not nodes["n1"].bans


def test_the_journal_stays_while_a_node_could_not_be_handed_back(tmp_path: Path) -> None:
    from lab.scenario.journal import Journal

    net, nodes = fake_network()
    path = tmp_path / "restore-999999995.json"
    net.switches.journal = Journal(path)
    net.switches.save()
    net.partition(["n1", "n2"], ["n3", "n4"])
    nodes["n3"].down = True
    net.restore()
    assert path.exists() and "not handed back" in [e["event"] for e in net.timeline.events]
    assert json.loads(path.read_text())["bans"]
    assert not nodes["n2"].bans  # the others were handed back all the same
    nodes["n3"].down = False
    net.restore()  # a second restore (the runner's, after staged's) keeps it too
    assert path.exists()
    journal = Journal(tmp_path / "restore-999999994.json")
    journal.record("bans", "n1", "h")
    journal.close()
    journal.record("faults", "n1", "h:1")
    assert journal.state["bans"] == [] and journal.state["faults"] == [["n1", "h:1"]]


def test_one_run_at_a_time_on_a_testnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.scenario.runlog import LOCK_NAME

    path = write(tmp_path, "one.py", '"""One."""\ndef run(net):\n'
                                     '    net.report(verdict="one: SUCCESS", success=True)\n')
    lock = tmp_path / "runs" / LOCK_NAME
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(other.pid))
        with pytest.raises(ScenarioError, match=f"pid {other.pid}"):
            run_with_fakes(monkeypatch, load_file(path), record_dir=tmp_path)
    finally:
        other.kill()
        other.wait()
    lock.write_text("999999993")  # a run that was killed: its lock is taken over
    data, _ = run_with_fakes(monkeypatch, load_file(path), record_dir=tmp_path)
    assert data["success"] and not lock.exists()


def test_a_scenario_that_exits_still_hands_the_network_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "bye.py", '''"""Exits half-way."""
import sys
def run(net):
    net.partition(["n1", "n2"], ["n3", "n4"])
    sys.exit(3)
''')
    made: dict[str, FakeNode] = {}

    def fake_load(*_: Any) -> list[NetNode]:
        made.update(fake_network()[1])
        return list(made.values())

    monkeypatch.setattr(runner_module, "load_nodes", fake_load)
    args = argparse.Namespace(dir=str(tmp_path), docker=False, rpc=None, attacker=None,
                              victim=None, honest=None, seed=1, json=True, quiet=True,
                              plot=None)
    with pytest.raises(SystemExit):
        execute(load_file(path), args)
    assert made and not any(n.bans for n in made.values())
