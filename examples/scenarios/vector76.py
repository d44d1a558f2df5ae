"""Vector76: show a withheld block paying the victim to it alone; reorg it away.

The built-in `powlab attack vector76` as a scenario file. The attack itself lives in
lab/attack/vector76.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/vector76.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.vector76 import add_arguments, run

__all__ = ["add_arguments", "run"]
