"""Race: tx1 to the victim and tx2 to the miners at once; accepted at 0 confirmations.

The built-in `powlab attack race` as a scenario file. The attack itself lives in
lab/attack/race.py and drives the network through the public API (lab.scenario) only,
like any file of yours:

    powlab scenario run examples/scenarios/race.py [--dir D | --docker] [--json] -- [OPTIONS]
`-- --help` lists its options.
"""

from lab.attack.race import add_arguments, run

__all__ = ["add_arguments", "run"]
