"""Race-attack success against the share of full-RBF nodes, with and without defences.

The sweep lives in lab/attack/racesweep.py (its docstring says what a trial is) and drives
the network through the public API (lab.scenario) and the race of lab/attack/race.py:

    powlab scenario run examples/scenarios/race_rbf.py [--dir D] [--json] -- --trials 20
`-- --help` lists its options.
"""

from lab.attack.racesweep import add_arguments, run

__all__ = ["add_arguments", "run"]
