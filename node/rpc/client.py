"""RPC client functions: one JSON-RPC call over HTTP.

Moved here unchanged from the former node/rpc_server.py; the lab tools get their own copy in
``lab.client``, after which this module goes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from node.rpc.errors import INTERNAL_ERROR, RPC_MISC_ERROR, RPCError


class RPCConnectionError(ConnectionError):
    """The node could not be reached (refused, reset, DNS failure, timeout...)."""


class RPCTimeoutError(RPCConnectionError, TimeoutError):
    """The node did not answer within the timeout."""


class RPCAuthError(Exception):
    """The node rejected our credentials (HTTP 401)."""


def basic_auth_header(user: str, password: str) -> str:
    """Value for an HTTP ``Authorization`` header with Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


async def rpc_call(
    url: str,
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30,
) -> Any:
    """Call ``method`` on the JSON-RPC server at ``url`` (e.g. ``http://127.0.0.1:8332/``).

    Returns the ``result``. Raises :class:`RPCError` for error responses,
    :class:`RPCAuthError` on HTTP 401, :class:`RPCConnectionError` (or its subclass
    :class:`RPCTimeoutError`) if the node can't be reached or doesn't answer in time.
    """
    wire_params: list[Any] | dict[str, Any]
    if params is None:
        wire_params = []
    elif isinstance(params, Mapping):
        wire_params = dict(params)
    else:
        wire_params = list(params)
    payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": wire_params}
    headers = {"Authorization": basic_auth_header(*auth)} if auth is not None else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, json=payload, headers=headers) as resp,
        ):
            status = resp.status
            body = await resp.read()
    except TimeoutError as exc:
        raise RPCTimeoutError(f"timed out after {timeout}s waiting for node at {url}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RPCConnectionError(f"could not connect to node at {url}: {exc}") from exc

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
