"""The dashboard's HTTP side (aiohttp): the page and its assets (static/), a snapshot of the
model (`/api/state`), a stream of changes (`/api/stream`, server-sent events), details on
demand (`/api/block`, `/api/tx`) and the teaching controls (`POST /api/control`).

Security: the RPC credentials stay in this process (the page only ever sees what these
handlers return). Bound to loopback, no token is needed, but the Host header must name a
loopback address (no DNS rebinding). Bound elsewhere, a token is required on every request
(`?token=` once, which sets a cookie, or `Authorization: Bearer`). Controls need a JSON body
and a same-origin request, so another site cannot post one."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from lab.dashboard.collector import RPC_FAILURES, Collector
from lab.dashboard.model import Listener, Model
from lab.dashboard.untrusted import as_float, as_int, as_str, dumps, redact

STATIC_DIR = Path(__file__).parent / "static"
MAX_REQUEST_BYTES = 16 * 1024  # largest request body (controls are small JSON objects)
MAX_SSE_CLIENTS = 32  # browsers following /api/stream at once; more get HTTP 503
MAX_CURVE_DEPTH = 200  # confirmations in a transaction's reversal-risk curve
MAX_ATTACKER_SHARE = 0.5  # attacker shares a node may report for the curve: 0 to this
DEFAULT_ATTACKER_SHARE = 0.1  # the curve's share when no node reports a valid one
MAX_FIELD = 500  # characters of a node's text field passed to the page
MAX_LISTED = 10_000  # entries of a node's list (transactions, double spends) passed on
SSE_KEEPALIVE = 15.0  # seconds between keep-alive comments on an idle stream
SSE_WRITE_TIMEOUT = 10.0  # seconds a write to a page's stream may wait before it is cut off
SSE_SEND_BUFFER = 64 * 1024  # bytes of a stream's socket send buffer
TOKEN_COOKIE = "powlab_dashboard"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml", ".png": "image/png"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
                               "form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DashboardError(Exception):
    """The dashboard cannot start as asked (e.g. bound off loopback without a token)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise DashboardError(f"--bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8050")
    return host.strip("[]"), int(port)


class Dashboard:
    def __init__(self, collector: Collector, model: Model, host: str, port: int,
                 token: str | None = None, controls: Any = None) -> None:
        if not is_loopback(host) and not token:
            raise DashboardError(f"binding {host} (not loopback) needs a token (--token, or "
                                 "--token auto to generate one): the page can drive the "
                                 "testnet")
        self.collector = collector
        self.model = model
        self.host, self.port = host, port
        self.token = token
        self.controls = controls
        self._control_lock = asyncio.Lock()
        self._assets = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in CONTENT_TYPES}
        self._runner: web.AppRunner | None = None

    # -- app --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES,
                              middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.asset)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/block", self.block)
        app.router.add_get("/api/tx", self.tx)
        app.router.add_post("/api/control", self.control)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.url

    async def stop(self) -> None:
        for listener in list(self.model.listeners):
            listener.offer({"kind": "bye"})
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return f"{base}?token={self.token}" if self.token else base

    # -- guard ------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is None:
            if not is_loopback(request.url.host or ""):
                return _plain(421, "the dashboard answers to loopback addresses only\n")
        elif not self._authorised(request):
            return _plain(401, "a token is needed: open the URL the dashboard printed\n")
        response = await handler(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if self.token and request.query.get("token") and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    def _authorised(self, request: web.Request) -> bool:
        assert self.token is not None
        given = [request.query.get("token", ""), request.cookies.get(TOKEN_COOKIE, "")]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:])
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    # -- page -------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html",
                                headers={"Content-Type": "text/html; charset=utf-8"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        path = self._assets.get(request.match_info["name"])
        if path is None:
            return _plain(404, "no such asset\n")
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix]})

    # -- API --------------------------------------------------------------------------------
    async def state(self, request: web.Request) -> web.StreamResponse:
        await self.collector.loaded.wait()
        snapshot = self.model.snapshot()
        snapshot["controls"] = self.controls is not None
        return _json(snapshot)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if len(self.model.listeners) >= MAX_SSE_CLIENTS:
            return _plain(503, f"too many streams (at most {MAX_SSE_CLIENTS})\n")
        listener = Listener()
        self.model.listeners.add(listener)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        finished = False
        try:
            await response.prepare(request)
            _small_send_buffer(request)
            await _send(response, b": connected\n\n")
            while not listener.dropped:
                try:
                    message = await asyncio.wait_for(listener.queue.get(), SSE_KEEPALIVE)
                except TimeoutError:
                    await _send(response, b": keepalive\n\n")
                    continue
                if message.get("kind") == "bye":
                    finished = True
                    break
                await _send(response, f"data: {dumps(message)}\n\n".encode())
        except (ConnectionError, TimeoutError):
            pass  # a page gone, or one that stopped reading: its slot is freed below
        finally:
            self.model.listeners.discard(listener)
            if not finished and request.transport is not None:
                request.transport.abort()  # a dropped or stuck page is cut off, not waited on
        return response

    async def block(self, request: web.Request) -> web.StreamResponse:
        block_hash = request.query.get("hash", "")
        if not HEX64.match(block_hash):
            return _json_error(400, "hash: expected 64 lowercase hex digits")
        known = self.model.blocks.get(block_hash)
        for src in self.collector.sources.nodes:
            with contextlib.suppress(*RPC_FAILURES):
                info = await self.collector.call(src, "getblock", block_hash, 1)
                on_active = [n.name for n in self.model.nodes.values()
                             if n.tip and self._on_chain(block_hash, n.tip)]
                if not isinstance(info, dict):
                    continue
                return _json({
                    "block": _block_fields(info),
                    "miner": known.miner if known else None,
                    "first_node": known.first_node if known else None,
                    "seen": known.first_seen if known else None,
                    "asked": src.name, "on_active_chain_of": on_active,
                    "mark": self.model.marks.get(block_hash[:16]),
                })
        return _json_error(404, "no node knows this block")

    def _on_chain(self, block_hash: str, tip: str) -> bool:
        target = self.model.blocks.get(block_hash)
        cursor = self.model.blocks.get(tip)
        if target is None:
            return False
        while cursor is not None and cursor.height > target.height:
            cursor = self.model.blocks.get(cursor.prev or "")
        return cursor is not None and cursor.hash == block_hash

    async def tx(self, request: web.Request) -> web.StreamResponse:
        txid = request.query.get("txid", "")
        if not HEX64.match(txid):
            return _json_error(400, "txid: expected 64 lowercase hex digits")

        async def one(src: Any) -> dict[str, Any]:
            try:
                info = await self.collector.call(src, "gettransaction", txid)
            except RPC_FAILURES as exc:
                return {"node": src.name, "status": "unreachable",
                        "error": redact(str(exc))[:200]}
            if not isinstance(info, dict):
                return {"node": src.name, "status": "unknown"}
            return {"node": src.name, **_tx_fields(info)}

        rows = await asyncio.gather(*(one(s) for s in self.collector.sources.nodes))
        # A node's numbers bound the work done here: the depth and share are checked.
        depth = next((d for r in rows if (d := as_int(r.get("finality_depth")))
                      and d >= 1), self.model.finality_depth)
        depth = max(1, min(MAX_CURVE_DEPTH, depth))
        q = next((s for r in rows if (s := as_float(r.get("assumed_attacker_share")))
                  is not None and 0.0 <= s <= MAX_ATTACKER_SHARE), DEFAULT_ATTACKER_SHARE)
        from consensus.attack_theory import reversal_risk

        curve = [{"z": z, "risk": reversal_risk(z, q)} for z in range(depth + 1)]
        return _json({"txid": txid, "nodes": rows, "finality_depth": depth,
                                  "q": q, "curve": curve})

    async def control(self, request: web.Request) -> web.StreamResponse:
        if self.controls is None:
            return _json_error(403, "controls are off (--no-controls)")
        if request.content_type != "application/json":
            return _json_error(415, "send a JSON object (Content-Type: application/json)")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{request.host}":
            return _json_error(403, "cross-origin control requests are refused")
        try:
            body = await request.json()
        except ValueError:
            return _json_error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _json_error(400, "the body must be a JSON object")
        if self._control_lock.locked():
            return _json_error(409, "another control is running")
        async with self._control_lock:
            try:
                result = await self.controls.run(body)
            except ValueError as exc:
                return _json_error(400, redact(str(exc)))
            except Exception as exc:  # an RPC or testnet failure: reported, not raised
                return _json_error(502, redact(f"{type(exc).__name__}: {exc}")[:500])
        self.model.add_log("control", body.get("node"), f"control: {result}")
        return _json({"ok": True, "result": result})


def _tx_fields(info: dict[str, Any]) -> dict[str, Any]:
    """A node's `gettransaction` answer, each field kept only with the type the page draws
    (else None)."""
    hashes = info.get("seen_double_spends")
    return {
        "status": as_str(info.get("status"), MAX_FIELD) or None,
        "confirmations": as_int(info.get("confirmations")),
        "blockhash": _hex64(info.get("blockhash")),
        "blockheight": as_int(info.get("blockheight")),
        "reversal_risk": as_float(info.get("reversal_risk")),
        "assumed_attacker_share": as_float(info.get("assumed_attacker_share")),
        "risk_summary": as_str(info.get("risk_summary"), MAX_FIELD) or None,
        "double_spend_alert": info.get("double_spend_alert") is True,
        "seen_double_spends": [h for h in hashes[:MAX_LISTED] if _hex64(h)]
        if isinstance(hashes, list) else [],
        "conflicts": _finite_list(info.get("conflicts")),
        "finality_depth": as_int(info.get("finality_depth")),
        "warnings": as_str(info.get("warnings"), MAX_FIELD),
    }


def _block_fields(info: dict[str, Any]) -> dict[str, Any]:
    """A node's `getblock` answer (verbosity 1), each field with the type the page draws."""
    txs = info.get("tx")
    return {
        "hash": _hex64(info.get("hash")),
        "height": as_int(info.get("height")),
        "previousblockhash": _hex64(info.get("previousblockhash")),
        "time": as_int(info.get("time")),
        "nTx": as_int(info.get("nTx")),
        "size": as_int(info.get("size")),
        "bits": as_str(info.get("bits"), MAX_FIELD) or None,
        "chainwork": as_str(info.get("chainwork"), MAX_FIELD) or None,
        "tx": [t for t in txs[:MAX_LISTED] if _hex64(t)] if isinstance(txs, list) else [],
    }


def _hex64(value: Any) -> str | None:
    return value if isinstance(value, str) and HEX64.match(value) else None


def _finite_list(value: Any) -> list[Any]:
    return value[:MAX_LISTED] if isinstance(value, list) else []


async def _send(response: web.StreamResponse, data: bytes) -> None:
    """One write to a page's stream, given up after SSE_WRITE_TIMEOUT (a page that does not
    read would otherwise hold its slot, and this handler, for ever)."""
    await asyncio.wait_for(response.write(data), SSE_WRITE_TIMEOUT)


def _small_send_buffer(request: web.Request) -> None:
    """A stream's socket buffers at most SSE_SEND_BUFFER bytes a page has not read, so a page
    that stops reading is found out (its writes time out) soon."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Strict JSON (no NaN or Infinity: a browser's JSON.parse refuses them)."""
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, headers=SECURITY_HEADERS)


def _json_error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status, headers=SECURITY_HEADERS)


def new_token() -> str:
    return secrets.token_urlsafe(24)
