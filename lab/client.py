"""The lab's one JSON-RPC client: calls (async and blocking), cookies, and finding a node.

Everything in the lab talks to nodes through this module:

- :func:`rpc_call` (async, aiohttp) and :func:`rpc_call_sync` (blocking) call one method and
  return its ``result``; they raise :class:`RPCError` (the node answered with an error object:
  ``code``, ``message``, ``data``), :class:`RPCAuthError` (HTTP 401),
  :class:`RPCConnectionError` (nothing answered; :class:`RPCTimeoutError` when too slowly);
- :func:`read_cookie` reads a node's ``.cookie`` (:class:`CookieError` when it cannot);
- :class:`NodeEndpoint` is a URL with credentials (``call`` / ``acall``);
  :func:`datadir_endpoint` reads one from a data directory (``rpc.url`` and ``.cookie``, as the
  node writes them) and :func:`resolve_endpoint` from the command line's connection flags.

Only the standard library is imported at module level (aiohttp when the first call is made),
so the docker image's HEALTHCHECK can use this module cheaply. The daemon never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COOKIE_FILENAME",
    "DEFAULT_NETWORK",
    "DEFAULT_RPC_URL",
    "CookieError",
    "EndpointError",
    "NodeEndpoint",
    "RPCAuthError",
    "RPCConnectionError",
    "RPCError",
    "RPCTimeoutError",
    "add_endpoint_arguments",
    "basic_auth_header",
    "datadir_endpoint",
    "parse_cli_value",
    "read_cookie",
    "resolve_endpoint",
    "rpc_batch",
    "rpc_call",
    "rpc_call_sync",
    "run_reporting_failures",
]

DEFAULT_RPC_URL = "http://127.0.0.1:18443/"
DEFAULT_NETWORK = "regtest"
COOKIE_FILENAME = ".cookie"
URL_FILENAME = "rpc.url"

# JSON-RPC codes the client itself reports (the node's own codes pass through unchanged).
INTERNAL_ERROR = -32603
RPC_MISC_ERROR = -1


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RPCError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"RPCError({self.code}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class RPCConnectionError(ConnectionError):
    """The node could not be reached (refused, reset, DNS failure, timeout...)."""


class RPCTimeoutError(RPCConnectionError, TimeoutError):
    """The node did not answer within the timeout."""


class RPCAuthError(Exception):
    """The node rejected our credentials (HTTP 401)."""


class CookieError(Exception):
    """The RPC cookie file is missing, unreadable or malformed."""


class EndpointError(Exception):
    """The node to talk to cannot be determined (e.g. an unknown testnet node name)."""


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


def read_cookie(path: Path | str) -> tuple[str, str]:
    """Read a cookie file (or ``DIR/.cookie`` if ``path`` is a directory) → ``(user, pw)``."""
    p = Path(path)
    if p.is_dir():
        p = p / COOKIE_FILENAME
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CookieError(
            f"RPC cookie file not found: {p} (is the node running with this datadir?)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CookieError(f"cannot read RPC cookie file {p}: {exc}") from exc
    user, sep, password = text.partition(":")
    if not sep or not user or not password or "\n" in text:
        raise CookieError(f"malformed RPC cookie file {p}: expected 'user:password'")
    return user, password


def basic_auth_header(user: str, password: str) -> str:
    """Value for an HTTP ``Authorization`` header with Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


# --------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------


async def rpc_call(
    url: str,
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30,
    session: Any = None,
) -> Any:
    """Call ``method`` on the JSON-RPC server at ``url`` (e.g. ``http://127.0.0.1:8332/``).

    Returns the ``result``. Raises :class:`RPCError` for error responses,
    :class:`RPCAuthError` on HTTP 401, :class:`RPCConnectionError` (or its subclass
    :class:`RPCTimeoutError`) if the node can't be reached or doesn't answer in time.
    ``session``: an ``aiohttp.ClientSession`` to reuse (a long-lived caller such as the
    dashboard keeps its connections open); without one, a session is made for this call.
    """
    payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": _wire_params(params)}
    status, body = await _post(url, payload, auth, timeout, session)
    return _result(url, status, body)


async def rpc_batch(
    url: str,
    calls: Sequence[tuple[str, Sequence[Any]]],
    auth: tuple[str, str] | None = None,
    timeout: float = 60,
    session: Any = None,
) -> list[Any]:
    """Several calls in one JSON-RPC batch request: one entry per call, in order, each its
    ``result`` or the :class:`RPCError` it failed with (returned, not raised). Connection and
    authentication failures raise as in :func:`rpc_call`. Keep a batch within the node's
    ``max_rpc_batch`` (1000 by default)."""
    if not calls:
        return []
    payload = [{"jsonrpc": "2.0", "id": k, "method": method, "params": _wire_params(params)}
               for k, (method, params) in enumerate(calls)]
    status, body = await _post(url, payload, auth, timeout, session)
    try:
        replies = json.loads(body)
    except ValueError:
        replies = None
    if not isinstance(replies, list):
        # A batch-wide refusal (e.g. too many requests) is one error object.
        _result(url, status, body)
        raise RPCError(INTERNAL_ERROR, f"unexpected batch response from node (HTTP {status})")
    results: list[Any] = [RPCError(INTERNAL_ERROR, "no reply for this call")] * len(calls)
    for reply in replies:
        if not isinstance(reply, dict) or not isinstance(reply.get("id"), int):
            continue
        k = reply["id"]
        if 0 <= k < len(calls):
            try:
                results[k] = _result(url, status, json.dumps(reply).encode())
            except RPCError as exc:
                results[k] = exc
    return results


def _wire_params(params: Sequence[Any] | Mapping[str, Any] | None) -> list[Any] | dict[str, Any]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        return dict(params)
    return list(params)


async def _post(url: str, payload: Any, auth: tuple[str, str] | None, timeout: float,
                session: Any) -> tuple[int, bytes]:
    import aiohttp

    headers = {"Authorization": basic_auth_header(*auth)} if auth is not None else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        if session is not None:
            async with session.post(url, json=payload, headers=headers,
                                    timeout=client_timeout) as resp:
                return resp.status, await resp.read()
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as own,
            own.post(url, json=payload, headers=headers) as resp,
        ):
            return resp.status, await resp.read()
    except TimeoutError as exc:
        raise RPCTimeoutError(f"timed out after {timeout}s waiting for node at {url}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RPCConnectionError(f"could not connect to node at {url}: {exc}") from exc


def _result(url: str, status: int, body: bytes) -> Any:
    """The ``result`` of one JSON-RPC reply, or the error it stands for."""
    if status == 401:
        raise RPCAuthError(f"authorization failed for {url}: incorrect RPC user/password or cookie")
    if status == 204:
        return None
    try:
        reply = json.loads(body)
    except ValueError:
        snippet = body[:200].decode("utf-8", "replace")
        raise RPCError(
            INTERNAL_ERROR, f"invalid response from node (HTTP {status}): {snippet!r}"
        ) from None
    if not isinstance(reply, dict):
        raise RPCError(INTERNAL_ERROR, f"unexpected response from node (HTTP {status})")
    error = reply.get("error")
    if error is not None:
        if isinstance(error, dict):
            raise RPCError(
                int(error.get("code", RPC_MISC_ERROR)),
                str(error.get("message", "")),
                error.get("data"),
            )
        raise RPCError(RPC_MISC_ERROR, str(error))
    if "result" not in reply:
        raise RPCError(INTERNAL_ERROR, f"response has neither result nor error (HTTP {status})")
    return reply["result"]


def rpc_call_sync(
    url: str,
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30,
) -> Any:
    """Blocking :func:`rpc_call` (uses ``asyncio.run``; not for use inside a running loop)."""
    return asyncio.run(rpc_call(url, method, params, auth, timeout))


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


@dataclass
class NodeEndpoint:
    url: str
    auth: tuple[str, str] | None

    def call(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return rpc_call_sync(self.url, method, list(params), self.auth, timeout)

    async def acall(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return await rpc_call(self.url, method, list(params), self.auth, timeout)


def datadir_endpoint(datadir: Path | str, url: str | None = None) -> NodeEndpoint:
    """A node's endpoint from its data directory: the URL it wrote to ``rpc.url`` (else
    ``url``, else the default) and its current cookie (no credentials without one)."""
    datadir = Path(datadir)
    with contextlib.suppress(OSError):
        url = (datadir / URL_FILENAME).read_text().strip() or url
    try:
        auth: tuple[str, str] | None = read_cookie(datadir / COOKIE_FILENAME)
    except CookieError:
        auth = None
    return NodeEndpoint(url or DEFAULT_RPC_URL, auth)


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


NodeLookup = Callable[[str | None, str], NodeEndpoint]


def resolve_endpoint(args: argparse.Namespace, lookup: NodeLookup | None = None) -> NodeEndpoint:
    """--rpc / --rpc-cookie / --rpc-user win; else --node NAME, found by ``lookup(dir, NAME)``
    (the testnet's manifest: the caller passes it, so this module stays below the testnet
    code); else the data directory's rpc.url and .cookie."""
    node_name = getattr(args, "node", None)
    if node_name and not (args.rpc or args.rpc_cookie or args.rpc_user or args.datadir):
        if lookup is None:
            raise EndpointError(f"--node {node_name}: no testnet lookup here; use --rpc")
        return lookup(getattr(args, "dir", None), node_name)
    datadir = Path(
        os.path.expanduser(args.datadir or os.environ.get("POWLAB_DATADIR", "")
                           or f"~/.powlab/{DEFAULT_NETWORK}")
    )
    url = args.rpc
    if url is None:
        url_file = datadir / URL_FILENAME
        url = url_file.read_text().strip() if url_file.exists() else DEFAULT_RPC_URL
    if not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    if not url.endswith("/"):
        url += "/"
    if args.rpc_user:
        return NodeEndpoint(url, (args.rpc_user, args.rpc_password or ""))
    cookie = Path(args.rpc_cookie) if args.rpc_cookie else datadir / COOKIE_FILENAME
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
