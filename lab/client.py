"""How the command line finds and talks to a node: URL and credentials resolution."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.rpc_server import (
    CookieError,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    read_cookie,
    rpc_call_sync,
)

DEFAULT_RPC_URL = "http://127.0.0.1:18443/"
DEFAULT_NETWORK = "regtest"


class EndpointError(Exception):
    """The node to talk to cannot be determined (e.g. an unknown testnet node name)."""


@dataclass
class NodeEndpoint:
    url: str
    auth: tuple[str, str] | None

    def call(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return rpc_call_sync(self.url, method, list(params), self.auth, timeout)


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("node connection")
    group.add_argument("--rpc", metavar="URL", help="node RPC URL (default: from --datadir, "
                       f"else {DEFAULT_RPC_URL})")
    group.add_argument("--rpc-cookie", metavar="FILE", help="cookie file to authenticate with")
    group.add_argument("--rpc-user", help="RPC user (instead of a cookie)")
    group.add_argument("--rpc-password", help="RPC password")
    group.add_argument("--datadir", metavar="DIR", help="the node's data directory "
                       f"(default ~/.powlab/{DEFAULT_NETWORK}): its cookie and RPC URL are used")
    group.add_argument("--node", metavar="NAME", help="a node of a `powlab testnet` (n1, n2, …): "
                       "its RPC URL and cookie come from the testnet's manifest")
    group.add_argument("--dir", metavar="DIR", help="the testnet's directory for --node "
                       "(default ./testnet, env POWLAB_TESTNET_DIR)")


def resolve_endpoint(args: argparse.Namespace) -> NodeEndpoint:
    """--rpc / --rpc-cookie / --rpc-user win; else --node NAME from a testnet manifest; else
    the data directory's rpc.url and .cookie."""
    node_name = getattr(args, "node", None)
    if node_name and not (args.rpc or args.rpc_cookie or args.rpc_user or args.datadir):
        # Imported here: the testnet module is only needed when a node is named.
        from lab.testnet import testnet_endpoint

        return testnet_endpoint(getattr(args, "dir", None), node_name)
    datadir = Path(
        os.path.expanduser(args.datadir or os.environ.get("POWLAB_DATADIR", "")
                           or f"~/.powlab/{DEFAULT_NETWORK}")
    )
    url = args.rpc
    if url is None:
        url_file = datadir / "rpc.url"
        url = url_file.read_text().strip() if url_file.exists() else DEFAULT_RPC_URL
    if not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    if not url.endswith("/"):
        url += "/"
    if args.rpc_user:
        return NodeEndpoint(url, (args.rpc_user, args.rpc_password or ""))
    cookie = Path(args.rpc_cookie) if args.rpc_cookie else datadir / ".cookie"
    try:
        auth = read_cookie(cookie)
    except CookieError:
        if args.rpc_cookie:
            raise
        auth = None
    return NodeEndpoint(url, auth)


def parse_cli_value(text: str) -> Any:
    """Arguments parse as JSON where they can (numbers, true, [..], {..}), else stay strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_reporting_failures(command: str, action: Callable[[], int | None]) -> int:
    """Run a subcommand that drives nodes over RPC: the failures a user can cause or meet
    (a bad node name or directory, an RPC error, a node that is down, a wrong cookie) become
    one line on stderr and exit code 1 instead of a traceback."""
    try:
        return int(action() or 0)
    except RPCError as exc:
        print(f"powlab {command}: RPC error {exc.code}: {exc.message}", file=sys.stderr)
    except (EndpointError, RPCConnectionError, RPCAuthError, CookieError) as exc:
        print(f"powlab {command}: {exc}", file=sys.stderr)
    return 1
