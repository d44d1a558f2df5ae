"""Majority: a private branch with tx2 at share Q until it outworks Z confirmations.

The built-in `powlab attack majority` as a scenario file. The attack itself lives in
lab/attack/majority.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/majority.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.majority import add_arguments, run

__all__ = ["add_arguments", "run"]
