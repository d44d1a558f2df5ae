"""`powlab attack race|finney|vector76|majority|selfish|split`: each a built-in scenario run
by the same runner as `powlab scenario run FILE.py` (lab.scenario)."""

from __future__ import annotations

import argparse
from typing import Any

from lab.client import run_reporting_failures
from lab.scenario.runner import (
    BUILTINS,
    add_runner_arguments,
    load_builtin,
    run_and_report,
)


def cmd_attack(args: argparse.Namespace) -> int:
    def attack() -> int:
        return run_and_report(load_builtin(args.attack_command), args, "attack")

    return run_reporting_failures("attack", attack)


def add_attack_parser(sub: Any) -> None:
    attack = sub.add_parser("attack", help="stage a double-spend or mining attack on a testnet",
                            description="Stage an attack on a running powlab network through "
                                        "RPC; print a timeline and a verdict.")
    asub = attack.add_subparsers(dest="attack_command", required=True, metavar="ATTACK")
    for name in BUILTINS:
        scenario = load_builtin(name)
        p = asub.add_parser(name, help=scenario.description, description=scenario.description)
        add_runner_arguments(p)
        scenario.module.add_arguments(p)
        p.set_defaults(func=cmd_attack)
