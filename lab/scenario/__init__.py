"""The public API for experiments on a running powlab network.

A scenario is a Python file with `run(net)` (and optionally `add_arguments(parser)`); `powlab
scenario run FILE.py` hands it a `Network`, and `powlab attack X` runs the built-in ones in
`lab.attack` the same way. Import from here only: everything else in `lab` may change.
docs/scenarios.md is the reference (checked against these docstrings by the tests).
"""

from consensus.attack_theory import wilson_interval
from lab.scenario.engine import (
    DoubleSpend,
    NetNode,
    Outcome,
    Roles,
    ScenarioError,
    Survey,
    Timeline,
    Withheld,
    chainwork,
    finality_depth,
    parallel,
    survey,
)
from lab.scenario.network import Network, Node
from lab.scenario.report import (
    deepest_reorg,
    first_conflict_seen,
    shows_conflict,
    warned_before_loss,
)
from lab.text import confirmations

__all__ = [
    "DoubleSpend",
    "NetNode",
    "Network",
    "Node",
    "Outcome",
    "Roles",
    "ScenarioError",
    "Survey",
    "Timeline",
    "Withheld",
    "chainwork",
    "confirmations",
    "deepest_reorg",
    "finality_depth",
    "first_conflict_seen",
    "parallel",
    "shows_conflict",
    "survey",
    "warned_before_loss",
    "wilson_interval",
]
