"""Split: two mining halves, the coin paid differently in each, healed: who keeps it.

The built-in `powlab attack split` as a scenario file. The attack itself lives in
lab/attack/split.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/split.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.split import add_arguments, run

__all__ = ["add_arguments", "run"]
