"""The structure of the node package: the NodeAPI/MinerAPI protocols match what Node and Miner
provide, and the RPC methods' registration (decorator, categories, help)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import types
from pathlib import Path
from typing import Any

import pytest

from consensus.params import REGTEST
from node.config import NodeConfig
from node.daemon import Node
from node.interface import MinerAPI, NodeAPI
from node.rpc.errors import INVALID_PARAMS, RPCError
from node.rpc.methods import CATEGORY_MODULES, build_registry, control
from node.rpc.registry import MethodRegistry, rpc_method
from tests.test_architecture import GRAPH, MODULES

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- imports
# (no cycles and the layer rules, for every package: tests/test_architecture.py)


def test_rpc_methods_and_miner_see_the_node_only_through_its_interface() -> None:
    for name, deps in GRAPH.items():
        if name.startswith(("node.rpc", "node.miner", "node.interface")):
            assert "node.daemon" not in deps, name


def test_nothing_defines_its_own_protocol_version() -> None:
    for name, path in MODULES.items():
        if not name.startswith(("node", "lab")):
            continue
        tree = ast.parse(path.read_text())
        assigned = {
            t.id for stmt in ast.walk(tree) if isinstance(stmt, ast.Assign)
            for t in stmt.targets if isinstance(t, ast.Name)
        }
        assert not assigned & {"PROTOCOL_VERSION", "USER_AGENT", "HEADER_STRUCT"}, path


# ----------------------------------------------------------------------------- protocols


def _protocol_members(proto: type) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for klass in reversed(proto.__mro__):
        if klass is object or klass.__module__ == "typing":
            continue
        for key, value in vars(klass).items():
            if not key.startswith("_"):
                members[key] = value
    return members


def _assert_implements(obj: object, proto: type) -> None:
    for name, member in _protocol_members(proto).items():
        assert hasattr(obj, name), f"{type(obj).__name__} lacks {proto.__name__}.{name}"
        if inspect.isfunction(member):
            attr = getattr(obj, name)
            assert callable(attr), name
            assert inspect.iscoroutinefunction(attr) == inspect.iscoroutinefunction(member), name
            wanted = list(inspect.signature(member).parameters)[1:]
            assert list(inspect.signature(attr).parameters) == wanted, name


async def test_node_and_miner_implement_the_protocols(tmp_path: Path) -> None:
    node = Node(
        NodeConfig(datadir=tmp_path / "n", p2p_bind="127.0.0.1:0", rpc_bind="127.0.0.1:0"),
        REGTEST,
    )
    await node.start()
    try:
        assert set(_protocol_members(NodeAPI)) >= {"chain", "mempool", "miner", "protocol"}
        _assert_implements(node, NodeAPI)
        _assert_implements(node.miner, MinerAPI)
    finally:
        await node.stop()


# ----------------------------------------------------------------------------- RPC methods

# The `help` groups as they were when the methods lived in one closure: unchanged.
EXPECTED_GROUPS = {
    "addressindex": {
        "getaddresstxids", "getaddressbalance", "getaddressutxos", "getaddressdeltas",
        "getaddressmempool",
    },
    "blockchain": {
        "getblockchaininfo", "getblockcount", "getbestblockhash", "getblockhash", "getblock",
        "getblockheader", "getchaintips", "invalidateblock", "reconsiderblock", "submitblock",
    },
    "control": {"help", "uptime", "stop", "setmocktime"},
    "mining": {"generatetoaddress", "generateblock", "getmininginfo", "setmining"},
    "multisig": {
        "createmultisig", "addmultisigaddress", "getaddressinfo", "combinerawtransaction",
    },
    "network": {
        "getpeerinfo", "getconnectioncount", "addnode", "getaddednodeinfo", "getnodeaddresses",
        "disconnectnode",
        "setban", "listbanned", "clearbanned", "setnetworkactive", "setlinkfault",
        "getnetworkinfo",
    },
    "rawtransactions": {
        "getrawmempool", "getmempoolentry", "getmempoolinfo", "sendrawtransaction",
        "getrawtransaction", "decoderawtransaction", "createrawtransaction",
        "signrawtransactionwithwallet",
    },
    "wallet": {
        "getnewaddress", "getbalance", "listunspent", "sendtoaddress", "gettransaction",
        "validateaddress", "abandontransaction", "listtransactions", "bumpfee",
    },
}


def _registry() -> MethodRegistry:
    return build_registry(types.SimpleNamespace())  # type: ignore[arg-type]


def test_methods_are_grouped_by_category_module() -> None:
    registry = _registry()
    listing = asyncio.run(registry.call("help", []))
    groups: dict[str, set[str]] = {}
    for block in listing.split("\n\n"):
        title, *lines = block.splitlines()
        groups[title.strip("= ").lower()] = {line.split()[0] for line in lines}
    assert groups == EXPECTED_GROUPS
    assert {m.__name__.rpartition(".")[2] for m in CATEGORY_MODULES} == set(EXPECTED_GROUPS)


def test_every_method_parameter_is_checked() -> None:
    registry = _registry()
    for name in registry.names():
        method = registry._methods[name]
        assert method.help, f"{name} has no help text"
        for param in method.all_params:
            assert param.annotation is not inspect.Parameter.empty, (name, param.name)
            assert not isinstance(param.annotation, str), (name, param.name)


async def test_rpc_method_binds_the_node_and_documents_from_the_docstring() -> None:
    fake = types.SimpleNamespace(clock=lambda: 100.0, started_at=58.5)
    registry = MethodRegistry()
    registry.register_module(control, fake)
    assert await registry.call("uptime", []) == 41
    assert await registry.call("help", ["uptime"]) == "uptime\n\nSeconds since the node started."
    with pytest.raises(RPCError) as err:
        await registry.call("uptime", [1])
    assert err.value.code == INVALID_PARAMS
    assert err.value.message == "uptime takes no arguments, 1 given"


async def test_rpc_method_parameters_are_coerced_and_checked() -> None:
    module = types.ModuleType("tests.fake_category")

    def double(node: object, x: float, times: int = 2) -> float:
        """Twice x."""
        return x * times

    double.__module__ = module.__name__
    module.double = rpc_method(double)  # type: ignore[attr-defined]
    registry = MethodRegistry()
    registry.register_module(module, object())
    assert await registry.call("double", [3]) == 6.0
    assert await registry.call("double", {"x": 1.5, "times": 3}) == 4.5
    with pytest.raises(RPCError) as err:
        await registry.call("double", [1, True])
    assert err.value.code == INVALID_PARAMS
    assert "fake_category" in registry.help_text().lower()
    assert "double x ( times=2 )" in registry.help_text()


def test_unresolvable_annotations_are_refused() -> None:
    module = types.ModuleType("tests.fake_category")

    def broken(node: object, x: int) -> int:
        return x

    broken.__annotations__["x"] = "NoSuchType"
    broken.__module__ = module.__name__
    module.broken = rpc_method(broken)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="annotations do not resolve"):
        MethodRegistry().register_module(module, object())
