"""JSON-RPC 2.0 + event-stream HTTP server (aiohttp).

This module knows nothing about blockchains: it serves a
:class:`~node.rpc.registry.MethodRegistry` (see :func:`node.rpc.methods.build_registry`).

Behaviour summary (mirrors bitcoind where not specified otherwise):

* ``POST /`` accepts a single JSON-RPC request object or a batch (array).

  - ``"jsonrpc": "2.0"`` requests are answered JSON-RPC 2.0 style (``result`` *or* ``error``)
    and always with HTTP 200, errors included. A 2.0 request without ``id`` is a
    notification: it runs, but nothing is returned (HTTP 204 if nothing at all is returned).
  - Requests without ``jsonrpc`` (or ``"jsonrpc": "1.0"``) are *legacy* (1.0) requests: the
    response carries both ``result`` and ``error`` (one of them null), they are never
    notifications, and a single legacy request that fails gets bitcoind's HTTP status
    (400 invalid request, 404 method not found, 500 anything else).
  - Any other ``jsonrpc`` value is an INVALID_REQUEST.
  - Batches are executed sequentially, in order, and always answered with HTTP 200. The
    server yields to the event loop between the calls of a batch, so other clients and the
    P2P loop keep running. A batch of more than ``max_batch`` requests is not run at all: it
    gets one INVALID_REQUEST error (HTTP 200, id null) naming the limit.
  - Malformed JSON → PARSE_ERROR, HTTP 200, id null; numbers too large for a double
    (``1e999999``) and the non-standard ``NaN``/``Infinity`` count as malformed. Empty batch /
    non-object request → INVALID_REQUEST, HTTP 200, id null. An unusable ``id`` (not a string,
    a finite number or null; integers outside the signed 64-bit range) → INVALID_REQUEST, id
    null. Body over ``max_body_bytes`` → HTTP 413 with a JSON-RPC error body (code
    INVALID_REQUEST) naming the limit. Every reply to ``POST /`` is strict JSON (never
    ``NaN``/``Infinity``) and a JSON-RPC object, except 204 (notifications only) and 401.
  - A JSON ``null`` passed for an optional parameter that does not itself accept ``None``
    means "use the default" (as bitcoind does), so positional callers can skip arguments.

* ``GET /events`` server-sent events, ``GET /ws`` WebSocket (JSON text frames), both with an
  optional ``?types=a,b`` filter; ``GET /metrics`` (Prometheus text, 404 if no callable was
  given); ``GET /health`` → ``{"ok": true}``. With ``auth`` set, *every* route requires HTTP
  Basic auth; failures get HTTP 401 + ``WWW-Authenticate: Basic realm="jsonrpc"`` after a
  short delay (``auth_failure_delay``, 0.25 s like bitcoind) and no handler runs.

* Connections: a client that has not sent complete request headers ``header_timeout`` seconds
  after connecting is disconnected (slowloris), and so is a keep-alive connection idle for as
  long; at most ``max_connections`` connections (event streams included) are open at once,
  further ones are closed as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from node.events import EventHub, Subscription, SubscriptionClosed
from node.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RPCError,
)
from node.rpc.limits import (
    DEFAULT_MAX_RPC_BATCH,
    DEFAULT_MAX_RPC_CONNECTIONS,
    DEFAULT_RPC_HEADER_TIMEOUT,
    MAX_RPC_BATCH_REPLY_BYTES,
)
from node.rpc.registry import MethodRegistry

# JSON-RPC ids are echoed back; integers beyond int64 are not portable (JavaScript, Go, C
# clients would truncate or reject them), so they are refused rather than mangled.
_ID_INT_BOUND = 2**63

_LEGACY_HTTP_STATUS = {INVALID_REQUEST: 400, METHOD_NOT_FOUND: 404}
_JSON = "application/json"
_PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _parse_finite_float(text: str) -> float:
    # float() turns 1e999999 into inf, which no strict JSON encoder can write back (the id is
    # echoed): refuse it while parsing, so nothing non-finite gets past the front door.
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"number out of range: {shown}")
    return value


def _loads(body: bytes) -> Any:
    return json.loads(body, parse_constant=_reject_constant, parse_float=_parse_finite_float)


def _valid_id(req_id: Any) -> bool:
    if req_id is None or isinstance(req_id, str):
        return True
    if isinstance(req_id, bool):
        return False
    if isinstance(req_id, int):
        return -_ID_INT_BOUND <= req_id < _ID_INT_BOUND
    if isinstance(req_id, float):
        return math.isfinite(req_id)
    return False


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _encode_event(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


def _parse_types(request: web.Request) -> frozenset[str] | None:
    raw = request.query.get("types")
    if raw is None:
        return None
    wanted = frozenset(t.strip() for t in raw.split(",") if t.strip())
    return wanted or None


@dataclasses.dataclass(frozen=True, slots=True)
class _Envelope:
    """A request object's checked fields."""

    v2: bool
    req_id: Any
    notification: bool
    method: str
    params: list[Any] | dict[str, Any]


class _ConnectionGuard(asyncio.Protocol):
    """Per-connection protocol in front of aiohttp's: header deadline and connection limit.

    aiohttp has no header-read timeout of its own: ``max_line_size`` / ``max_field_size``
    bound sizes, not time, and only recent releases start the keep-alive timer when a
    connection opens (which incidentally drops a client that never completes its first
    request); older 3.x releases that pyproject allows do not. So this wrapper arms its own
    timer on ``connection_made`` and the server's first middleware cancels it once aiohttp
    has parsed a complete request: no aiohttp internals, the same behaviour on every 3.x.
    Activity does not extend the deadline, so dripping one byte at a time does not help.
    After the first request, aiohttp's keep-alive timeout (set to the same value) closes a
    connection that sits idle, or half-way through its next request's headers, that long.
    Everything else is forwarded to aiohttp's ``RequestHandler`` unchanged; it talks to the
    transport directly.
    """

    def __init__(self, server: RPCServer, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._server = server
        self._make_handler = make_handler
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._server._admit(transport, self):
            transport.close()
            return
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(
            self._server._header_timeout, self._header_deadline
        )
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def request_started(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_deadline(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._server._log.info(
                "rpc_header_timeout",
                peer=transport.get_extra_info("peername"),
                timeout=self._server._header_timeout,
            )
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.request_started()  # cancels the timer
        if self._transport is not None:
            self._server._release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)


class RPCServer:
    """HTTP server exposing a :class:`MethodRegistry` over JSON-RPC plus event streams.

    ``keepalive_interval``: seconds between SSE ``: keepalive`` comments / WebSocket pings.
    ``auth_failure_delay``: sleep before answering 401 (brute-force damping, like bitcoind).
    ``shutdown_timeout``: how long :meth:`stop` waits for in-flight handlers.
    ``event_queue_size``: per-stream subscriber buffer; slow stream clients are dropped.
    ``max_batch``: most requests in one batch (option ``max_rpc_batch``).
    ``max_batch_reply_bytes``: reply size past which a batch's further requests get an
    INVALID_REQUEST error each instead of being run.
    ``header_timeout``: seconds to send complete request headers, and the keep-alive idle
    timeout (option ``rpc_header_timeout``).
    ``max_connections``: most simultaneous connections (option ``max_rpc_connections``).
    """

    def __init__(
        self,
        registry: MethodRegistry,
        events: EventHub,
        auth: tuple[str, str] | None,
        max_body_bytes: int = 1_000_000,
        metrics: Callable[[], bytes] | None = None,
        logger: Any = None,
        *,
        keepalive_interval: float = 15.0,
        auth_failure_delay: float = 0.25,
        shutdown_timeout: float = 5.0,
        event_queue_size: int = 1000,
        max_batch: int = DEFAULT_MAX_RPC_BATCH,
        max_batch_reply_bytes: int = MAX_RPC_BATCH_REPLY_BYTES,
        header_timeout: float = DEFAULT_RPC_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_RPC_CONNECTIONS,
    ) -> None:
        if max_batch < 1 or max_connections < 1 or not header_timeout > 0:
            raise ValueError("max_batch, header_timeout and max_connections must be positive")
        self._registry = registry
        self._events = events
        self._auth: tuple[bytes, bytes] | None = (
            (auth[0].encode(), auth[1].encode()) if auth is not None else None
        )
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger()
        self._keepalive_interval = keepalive_interval
        self._auth_failure_delay = auth_failure_delay
        self._shutdown_timeout = shutdown_timeout
        self._event_queue_size = event_queue_size
        self._max_batch = max_batch
        self._max_batch_reply_bytes = max_batch_reply_bytes
        self._header_timeout = header_timeout
        self._max_connections = max_connections
        self._guards: dict[asyncio.BaseTransport, _ConnectionGuard] = {}
        self._refusing = False
        self._refused = 0
        self._listener: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._stream_subs: set[Subscription] = set()
        self._disconnect_poll = 1.0
        self.host: str | None = None
        self.port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.host is None or self.port is None:
            raise RuntimeError("server not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def stream_count(self) -> int:
        """Number of currently open /events and /ws streams."""
        return len(self._stream_subs)

    @property
    def connection_count(self) -> int:
        """Number of currently open (admitted) HTTP connections."""
        return len(self._guards)

    def _admit(self, transport: asyncio.Transport, guard: _ConnectionGuard) -> bool:
        if self._stopping:
            return False
        if len(self._guards) >= self._max_connections:
            self._refused += 1
            if not self._refusing:  # once per episode: a flood must not flood the log too
                self._refusing = True
                self._log.warning(
                    "rpc_connection_limit_reached", limit=self._max_connections,
                    peer=transport.get_extra_info("peername"),
                )
            return False
        if self._refusing:
            self._refusing = False
            self._log.info("rpc_connection_limit_cleared", refused=self._refused)
            self._refused = 0
        self._guards[transport] = guard
        return True

    def _release(self, transport: asyncio.BaseTransport) -> None:
        self._guards.pop(transport, None)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start serving; ``port=0`` picks a free port. Returns ``(host, port)``."""
        if self._runner is not None:
            raise RuntimeError("RPCServer already started")
        self._stopping = False
        app = web.Application(
            middlewares=[self._make_request_started_middleware(), self._make_auth_middleware()]
        )
        app.router.add_post("/", self._handle_rpc)
        app.router.add_get("/events", self._handle_sse)
        app.router.add_get("/ws", self._handle_ws)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/health", self._handle_health)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self._header_timeout,
        )
        await runner.setup()
        make_handler = runner.server
        assert make_handler is not None
        try:
            # Our own listener instead of web.TCPSite, so each connection gets a
            # _ConnectionGuard in front of aiohttp's protocol (web.Server is the documented
            # protocol factory for loop.create_server).
            listener = await asyncio.get_running_loop().create_server(
                lambda: _ConnectionGuard(self, make_handler), host, port
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        actual_port = int(listener.sockets[0].getsockname()[1])
        self.host, self.port = host, actual_port
        self._log.info(
            "rpc_server_started", host=host, port=actual_port, auth=self._auth is not None,
            max_batch=self._max_batch, header_timeout=self._header_timeout,
            max_connections=self._max_connections,
        )
        return host, actual_port

    async def stop(self) -> None:
        """Close all event streams and stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        listener, self._listener = self._listener, None
        if runner is None:
            return
        self._stopping = True
        if listener is not None:
            listener.close()  # stop accepting; runner.cleanup() closes open connections
        for sub in list(self._stream_subs):
            sub.close()
        await runner.cleanup()
        if listener is not None:
            await listener.wait_closed()
        self._log.info("rpc_server_stopped", host=self.host, port=self.port)

    # -- auth -------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self._auth is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user_ok = hmac.compare_digest(user, self._auth[0])
        pass_ok = hmac.compare_digest(password, self._auth[1])
        return user_ok and pass_ok

    def _make_request_started_middleware(self) -> Any:
        @web.middleware
        async def request_started_middleware(
            request: web.Request, handler: Callable[[web.Request], Any]
        ) -> web.StreamResponse:
            # aiohttp runs middlewares only once the request line and headers are complete.
            guard = self._guards.get(request.transport) if request.transport else None
            if guard is not None:
                guard.request_started()
            response: web.StreamResponse = await handler(request)
            return response

        return request_started_middleware

    def _make_auth_middleware(self) -> Any:
        @web.middleware
        async def auth_middleware(
            request: web.Request, handler: Callable[[web.Request], Any]
        ) -> web.StreamResponse:
            if not self._authorized(request):
                self._log.info("rpc_auth_failed", peer=request.remote, path=request.path)
                if self._auth_failure_delay > 0:
                    await asyncio.sleep(self._auth_failure_delay)
                return web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'},
                )
            response: web.StreamResponse = await handler(request)
            return response

        return auth_middleware

    # -- JSON-RPC ---------------------------------------------------------------------------
    async def _read_body(self, request: web.Request) -> bytes | None:
        """Read the body, or return None if it exceeds ``max_body_bytes``."""
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(65536):
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error_response(code: int, message: Any, req_id: Any = None, v2: bool = True) -> str:
        if not _valid_id(req_id):
            req_id = None
        err = {"code": code, "message": message if isinstance(message, str) else str(message)}
        if v2:
            return _dumps({"jsonrpc": "2.0", "error": err, "id": req_id})
        return _dumps({"result": None, "error": err, "id": req_id})

    async def _handle_rpc(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if body is None:
            self._log.info("rpc_body_too_large", peer=request.remote, limit=self._max_body_bytes)
            text = self._error_response(
                INVALID_REQUEST,
                f"Request body too large: limit is {self._max_body_bytes} bytes",
            )
            return web.Response(status=413, text=text, content_type=_JSON)
        try:
            status, text = await self._dispatch(request, body)
        except Exception:
            # Last line of defence: without it aiohttp answers a bug with a plain-text 500,
            # which JSON-RPC clients cannot parse.
            self._log.exception("rpc_request_failed", peer=request.remote)
            status, text = 500, self._error_response(INTERNAL_ERROR, "Internal error")
        if text is None:
            return web.Response(status=204)
        return web.Response(status=status, text=text, content_type=_JSON)

    async def _dispatch(self, request: web.Request, body: bytes) -> tuple[int, str | None]:
        """(HTTP status, response JSON or None for "no content") for one POST body."""
        try:
            payload = _loads(body)
        except (ValueError, RecursionError) as exc:  # includes JSONDecodeError, UnicodeError
            self._log.info("rpc_parse_error", peer=request.remote, error=str(exc))
            return 200, self._error_response(PARSE_ERROR, f"Parse error: {exc}")

        if not isinstance(payload, list):
            out = await self._process_one(payload)
            return (204, None) if out is None else (out[1], out[0])
        if not payload:
            return 200, self._error_response(INVALID_REQUEST, "Invalid Request: empty batch")
        if len(payload) > self._max_batch:
            self._log.info(
                "rpc_batch_too_large", peer=request.remote, size=len(payload),
                limit=self._max_batch,
            )
            msg = (
                f"Batch too large: {len(payload)} requests, limit is {self._max_batch}"
                " (max_rpc_batch)"
            )
            return 200, self._error_response(INVALID_REQUEST, msg)
        parts: list[str] = []
        reply_bytes = 0
        for i, item in enumerate(payload):
            if i:
                # Methods are mostly synchronous: without this a whole batch would run in one
                # go and stall every other client and the P2P loop until it is done.
                await asyncio.sleep(0)
            if reply_bytes > self._max_batch_reply_bytes:
                out = self._refuse_past_reply_bound(item)
            else:
                out = await self._process_one(item)
            if out is not None:
                parts.append(out[0])
                reply_bytes += len(out[0])
        if not parts:
            return 204, None
        return 200, "[" + ",".join(parts) + "]"

    def _refuse_past_reply_bound(self, req: Any) -> tuple[str, int] | None:
        envelope = self._envelope(req)
        if not isinstance(envelope, _Envelope):
            return envelope
        if envelope.notification:
            return None
        msg = (
            f"batch reply over {self._max_batch_reply_bytes} bytes: request not run;"
            " send it in a smaller batch"
        )
        return self._error_response(INVALID_REQUEST, msg, envelope.req_id, envelope.v2), 200

    async def _process_one(self, req: Any) -> tuple[str, int] | None:
        """Handle one request object. Returns (response JSON, HTTP status) or None."""
        envelope = self._envelope(req)
        if not isinstance(envelope, _Envelope):
            return envelope  # an invalid request: its error reply
        result, error = await self._run(envelope.method, envelope.params)
        text, error = self._reply(envelope, result, error)
        if envelope.notification:
            return None
        status = 200
        if error is not None and not envelope.v2:
            status = _LEGACY_HTTP_STATUS.get(error["code"], 500)
        return text, status

    def _envelope(self, req: Any) -> _Envelope | tuple[str, int]:
        """The checked fields of a request object, or the error reply to an invalid one."""
        if not isinstance(req, dict):
            return self._error_response(INVALID_REQUEST, "Invalid Request object"), 200

        v2 = False
        if req.get("jsonrpc") is not None:
            version = req["jsonrpc"]
            if not isinstance(version, str):
                msg = "jsonrpc field must be a string"
                return self._error_response(INVALID_REQUEST, msg), 200
            if version == "2.0":
                v2 = True
            elif version != "1.0":
                msg = "JSON-RPC version not supported"
                return self._error_response(INVALID_REQUEST, msg), 200

        req_id = req.get("id")
        if not _valid_id(req_id):
            msg = "id must be a string, a finite number within the int64 range, or null"
            return self._error_response(INVALID_REQUEST, msg, None, v2), 200
        notification = v2 and "id" not in req

        method = req.get("method")
        if not isinstance(method, str):
            msg = "Method must be a string"
            return self._error_response(INVALID_REQUEST, msg, req_id, v2), (200 if v2 else 400)
        params = req.get("params")
        if params is None:
            params = []
        if not isinstance(params, list | dict):
            msg = "Params must be an array or object"
            return self._error_response(INVALID_REQUEST, msg, req_id, v2), (200 if v2 else 400)
        return _Envelope(v2, req_id, notification, method, params)

    async def _run(
        self, method: str, params: list[Any] | dict[str, Any]
    ) -> tuple[Any, dict[str, Any] | None]:
        """Call the method: (result, None) or (None, JSON-RPC error object)."""
        error: dict[str, Any] | None = None
        result: Any = None
        t0 = time.perf_counter()
        try:
            result = await self._registry.call(method, params)
        except RPCError as exc:
            error = exc.to_dict()
        except Exception as exc:
            self._log.exception("rpc_internal_error", method=method)
            error = {"code": INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}
        ms = round((time.perf_counter() - t0) * 1000, 3)
        self._log.debug("rpc_call", method=method, ms=ms, ok=error is None)
        return result, error

    def _reply(
        self, env: _Envelope, result: Any, error: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any] | None]:
        """The response JSON, and the error it carries (a result that cannot be serialized
        becomes an INTERNAL_ERROR)."""
        method, req_id, v2 = env.method, env.req_id, env.v2
        text: str | None = None
        if error is None:
            try:
                if v2:
                    text = _dumps({"jsonrpc": "2.0", "result": result, "id": req_id})
                else:
                    text = _dumps({"result": result, "error": None, "id": req_id})
            except (TypeError, ValueError, RecursionError) as exc:
                self._log.error("rpc_result_not_serializable", method=method, error=str(exc))
                error = {
                    "code": INTERNAL_ERROR,
                    "message": f"result is not JSON serializable: {exc}",
                }
        if error is not None:
            self._log.info("rpc_error", method=method, code=error["code"], message=error["message"])
            try:
                if v2:
                    text = _dumps({"jsonrpc": "2.0", "error": error, "id": req_id})
                else:
                    text = _dumps({"result": None, "error": error, "id": req_id})
            except (TypeError, ValueError, RecursionError):  # unserializable error data
                error.pop("data", None)
                text = self._error_response(error["code"], error["message"], req_id, v2)
        assert text is not None
        return text, error

    # -- event streams -----------------------------------------------------------------------
    def _open_subscription(self, request: web.Request) -> Subscription | None:
        # No await between the stopping check and registration: stop() can't miss us.
        if self._stopping:
            return None
        sub = self._events.subscribe(maxsize=self._event_queue_size, types=_parse_types(request))
        self._stream_subs.add(sub)
        return sub

    def _close_subscription(self, sub: Subscription) -> None:
        sub.close()
        self._stream_subs.discard(sub)

    @staticmethod
    def _client_gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    async def _handle_sse(self, request: web.Request) -> web.StreamResponse:
        sub = self._open_subscription(request)
        if sub is None:
            return web.Response(status=503, text="server is stopping\n")
        loop = asyncio.get_running_loop()
        peer = request.remote
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        try:
            await resp.prepare(request)
            await resp.write(b": connected\n\n")  # flushes headers immediately
            self._log.debug("events_stream_opened", kind="sse", peer=peer)
            next_keepalive = loop.time() + self._keepalive_interval
            while True:
                if self._client_gone(request):
                    break
                wait = max(0.0, min(next_keepalive - loop.time(), self._disconnect_poll))
                try:
                    event = await asyncio.wait_for(sub.get(), timeout=wait)
                except TimeoutError:
                    if loop.time() >= next_keepalive:
                        await resp.write(b": keepalive\n\n")
                        next_keepalive = loop.time() + self._keepalive_interval
                    continue
                await resp.write(f"data: {_encode_event(event)}\n\n".encode())
        except Exception as exc:  # SubscriptionClosed, client disconnects (ConnectionError...)
            if not isinstance(exc, ConnectionError | SubscriptionClosed):
                self._log.exception("events_stream_error", kind="sse", peer=peer)
        finally:
            self._close_subscription(sub)
            self._log.debug("events_stream_closed", kind="sse", peer=peer, dropped=sub.dropped)
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="server is stopping\n")
        ws = web.WebSocketResponse(
            heartbeat=self._keepalive_interval, timeout=2.0, max_msg_size=65536
        )
        await ws.prepare(request)
        sub = self._open_subscription(request)
        if sub is None:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
            return ws
        peer = request.remote
        self._log.debug("events_stream_opened", kind="ws", peer=peer)

        async def reader() -> None:
            try:
                async for _msg in ws:  # client messages are ignored; ends on close
                    pass
            finally:
                sub.close()

        reader_task = asyncio.create_task(reader())
        try:
            async for event in sub:
                if ws.closed:
                    break
                await ws.send_str(_encode_event(event))
        except ConnectionError:
            pass
        finally:
            self._close_subscription(sub)
            if not ws.closed:
                code = aiohttp.WSCloseCode.GOING_AWAY if self._stopping else aiohttp.WSCloseCode.OK
                with contextlib.suppress(Exception):
                    await ws.close(code=code)
            if not reader_task.done():
                reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task
            self._log.debug("events_stream_closed", kind="ws", peer=peer, dropped=sub.dropped)
        return ws

    # -- misc routes ------------------------------------------------------------------------
    async def _handle_metrics(self, request: web.Request) -> web.StreamResponse:
        if self._metrics is None:
            return web.Response(status=404, text="metrics not enabled\n")
        try:
            data: bytes | str = self._metrics()
        except Exception:
            self._log.exception("metrics_error")
            return web.Response(status=500, text="metrics collection failed\n")
        body = data.encode() if isinstance(data, str) else bytes(data)
        return web.Response(body=body, headers={"Content-Type": _PROMETHEUS_CONTENT_TYPE})

    async def _handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})
