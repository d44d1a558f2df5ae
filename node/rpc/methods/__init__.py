"""The node's JSON-RPC methods, named and shaped as in bitcoind (see ../shared/CONTRACT.md),
one module per ``help`` category.

Adding a method is one decorated function in its category module; the function's name is
the method's name and its docstring the ``help`` text; its parameters after ``node`` are the
RPC parameters, checked against their annotations::

    @rpc_method
    def getblockcount(node: NodeAPI) -> int:
        \"\"\"Height of the active chain's tip.\"\"\"
        return node.chain.height

A new category is a new module here, added to ``CATEGORY_MODULES``. Methods see the node
only through :class:`node.interface.NodeAPI`.
"""

from __future__ import annotations

from node.interface import NodeAPI
from node.rpc.methods import (
    addressindex,
    blockchain,
    control,
    mining,
    multisig,
    network,
    rawtransactions,
    wallet,
)
from node.rpc.registry import MethodRegistry

CATEGORY_MODULES = (
    addressindex,
    blockchain,
    control,
    mining,
    multisig,
    network,
    rawtransactions,
    wallet,
)


def build_registry(node: NodeAPI) -> MethodRegistry:
    """A registry with ``help`` and every method of ``CATEGORY_MODULES``, bound to ``node``."""
    registry = MethodRegistry()
    for module in CATEGORY_MODULES:
        registry.register_module(module, node)
    return registry
