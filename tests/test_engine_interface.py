"""The container engines implement one small interface (lab/testnet/engine.py), so another
engine is one more module: each backend has every method, with parameters a caller of the
interface can use the same way."""

from __future__ import annotations

import inspect

import pytest

from lab.testnet.docker import DockerTestnet
from lab.testnet.engine import ENGINE_METHODS, ContainerEngine
from lab.testnet.swarm import SwarmTestnet


def _parameters(function: object) -> list[tuple[str, object, bool]]:
    return [(p.name, p.kind, p.default is inspect.Parameter.empty)
            for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


def test_the_interface_names_what_the_lab_tools_use() -> None:
    assert set(ENGINE_METHODS) >= {"up", "down", "containers", "endpoint", "rpc", "status",
                                   "partition", "heal", "logs"}


@pytest.mark.parametrize("backend", [DockerTestnet, SwarmTestnet])
def test_each_backend_implements_the_interface(backend: type) -> None:
    for name in ENGINE_METHODS:
        wanted = getattr(ContainerEngine, name)
        found = getattr(backend, name, None)
        assert callable(found), f"{backend.__name__} lacks {name}"
        mine, theirs = _parameters(found), _parameters(wanted)
        # The backend may add optional parameters after the interface's, nothing else.
        assert mine[:len(theirs)] == theirs, (backend.__name__, name, mine, theirs)
        assert all(not required for _, _, required in mine[len(theirs):]), (name, mine)


def test_a_class_missing_a_method_is_not_an_engine() -> None:
    class Partial:
        def up(self) -> None:
            """Only one method."""

    assert not isinstance(Partial(), ContainerEngine)
