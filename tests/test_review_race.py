"""Hostile review of the race under replacement policies (issue 18 part 3): values the option
parsers let through (nan, inf) must be refused before any node is touched, and the full-RBF
share draw must round the same way for every share. No nodes: each test takes milliseconds."""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Iterator
from typing import Any

import pytest

from lab.attack import race, racesweep
from lab.attack.replacement import Holdings, pick_share
from lab.scenario import ScenarioError


def race_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    race.add_arguments(p)
    return p.parse_args(list(argv))


def sweep_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    racesweep.add_arguments(p)
    return p.parse_args(list(argv))


# argparse's float() takes these; a nan --wait made the observation loop spin for ever
# (`monotonic() >= nan` is never true) and a nan --delay crashed time.sleep mid-race.
NOT_FINITE = ("nan", "inf", "-inf")


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("option", ["--wait", "--delay", "--victim-latency", "--timeout"])
def test_race_refuses_non_finite_durations(option: str, value: str) -> None:
    with pytest.raises(ScenarioError):
        race.plan_of(race_args(f"{option}={value}"), {})


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("option", ["--wait", "--delay", "--listening-period", "--timeout"])
def test_sweep_refuses_non_finite_durations(option: str, value: str) -> None:
    with pytest.raises(ScenarioError):
        racesweep.check(sweep_args(f"{option}={value}"))


class FakeNet:
    """Just enough of a Network for `race.run` to reach its staging."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.nodes = dict.fromkeys(["n1", "n2", "n3", "n4"])
        self.rng = random.Random(1)
        self.roles = argparse.Namespace(honest=["n1"], attacker="n3", victim="n4")

    @contextlib.contextmanager
    def staged(self) -> Iterator[FakeNet]:
        yield self


@pytest.mark.parametrize("argv", [
    ("--replacement", "full", "--outbid", "--delay", "-1"),
    ("--replacement", "full", "--wait", "-1"),
    ("--full-rbf-nodes", "n1", "--wait", "nan"),
])
def test_bad_race_values_are_refused_before_any_restart(
        argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    staged: list[Any] = []
    monkeypatch.setattr(race, "apply_policies", lambda *a, **k: staged.append(a))
    with pytest.raises(ScenarioError):
        race.run(FakeNet(race_args(*argv)))  # type: ignore[arg-type]
    assert staged == [], "nodes were restarted for a run that its own arguments refuse"


@pytest.mark.parametrize(("share", "nodes", "count"), [
    # F·N exactly halfway: always up (Python's round() sends 0.5 to 0 but 1.5 to 2).
    (0.125, 4, 1), (0.375, 4, 2), (0.625, 4, 3), (0.875, 4, 4), (0.5, 1, 1), (0.25, 2, 1),
    (0.1, 4, 0), (0.9, 4, 4), (0.0, 4, 0), (1.0, 4, 4),
])
def test_full_rbf_share_rounds_half_up(share: float, nodes: int, count: int) -> None:
    net = argparse.Namespace(nodes=dict.fromkeys(f"n{i}" for i in range(1, nodes + 1)),
                             rng=random.Random(3))
    assert len(pick_share(net, share)) == count  # type: ignore[arg-type]


class SweepNet:
    """Just enough of a Network for `racesweep.run`: a rich attacker, a recording report."""

    def __init__(self, *argv: str) -> None:
        self.args = sweep_args(*argv)
        attacker = argparse.Namespace(name="n3", call=lambda method: 10**12)
        self.roles = argparse.Namespace(honest=["n1"], attacker=attacker)
        self.reported: dict[str, Any] = {}

    @contextlib.contextmanager
    def staged(self) -> Iterator[SweepNet]:
        yield self

    def report(self, **fields: Any) -> None:
        self.reported = fields


@pytest.mark.parametrize("failure", [ScenarioError("tx1 never reached n2"), KeyboardInterrupt()])
def test_a_failing_trial_keeps_the_finished_ones_in_the_report(
        failure: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[int] = []

    def one_trial(net: Any, share: float, defences: str, options: Any, first: bool,
                  number: int) -> dict[str, Any]:
        if len(done) == 3:
            raise failure
        done.append(number)
        return {"defences": defences, "share": share, "number": number, "full_rbf": [],
                "tx2_mined": share > 0, "defrauded": share > 0, "warned": False,
                "seconds": 1.0}

    monkeypatch.setattr(racesweep, "one_trial", one_trial)
    net = SweepNet("--trials", "2", "--shares", "0,1", "--defences", "off")
    with pytest.raises(type(failure)):
        racesweep.run(net)  # type: ignore[arg-type]
    cells = net.reported["cells"]
    # Three trials finished (two at share 0, one at share 1); the fourth is not counted.
    assert [(c["share"], c["trials"]) for c in cells] == [(0.0, 2), (1.0, 1)]
    assert cells[1]["tx2_mined"]["n"] == 1 and len(net.reported["trials"]) == 3
    assert "trial 2 of share 1" in net.reported["verdict"] and "not counted" in (
        net.reported["verdict"])


def test_holdings_keep_a_replacement_that_fell_between_two_looks() -> None:
    """A node that took tx1 and had it replaced by tx2 within one 0.1 s look says so itself
    (tx1 `replaced`): its history must not read as if it had only ever held tx2."""
    class Node:
        name = "a"

        def __init__(self) -> None:
            self.pool: list[str] = []
            self.statuses: dict[str, str] = {}

        def try_call(self, method: str, *params: Any) -> Any:
            if method == "getrawmempool":
                return self.pool
            return {"status": self.statuses.get(params[0], "unknown")}

    class Net:
        timeline = argparse.Namespace(mark=lambda *a, **k: None)

    a = Node()
    h = Holdings(Net(), "t1", "t2", [a])  # type: ignore[arg-type]
    h.poll()
    a.pool, a.statuses = ["t2"], {"t1": "replaced", "t2": "mempool"}
    h.poll()
    a.pool, a.statuses = [], {"t1": "conflicted", "t2": "confirmed"}
    h.poll()
    assert h.history["a"] == ["tx1", "tx2", "mined tx2"]
    # Straight to the block: still a replacement it made before it.
    b = Node()
    b.pool, b.statuses = [], {"t1": "replaced", "t2": "confirmed"}
    h2 = Holdings(Net(), "t1", "t2", [b])  # type: ignore[arg-type]
    h2.poll()
    assert h2.history["a"] == ["tx1", "mined tx2"]
    # Without the replacement (a first-seen node never held tx1), nothing is invented.
    c = Node()
    c.pool, c.statuses = ["t2"], {"t1": "unknown", "t2": "mempool"}
    h3 = Holdings(Net(), "t1", "t2", [c])  # type: ignore[arg-type]
    h3.poll()
    assert h3.history["a"] == ["tx2"]


def test_a_sweep_stopped_before_its_first_trial_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> dict[str, Any]:
        raise ScenarioError("n2 did not come back")

    monkeypatch.setattr(racesweep, "one_trial", refuse)
    net = SweepNet("--trials", "1", "--shares", "0", "--defences", "on")
    with pytest.raises(ScenarioError):
        racesweep.run(net)  # type: ignore[arg-type]
    assert net.reported["cells"] == [] and net.reported["trials"] == []
    assert "stopped at trial 1 of share 0 (defences on)" in net.reported["stopped"]
    assert "0 of 0 trials" in net.reported["verdict"]


class RaceNode:
    """A node whose wallet knows tx1 (in its mempool, then mined) and nothing of tx2."""

    def __init__(self, name: str, net: RaceNet) -> None:
        self.name, self.net = name, net

    def call(self, method: str, *params: Any) -> Any:
        return self.try_call(method, *params)

    def try_call(self, method: str, *params: Any) -> Any:
        if method == "getrawmempool":
            return [] if self.net.mined else ["new1"]
        if method == "gettransaction":
            if params[0] != "new1":
                return {"status": "unknown"}
            return ({"status": "confirmed", "confirmations": 1} if self.net.mined else
                    {"status": "mempool", "confirmations": 0, "accepted_zero_conf": True})
        return {}


class RaceNet:
    """Enough of a Network for one `race_trial`: the previous trial's tx1 (still labelled tx1
    until the new double spend is tracked) shows up conflicted on the victim after t0."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.events: list[dict[str, Any]] = []
        self.timeline = argparse.Namespace(now=self.now, mark=self.mark, events=self.events)
        self.mined = False
        self.nodes = {n: RaceNode(n, self) for n in ("n1", "n2", "n3", "n4")}
        self.roles = argparse.Namespace(attacker=self.nodes["n3"], victim=self.nodes["n4"],
                                        honest=[self.nodes["n1"]], nodes=list(self.nodes))
        self.rng = random.Random(1)
        self.monitor = argparse.Namespace(poll=lambda: None)

    def now(self) -> float:
        self.clock += 0.01
        return self.clock

    def mark(self, node: str, event: str, **extra: Any) -> None:
        self.events.append({"t": self.now(), "node": node, "event": event, **extra})

    def sync_blocks(self, *args: Any, **kwargs: Any) -> None:
        # The monitor's look at the old tx1 (the victim restarted for this trial's policy
        # forgot the alert it had recorded for it): after t0, before the new spends exist.
        self.mark("n4", "tx1", txid="old1"[:16], status="conflicted", confirmations=-1)

    def double_spend(self, *args: Any, **kwargs: Any) -> Any:
        return argparse.Namespace(txid1="new1", txid2="new2", tx1="aa", tx2="bb",
                                  coin={"txid": "c0", "vout": 0})

    def send(self, node: Any, raw: str, label: str) -> None:
        self.mark(node.name, f"{label} sent")

    def mine(self, node: Any) -> list[str]:
        self.mined = True
        self.mark(node.name, "block mined", hash="00ff")
        return ["00ff"]

    def wait_tip(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_an_old_tx1_event_is_not_this_trials_warning() -> None:
    net = RaceNet()
    result = race.race_trial(net, race.RacePlan(amount=1, wait=0.0), {})  # type: ignore[arg-type]
    assert result["mined"] == "tx1" and not result["success"]
    assert not result["detected"], result["verdict"]
    assert "never reported a conflict" in result["verdict"]
