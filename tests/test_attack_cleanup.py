"""An attack that fails half-way still gives the testnet back as it was: every ban it set is
lifted, the links it added go, links that were there before stay. Fake nodes record the RPC
calls; nothing runs."""

from __future__ import annotations

from typing import Any

import pytest

from lab.attack.split import halves
from lab.client import RPCConnectionError, RPCError
from lab.scenario import engine
from lab.scenario.engine import NetNode, ScenarioError, Survey, Switches, Timeline
from lab.scenario.engine import partition_cut as cut_between

NAMES = ["n1", "n2", "n3", "n4"]


class FakeNode(NetNode):
    def __init__(self, name: str) -> None:
        super().__init__(name, "node", None)  # type: ignore[arg-type]
        self.calls: list[tuple[Any, ...]] = []
        self.down = False
        self.already_added: set[str] = set()

    def call(self, method: str, *params: Any, timeout: float = 60) -> Any:
        self.calls.append((method, *params))
        if self.down:
            raise RPCConnectionError(f"{self.name} is down")
        if method == "addnode" and params[1] == "add" and params[0] in self.already_added:
            raise RPCError(-23, "Node already added")
        return [] if method == "getpeerinfo" else None

    def try_call(self, method: str, *params: Any, timeout: float = 10) -> Any:
        try:
            return self.call(method, *params, timeout=timeout)
        except RPCConnectionError:
            return None

    def bans(self) -> set[str]:
        held: set[str] = set()
        for call in self.calls:
            if call[0] == "setban":
                (held.add if call[2] == "add" else held.discard)(call[1])
        return held


def line() -> tuple[dict[str, FakeNode], Survey]:
    nodes = {n: FakeNode(n) for n in NAMES}
    adjacency = {"n1": {"n2"}, "n2": {"n1", "n3"}, "n3": {"n2", "n4"}, "n4": {"n3"}}
    survey = Survey(
        NAMES, nodes, {n: n + "id" for n in NAMES},
        {n: f"{n}id@127.0.0.{i + 2}:18444" for i, n in enumerate(NAMES)},
        {n: f"127.0.0.{i + 2}" for i, n in enumerate(NAMES)}, adjacency,
    )  # fmt: skip
    return nodes, survey


def network(nodes: dict[str, FakeNode]) -> Switches:
    return Switches(list(nodes.values()), Timeline())


def partition(survey: Survey, a: list[str], b: list[str]) -> engine.Cut:
    return cut_between(survey, [a, b])


def test_a_cut_that_fails_half_way_is_still_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, survey = line()
    net = network(nodes)
    cut = partition(survey, ["n1", "n2"], ["n3", "n4"])
    cut.added = [(nodes["n1"], nodes["n2"])]  # a link that will never come up

    def never(*args: Any, **kwargs: Any) -> None:
        raise ScenarioError("timed out waiting for the added links")

    monkeypatch.setattr(engine, "wait_until", never)
    with pytest.raises(ScenarioError):
        net.apply_cut("*", cut, "partition")
    assert any(node.bans() for node in nodes.values())
    net.restore()
    assert all(not node.bans() for node in nodes.values())
    assert ("addnode", survey.dial["n2"], "remove") in nodes["n1"].calls


def test_one_node_down_does_not_keep_the_others_banned() -> None:
    nodes, survey = line()
    net = network(nodes)
    net.apply_cut("*", partition(survey, ["n1", "n2"], ["n3", "n4"]), "partition")
    nodes["n3"].down = True
    net.restore()
    assert all(not node.bans() for name, node in nodes.items() if name != "n3")


def test_a_link_that_was_there_before_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, survey = line()
    monkeypatch.setattr(engine, "wait_until", lambda *a, **k: True)
    net = network(nodes)
    cut = partition(survey, ["n1", "n2"], ["n3", "n4"])
    nodes["n1"].already_added.add(survey.dial["n2"])
    cut.added = [(nodes["n1"], nodes["n2"])]
    net.apply_cut("*", cut, "partition")
    net.restore()
    assert ("addnode", survey.dial["n2"], "remove") not in nodes["n1"].calls


@pytest.mark.parametrize("given", [["n1", "n4"], ["n1,n2", "n2,n3,n4"]])
def test_halves_must_partition_the_network(given: list[str]) -> None:
    nodes, survey = line()
    with pytest.raises(ScenarioError):
        halves(survey, nodes["n1"], given)
