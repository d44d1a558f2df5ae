"""Selfish mining (Eyal–Sirer) at share α over K blocks, by a seeded lottery.

The built-in `powlab attack selfish` as a scenario file. The attack itself lives in
lab/attack/selfish.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/selfish.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.selfish import add_arguments, run

__all__ = ["add_arguments", "run"]
