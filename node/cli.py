"""The `powlab` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from node.client import (
    EndpointError,
    add_endpoint_arguments,
    parse_cli_value,
    resolve_endpoint,
)
from node.rpc.client import RPCAuthError, RPCConnectionError
from node.rpc.cookie import CookieError
from node.rpc.errors import RPCError

EXIT_USAGE = 2


def _cmd_node(args: argparse.Namespace) -> int:
    from consensus.params import ParamsError, network_params
    from node.config import ConfigError, load_config_from_sources
    from node.daemon import run_node
    from node.datadir import DataDirLocked
    from node.logs import configure_logging
    from node.wallet import WalletError
    from storage import StorageError

    try:
        config = load_config_from_sources(args, os.environ)
        params = network_params(config.network, config.params)
    except (ConfigError, ParamsError) as exc:
        print(f"powlab node: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_format, config.log_level)
    try:
        return asyncio.run(run_node(config, params))
    except (DataDirLocked, StorageError, WalletError, OSError) as exc:
        print(f"powlab node: {exc}", file=sys.stderr)
        return 1


def _cmd_rpc(args: argparse.Namespace) -> int:
    endpoint = resolve_endpoint(args)
    params = [parse_cli_value(a) for a in args.args]
    return _print_call(lambda: endpoint.call(args.method, *params))


def _print_call(call: Any) -> int:
    try:
        result = call()
    except RPCError as exc:
        print(f"error code: {exc.code}\nerror message:\n{exc.message}", file=sys.stderr)
        return 1
    except (RPCConnectionError, RPCAuthError, CookieError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
    elif result is not None:
        print(json.dumps(result, indent=2))
    return 0


def _cmd_wallet(args: argparse.Namespace) -> int:
    endpoint = resolve_endpoint(args)
    if args.wallet_command == "new-address":
        return _print_call(lambda: endpoint.call("getnewaddress"))
    if args.wallet_command == "balance":
        return _print_call(lambda: endpoint.call("getbalance", args.minconf))
    return _print_call(lambda: endpoint.call("sendtoaddress", args.address, args.amount))


def _cmd_watch(args: argparse.Namespace) -> int:
    from node.watch import watch_transaction

    return watch_transaction(
        resolve_endpoint(args), args.txid, args.depth, args.interval, args.timeout
    )


def build_parser() -> argparse.ArgumentParser:
    from node.config import add_node_arguments

    parser = argparse.ArgumentParser(
        prog="powlab",
        description="A peer-to-peer proof-of-work blockchain node for local experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser("node", help="run the node daemon in the foreground")
    add_node_arguments(node)
    node.set_defaults(func=_cmd_node)

    rpc = sub.add_parser("rpc", help="call one JSON-RPC method, like bitcoin-cli")
    add_endpoint_arguments(rpc)
    rpc.add_argument("method", help="RPC method name (try: help)")
    rpc.add_argument("args", nargs="*", help="arguments, parsed as JSON where they parse")
    rpc.set_defaults(func=_cmd_rpc)

    wallet = sub.add_parser("wallet", help="wallet shortcuts: new-address, balance, send")
    wsub = wallet.add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    for name, text in (("new-address", "a new receiving address"),
                       ("balance", "spendable balance")):
        p = wsub.add_parser(name, help=text)
        add_endpoint_arguments(p)
        if name == "balance":
            p.add_argument("--minconf", type=int, default=1)
    send = wsub.add_parser("send", help="pay AMOUNT (smallest units) to ADDR")
    add_endpoint_arguments(send)
    send.add_argument("address")
    send.add_argument("amount", type=int)
    wallet.set_defaults(func=_cmd_wallet)

    watch = sub.add_parser("watch", help="follow a transaction to finality")
    add_endpoint_arguments(watch)
    watch.add_argument("txid")
    watch.add_argument("--depth", type=int, help="confirmations that count as final "
                       "(default: the node's finality depth)")
    watch.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    watch.add_argument("--timeout", type=float, help="give up after this many seconds")
    watch.set_defaults(func=_cmd_watch)

    from node.simulate.cli import add_simulate_parser

    add_simulate_parser(sub)

    from node.attack import add_attack_parser

    add_attack_parser(sub)

    from node.testnet import add_testnet_parser

    add_testnet_parser(sub)
    return parser


# Long-running commands that write to TCP sockets: SIGPIPE must stay ignored there.
DAEMON_COMMANDS = frozenset({"node"})


def main(argv: Sequence[str] | None = None) -> int:
    # Behave like other Unix tools when piped into `head`: exit quietly on a closed pipe.
    # Set before parsing so `powlab --help | head` is quiet too.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in DAEMON_COMMANDS:
        # With SIG_DFL a write to a socket whose peer has gone (an RPC or P2P client) would
        # kill the daemon without a word; ignored, the write raises BrokenPipeError, which
        # the server code handles and logs (Python's own default, restored here).
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        return int(args.func(args) or 0)
    except (EndpointError, CookieError) as exc:
        # e.g. `--node n9` on a 4-node testnet, no testnet in --dir, or a missing cookie
        print(f"powlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
