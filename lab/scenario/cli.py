"""`powlab scenario run FILE.py | list | new NAME`."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from lab.client import run_reporting_failures
from lab.scenario.engine import ScenarioError
from lab.scenario.runner import (
    BUILTINS,
    Scenario,
    add_runner_arguments,
    first_line,
    load_builtin,
    load_file,
    run_and_report,
)
from lab.scenario.template import TEMPLATE

PATH_ENV_VAR = "POWLAB_SCENARIO_PATH"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def cmd_run(args: argparse.Namespace) -> int:
    return run_reporting_failures("scenario", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    scenario = load_file(args.file)
    own = list(args.scenario_args)
    parsed = scenario.parser(f"powlab scenario run {args.file} --").parse_args(own)
    merged = argparse.Namespace(**{**vars(args), **vars(parsed)})
    return run_and_report(scenario, merged, "scenario")


def scenario_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))


def describe_file(path: Path) -> str:
    """The first line of a scenario file's docstring, read without running the file."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError) as exc:
        return f"(unreadable: {exc})"
    return first_line(ast.get_docstring(tree)) or "(no description)"


def cmd_list(args: argparse.Namespace) -> int:
    def listing() -> int:
        print("built-in (powlab attack NAME, or examples/scenarios/NAME.py):")
        for name in BUILTINS:
            print(f"  {name:<12} {load_builtin(name).description}")
        dirs = [Path(p) for p in (args.path or [])]
        dirs += [Path(p) for p in os.environ.get(PATH_ENV_VAR, "").split(os.pathsep) if p]
        for directory in dirs:
            if not directory.is_dir():
                raise ScenarioError(f"scenario path {str(directory)!r} is not a directory")
            print(f"{directory}:")
            files = scenario_files(directory)
            for file in files:
                print(f"  {file.name:<16} {describe_file(file)}")
            if not files:
                print("  (no scenario files)")
        if not dirs:
            print(f"(give --path DIR or set {PATH_ENV_VAR} to list your own scenario files)")
        return 0

    return run_reporting_failures("scenario", listing)


def cmd_new(args: argparse.Namespace) -> int:
    def write() -> int:
        name = args.name.removesuffix(".py")
        if not NAME.fullmatch(Path(name).name):
            raise ScenarioError(f"{args.name!r}: a scenario name is a Python identifier "
                                "(letters, digits, _)")
        path = Path(name + ".py")
        if path.exists() and not args.force:
            raise ScenarioError(f"{path} exists (--force overwrites it)")
        path.write_text(TEMPLATE.replace("NAME", path.stem), encoding="utf-8")
        print(f"wrote {path}: edit run(net), then `powlab scenario run {path}`")
        return 0

    return run_reporting_failures("scenario", write)


def add_scenario_parser(sub: Any) -> None:
    scenario = sub.add_parser(
        "scenario", help="run your own experiment file against a running network",
        description="Scenarios are Python files with run(net) that drive a running network "
                    "through the public API in lab.scenario (docs/scenarios.md).")
    ssub = scenario.add_subparsers(dest="scenario_command", required=True, metavar="COMMAND")
    run = ssub.add_parser(
        "run", help="run FILE.py against a testnet; its own arguments go after --",
        description="Run a scenario file. Everything after -- is parsed by the file's own "
                    "add_arguments(parser); `-- --help` shows them.")
    run.add_argument("file", metavar="FILE.py")
    add_runner_arguments(run)
    run.set_defaults(func=cmd_run, scenario_args=[])
    run.usage = ("powlab scenario run FILE.py [--dir D | --docker | --rpc NAME=URL …] [--json] "
                 "[--plot FILE.png] [--seed N] [--attacker A] [--victim V] [--honest H,…] "
                 "[-- ARGS…]")
    lst = ssub.add_parser("list", help="the built-in scenarios and the files in --path",
                          description="List the built-in scenarios and the scenario files in "
                                      f"--path directories and ${PATH_ENV_VAR} "
                                      f"({os.pathsep}-separated).")
    lst.add_argument("--path", action="append", metavar="DIR",
                     help=f"a directory of scenario files (repeatable; also ${PATH_ENV_VAR})")
    lst.set_defaults(func=cmd_list)
    new = ssub.add_parser("new", help="write a commented template NAME.py",
                          description="Write NAME.py: a commented scenario to start from.")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=cmd_new)


__all__ = ["Scenario", "add_scenario_parser"]
