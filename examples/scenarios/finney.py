"""Finney: withhold a block holding tx2, pay the victim with tx1, release the block.

The built-in `powlab attack finney` as a scenario file. The attack itself lives in
lab/attack/finney.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/finney.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.finney import add_arguments, run

__all__ = ["add_arguments", "run"]
