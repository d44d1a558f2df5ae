"""The `powlab` command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from lab.client import (
    CookieError,
    EndpointError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    add_endpoint_arguments,
    parse_cli_value,
    resolve_endpoint,
)
from lab.plotting import PlotsUnavailable, require_plots

EXIT_USAGE = 2


def _exec_node(argv: Sequence[str]) -> NoReturn:
    """`powlab node ARGS`: this process becomes the daemon (`python -m node ARGS`), so its
    pid, signals, exit code and log output are the daemon's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "node", *argv])


def _node_help(argv: Sequence[str]) -> int:
    """`powlab node --help`: the daemon's own help, printed by this process (which may be a
    test calling `main` in-process: it must not be replaced)."""
    env = {**os.environ, "COLUMNS": str(shutil.get_terminal_size().columns)}
    done = subprocess.run([sys.executable, "-m", "node", *argv], capture_output=True,
                          text=True, env=env, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def _endpoint(args: argparse.Namespace) -> NodeEndpoint:
    """The node the connection flags name; `--node NAME` is looked up in the testnet."""
    return resolve_endpoint(args, _testnet_node)


def _testnet_node(directory: str | None, name: str) -> NodeEndpoint:
    # Imported here: the testnet code is only needed when a node is named.
    from lab.testnet.cli import testnet_endpoint

    return testnet_endpoint(directory, name)


def _cmd_rpc(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    params = [parse_cli_value(a) for a in args.args]

    def call() -> Any:
        try:
            return endpoint.call(args.method, *params)
        except RPCConnectionError as exc:
            # A compose node cut off by a partition has no published port: reach it the way
            # `testnet status` does, with `docker exec` inside its container.
            testnet = _docker_testnet(args)
            if testnet is None:
                raise
            from lab.testnet.docker import DockerError

            try:
                return testnet.rpc(args.node, args.method, *params)
            except (DockerError, RPCConnectionError) as again:
                raise RPCConnectionError(f"{exc}; through docker exec: {again}") from None

    return _print_call(call)


def _docker_testnet(args: argparse.Namespace) -> Any:
    """The Docker testnet `--node NAME [--dir DIR]` names, else None."""
    if not getattr(args, "node", None) or args.rpc or args.rpc_cookie or args.rpc_user:
        return None
    from lab.testnet.cli import compose_testnet, is_docker
    from lab.testnet.manifest import resolve_dir

    path = resolve_dir(getattr(args, "dir", None))
    return compose_testnet(path) if is_docker(path) else None


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
    endpoint = _endpoint(args)
    if args.wallet_command == "new-address":
        return _print_call(lambda: endpoint.call("getnewaddress"))
    if args.wallet_command == "balance":
        return _print_call(lambda: endpoint.call("getbalance", args.minconf))
    return _print_call(lambda: endpoint.call("sendtoaddress", args.address, args.amount))


def _cmd_watch(args: argparse.Namespace) -> int:
    from lab.watch import watch_transaction

    return watch_transaction(
        _endpoint(args), args.txid, args.depth, args.interval, args.timeout
    )


def _cmd_address(args: argparse.Namespace) -> int:
    from lab.address import history_command

    return history_command(
        _endpoint(args), args.address, args.watch, args.json, args.interval,
        reconnect=lambda: _endpoint(args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powlab",
        description="A peer-to-peer proof-of-work blockchain node for local experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Listed for `powlab --help`; `main` hands `powlab node …` to the daemon before parsing.
    sub.add_parser("node", help="run the node daemon in the foreground", add_help=False)

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

    address = sub.add_parser("address", help="an address's history (needs --addressindex)")
    asub = address.add_subparsers(dest="address_command", required=True, metavar="ACTION")
    history = asub.add_parser(
        "history", help="transactions of ADDR with confirmations, final/pending; --watch follows"
        " reorgs live"
    )
    add_endpoint_arguments(history)
    history.add_argument("address")
    history.add_argument("--watch", action="store_true",
                         help="keep following the address (reorgs included) until Ctrl-C")
    history.add_argument("--json", action="store_true", help="JSON: one object, or one per line"
                         " with --watch")
    history.add_argument("--interval", type=float, default=0.5,
                         help="seconds between polls with --watch")
    address.set_defaults(func=_cmd_address)

    from lab.simulate.cli import add_simulate_parser

    add_simulate_parser(sub)

    from lab.attack import add_attack_parser

    add_attack_parser(sub)

    from lab.scenario.cli import add_scenario_parser

    add_scenario_parser(sub)

    from lab.testnet.cli import add_testnet_parser

    testnet_action = add_testnet_parser(sub)

    from lab.dashboard.cli import add_dashboard_action

    add_dashboard_action(testnet_action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Behave like other Unix tools when piped into `head`: exit quietly on a closed pipe.
    # Set before parsing so `powlab --help | head` is quiet too.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["node"]:
        # The daemon parses its own options (and sets its own SIGPIPE handling).
        if "-h" in words[1:] or "--help" in words[1:]:
            raise SystemExit(_node_help(words[1:]))
        _exec_node(words[1:])
    own: list[str] = []
    if words[:2] == ["scenario", "run"] and "--" in words:
        # What follows `--` belongs to the scenario file's own parser.
        cut = words.index("--")
        words, own = words[:cut], words[cut + 1:]
    args = build_parser().parse_args(words)
    if own:
        args.scenario_args = own
    if getattr(args, "plot", None):
        # Before the experiment runs, not after: it may take minutes.
        try:
            require_plots()
        except PlotsUnavailable as exc:
            print(f"powlab {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (EndpointError, CookieError) as exc:
        # e.g. `--node n9` on a 4-node testnet, no testnet in --dir, or a missing cookie
        print(f"powlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
