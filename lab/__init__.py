"""The lab: everything that drives powlab nodes from outside, through their JSON-RPC only.

The ``powlab`` command line (`lab.cli`), the one RPC client (`lab.client`), local testnets
of node processes or docker containers (`lab.testnet`), staged attacks (`lab.attack`),
virtual-time simulations (`lab.simulate`) and the shared helpers of tests and benchmarks
(`lab.waiting`, `lab.stats`). The lab may use ``consensus`` (to build transactions and for
the attack theory) but never the daemon's internals in ``node``: it starts the daemon as a
process (``python -m node``) and talks to it over RPC.
"""
