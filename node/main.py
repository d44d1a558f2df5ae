"""`python -m node`: the daemon's own entry point; `powlab node` replaces itself with it.

Only the daemon's options are parsed here (node.config's flags, ``POWLAB_*`` variables and
the TOML file); the rest of the ``powlab`` command line lives in the lab package, which the
daemon never imports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from consensus.params import ChainParams, ParamsError, network_params
from node.config import ConfigError, NodeConfig, add_node_arguments, load_config_from_sources

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    # The program name users type: `powlab node` execs this module with its arguments.
    parser = argparse.ArgumentParser(prog="powlab node")
    add_node_arguments(parser)
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the configuration the node would run with (flags, environment and file "
             "merged and checked) as JSON, and exit without starting",
    )
    return parser


def config_json(config: NodeConfig) -> str:
    """Every option, unset ones as null, and ``params``: what ``--print-config`` prints."""

    def plain(value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    data = {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return json.dumps(data, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    # A write to a socket whose peer has gone (an RPC or P2P client) must raise
    # BrokenPipeError, which the server code handles and logs, rather than kill the daemon
    # without a word: SIGPIPE stays ignored (Python's own default, made explicit here).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    try:
        config = load_config_from_sources(args, os.environ)
        params = network_params(config.network, config.params)
    except (ConfigError, ParamsError) as exc:
        print(f"powlab node: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(config_json(config))
        return 0
    return run(config, params)


def run(config: NodeConfig, params: ChainParams) -> int:
    from node.daemon import run_node
    from node.datadir import DataDirLocked
    from node.logs import configure_logging
    from node.wallet import WalletError
    from storage import StorageError

    configure_logging(config.log_format, config.log_level)
    try:
        return asyncio.run(run_node(config, params))
    except (DataDirLocked, StorageError, WalletError, OSError) as exc:
        print(f"powlab node: {exc}", file=sys.stderr)
        return 1
