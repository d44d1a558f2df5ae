"""The node's JSON-RPC interface.

* :mod:`node.rpc.limits`: default bounds of the RPC server (the defaults of the matching
  options in :mod:`node.config`).
* :mod:`node.rpc.errors`: JSON-RPC and bitcoind error codes, :class:`~node.rpc.errors.RPCError`.
* :mod:`node.rpc.registry`: :class:`~node.rpc.registry.MethodRegistry` (signature-driven
  arity and type checking, ``help``) and the :func:`~node.rpc.registry.rpc_method` decorator.
* :mod:`node.rpc.cookie`: the ``.cookie`` file.
* :mod:`node.rpc.server`: the HTTP server (JSON-RPC, ``/events``, ``/ws``, ``/metrics``,
  ``/health``), Basic auth and the connection guard.
* :mod:`node.rpc.methods`: the node's methods, one module per ``help`` category.

Nothing is re-exported here, so importing one module does not import the others.
"""
