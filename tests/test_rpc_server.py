"""Tests for node.rpc (registry, server, cookie, client: JSON-RPC + event streams) and
node.events (EventHub)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lab.client import (
    CookieError,
    RPCAuthError,
    RPCConnectionError,
    basic_auth_header,
    read_cookie,
    rpc_call,
    rpc_call_sync,
)
from lab.client import RPCError as ClientRPCError
from node.events import EventHub, SubscriptionClosed
from node.rpc.cookie import delete_cookie, write_cookie
from node.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RPC_INVALID_PARAMETER,
    RPCError,
)
from node.rpc.registry import MethodRegistry
from node.rpc.server import RPCServer
from tests.async_wait import wait_until_async as wait_until

TIMEOUT = 5.0


@dataclass
class Env:
    server: RPCServer
    url: str
    hub: EventHub
    calls: list[str] = field(default_factory=list)


def make_registry(calls: list[str]) -> MethodRegistry:
    reg = MethodRegistry()

    def getblockhash(height: int) -> str:
        calls.append(f"getblockhash:{height}")
        return f"hash{height}"

    async def getblock(blockhash: str, verbosity: int = 1) -> dict[str, Any]:
        """Return a block by hash."""
        await asyncio.sleep(0)
        return {"hash": blockhash, "verbosity": verbosity}

    def getblockcount() -> int:
        return 42

    def scale(x: float) -> float:
        return x * 2

    def opt(a: int | None = None, flag: bool = False) -> list[Any]:
        return [a, flag]

    def fail_rpc() -> None:
        raise RPCError(RPC_INVALID_PARAMETER, "bad parameter value", data={"hint": 1})

    def boom() -> None:
        raise ValueError("kaboom")

    def record(value: str) -> int:
        calls.append(value)
        return len(calls)

    def unserializable() -> object:
        return object()

    for name, fn in [
        ("getblockhash", getblockhash),
        ("getblock", getblock),
        ("getblockcount", getblockcount),
        ("scale", scale),
        ("opt", opt),
        ("fail_rpc", fail_rpc),
        ("boom", boom),
        ("record", record),
        ("unserializable", unserializable),
    ]:
        reg.register(name, fn)
    return reg


async def _start(
    auth: tuple[str, str] | None = None, **kwargs: Any
) -> tuple[RPCServer, str, EventHub, list[str]]:
    calls: list[str] = []
    hub = EventHub()
    kwargs.setdefault("keepalive_interval", 0.2)
    server = RPCServer(make_registry(calls), hub, auth, auth_failure_delay=0.0, **kwargs)
    host, port = await server.start("127.0.0.1", 0)
    assert port > 0
    return server, f"http://{host}:{port}/", hub, calls


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    server, url, hub, calls = await _start()
    yield Env(server, url, hub, calls)
    await server.stop()
    hub.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


async def post(
    session: aiohttp.ClientSession, url: str, payload: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(payload).encode()
    async with session.post(url, data=data) as resp:
        body = await resp.read()
        return resp.status, (json.loads(body) if body else None)


def req(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        r["params"] = params
    return r


async def call_err(session: aiohttp.ClientSession, url: str, method: str, params: Any) -> dict:
    status, body = await post(session, url, req(method, params))
    assert status == 200
    assert "result" not in body
    return body["error"]


# ---------------------------------------------------------------------------- JSON-RPC basics


async def test_positional_and_named_params(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, req("getblockhash", [5], id="a"))
    assert status == 200
    assert body == {"jsonrpc": "2.0", "result": "hash5", "id": "a"}

    _, body = await post(session, env.url, req("getblockhash", {"height": 7}))
    assert body["result"] == "hash7"

    _, body = await post(session, env.url, req("getblock", ["00ff"]))
    assert body["result"] == {"hash": "00ff", "verbosity": 1}
    _, body = await post(session, env.url, req("getblock", ["00ff", 2]))
    assert body["result"] == {"hash": "00ff", "verbosity": 2}
    _, body = await post(session, env.url, req("getblock", {"verbosity": 0, "blockhash": "ab"}))
    assert body["result"] == {"hash": "ab", "verbosity": 0}
    # params omitted entirely == []
    _, body = await post(session, env.url, req("getblockcount"))
    assert body["result"] == 42


async def test_arity_errors(env: Env, session: aiohttp.ClientSession) -> None:
    err = await call_err(session, env.url, "getblockhash", [])
    assert err["code"] == INVALID_PARAMS
    assert err["message"] == "getblockhash takes 1 argument (height), 0 given"

    err = await call_err(session, env.url, "getblockhash", [1, 2])
    assert err["message"] == "getblockhash takes 1 argument (height), 2 given"

    err = await call_err(session, env.url, "getblock", [])
    assert err["message"] == "getblock takes 1 to 2 arguments (blockhash, verbosity), 0 given"

    err = await call_err(session, env.url, "getblockcount", [1])
    assert err["code"] == INVALID_PARAMS
    assert err["message"] == "getblockcount takes no arguments, 1 given"

    err = await call_err(session, env.url, "getblockhash", {})
    assert err["code"] == INVALID_PARAMS
    assert "missing required parameter 'height'" in err["message"]

    err = await call_err(session, env.url, "getblockhash", {"height": 1, "bogus": 2})
    assert err["code"] == INVALID_PARAMS
    assert "bogus" in err["message"]
    assert env.calls == []  # nothing ran


async def test_type_errors(env: Env, session: aiohttp.ClientSession) -> None:
    err = await call_err(session, env.url, "getblockhash", ["5"])
    assert err["code"] == INVALID_PARAMS
    assert "'height'" in err["message"]
    assert "must be int" in err["message"]
    assert "got str" in err["message"]

    # bool is not an int
    err = await call_err(session, env.url, "getblockhash", [True])
    assert err["code"] == INVALID_PARAMS
    assert "'height'" in err["message"] and "int" in err["message"]
    assert "got bool" in err["message"]

    # float is not an int either
    err = await call_err(session, env.url, "getblockhash", {"height": 1.5})
    assert "got float" in err["message"]

    # int is accepted (and converted) where float is expected; bool is not
    _, body = await post(session, env.url, req("scale", [3]))
    assert body["result"] == 6.0 and isinstance(body["result"], float)
    err = await call_err(session, env.url, "scale", [False])
    assert err["code"] == INVALID_PARAMS and "'x'" in err["message"]

    # X | None accepts null; defaults apply; bool param rejects int
    _, body = await post(session, env.url, req("opt", [None, True]))
    assert body["result"] == [None, True]
    _, body = await post(session, env.url, req("opt", {"flag": True}))
    assert body["result"] == [None, True]
    err = await call_err(session, env.url, "opt", [1, 1])
    assert "'flag'" in err["message"] and "must be bool" in err["message"]
    err = await call_err(session, env.url, "opt", ["x"])
    assert "must be int | None" in err["message"]

    # null for an optional non-nullable parameter means "use the default" (bitcoind)
    _, body = await post(session, env.url, req("getblock", ["ab", None]))
    assert body["result"] == {"hash": "ab", "verbosity": 1}
    # ... but null for a required one is a type error
    err = await call_err(session, env.url, "getblockhash", [None])
    assert "got null" in err["message"]
    assert env.calls == []


async def test_unknown_method(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, req("nope", [], id=9))
    assert status == 200
    assert body == {
        "jsonrpc": "2.0",
        "error": {"code": METHOD_NOT_FOUND, "message": "Method not found: nope"},
        "id": 9,
    }


async def test_malformed_json(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, raw=b'{"jsonrpc": "2.0", "method": ')
    assert status == 200
    assert body["error"]["code"] == PARSE_ERROR
    assert body["id"] is None
    status, body = await post(session, env.url, raw=b"\xff\xfe garbage")
    assert status == 200 and body["error"]["code"] == PARSE_ERROR


@pytest.mark.parametrize("payload", [42, "getblockcount", None, True])
async def test_non_object_request(env: Env, session: aiohttp.ClientSession, payload: Any) -> None:
    status, body = await post(session, env.url, payload)
    assert status == 200
    assert body["error"]["code"] == INVALID_REQUEST
    assert body["id"] is None


async def test_invalid_request_fields(env: Env, session: aiohttp.ClientSession) -> None:
    for bad in [
        {"jsonrpc": "2.0", "method": 5, "id": 1},
        {"jsonrpc": "2.0", "method": "getblockcount", "params": "x", "id": 1},
        {"jsonrpc": "3.0", "method": "getblockcount", "id": 1},
        {"jsonrpc": "2.0", "method": "getblockcount", "id": {"a": 1}},
    ]:
        status, body = await post(session, env.url, bad)
        assert status == 200, bad
        assert body["error"]["code"] == INVALID_REQUEST, bad


async def test_batch_mixed(env: Env, session: aiohttp.ClientSession) -> None:
    batch = [
        req("getblockhash", [1], id=1),
        req("nope", [], id=2),
        {"jsonrpc": "2.0", "method": "record", "params": ["note"]},  # notification
        7,  # not an object
        req("getblockhash", ["x"], id=3),
        req("boom", [], id=4),
    ]
    status, body = await post(session, env.url, batch)
    assert status == 200
    assert isinstance(body, list) and len(body) == 5  # notification produced no entry
    by_id = {r["id"]: r for r in body if r["id"] is not None}
    assert by_id[1]["result"] == "hash1"
    assert by_id[2]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[3]["error"]["code"] == INVALID_PARAMS
    assert by_id[4]["error"]["code"] == INTERNAL_ERROR
    nulls = [r for r in body if r["id"] is None]
    assert len(nulls) == 1 and nulls[0]["error"]["code"] == INVALID_REQUEST
    assert [r["id"] for r in body] == [1, 2, None, 3, 4]  # request order preserved
    assert "note" in env.calls  # the notification did run


async def test_notifications_only(env: Env, session: aiohttp.ClientSession) -> None:
    async with session.post(
        env.url, json={"jsonrpc": "2.0", "method": "record", "params": ["a"]}
    ) as r:
        assert r.status == 204
        assert await r.read() == b""
    batch = [
        {"jsonrpc": "2.0", "method": "record", "params": ["b"]},
        {"jsonrpc": "2.0", "method": "record", "params": ["c"]},
    ]
    async with session.post(env.url, json=batch) as r:
        assert r.status == 204
    assert env.calls == ["a", "b", "c"]


async def test_empty_batch(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, [])
    assert status == 200
    assert body["error"]["code"] == INVALID_REQUEST
    assert body["id"] is None


async def test_legacy_request(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, {"method": "getblockcount", "params": [], "id": 7})
    assert status == 200
    assert body == {"result": 42, "error": None, "id": 7}
    status, body = await post(session, env.url, {"method": "nope", "id": 8})
    assert status == 404
    assert body["result"] is None and body["error"]["code"] == METHOD_NOT_FOUND
    status, body = await post(session, env.url, {"method": "boom", "id": 9})
    assert status == 500 and body["error"]["code"] == INTERNAL_ERROR


async def test_oversized_body(session: aiohttp.ClientSession) -> None:
    server, url, hub, calls = await _start(max_body_bytes=1024)
    try:
        big = json.dumps(req("record", ["x" * 2000])).encode()
        status, body = await post(session, url, raw=big)
        assert status == 413
        assert body["error"]["code"] == INVALID_REQUEST
        assert "1024" in body["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: streaming check
            for i in range(0, len(big), 256):
                yield big[i : i + 256]

        async with session.post(url, data=chunked()) as resp:
            assert resp.status == 413
            assert "1024" in (await resp.json())["error"]["message"]
        assert calls == []
        # still serving, and bodies under the limit work
        status, body = await post(session, url, req("record", ["small"]))
        assert status == 200 and body["result"] == 1
    finally:
        await server.stop()
        hub.close()


async def test_method_errors_and_server_survives(env: Env, session: aiohttp.ClientSession) -> None:
    status, body = await post(session, env.url, req("fail_rpc", []))
    assert status == 200
    assert body["error"] == {
        "code": RPC_INVALID_PARAMETER,
        "message": "bad parameter value",
        "data": {"hint": 1},
    }
    status, body = await post(session, env.url, req("boom", [], id=5))
    assert status == 200
    assert body["id"] == 5
    assert body["error"]["code"] == INTERNAL_ERROR
    assert "kaboom" in body["error"]["message"]

    _, body = await post(session, env.url, req("unserializable", []))
    assert body["error"]["code"] == INTERNAL_ERROR

    _, body = await post(session, env.url, req("getblockhash", [3]))
    assert body["result"] == "hash3"


async def test_help(env: Env, session: aiohttp.ClientSession) -> None:
    _, body = await post(session, env.url, req("help", []))
    listing = body["result"]
    assert "getblockhash height" in listing.splitlines()
    assert "getblock blockhash ( verbosity=1 )" in listing.splitlines()
    assert "help ( command=null )" in listing.splitlines()

    _, body = await post(session, env.url, req("help", ["getblock"]))
    text = body["result"]
    assert text.startswith("getblock blockhash ( verbosity=1 )")
    assert "Return a block by hash." in text
    assert "1. blockhash (str, required)" in text
    assert "2. verbosity (int, optional, default=1)" in text

    _, body = await post(session, env.url, req("help", ["nope"]))
    assert body["result"] == "help: unknown command: nope"


async def test_registry_direct() -> None:
    reg = MethodRegistry()

    @reg.method(help="double it")
    async def double(n: int, *, scale: int = 2) -> int:
        return n * scale

    assert await reg.call("double", [4]) == 8
    assert await reg.call("double", {"n": 4, "scale": 3}) == 12
    with pytest.raises(RPCError) as ei:
        await reg.call("double", [1, 2])
    assert ei.value.code == INVALID_PARAMS
    with pytest.raises(ValueError):
        reg.register("double", lambda: None)
    assert "double" in reg and "help" in reg


# ---------------------------------------------------------------------------- auth & cookie


async def test_auth_required(session: aiohttp.ClientSession) -> None:
    server, url, hub, calls = await _start(auth=("alice", "s3cret"), metrics=lambda: b"m 1\n")
    try:
        payload = req("record", ["should-not-run"])
        cases: list[dict[str, str]] = [
            {},
            {"Authorization": basic_auth_header("alice", "wrong")},
            {"Authorization": basic_auth_header("bob", "s3cret")},
            {"Authorization": basic_auth_header("alice", "s3cret").replace("Basic", "Bearer")},
            {"Authorization": "Basic !!!"},
        ]
        for hdrs in cases:
            async with session.post(url, json=payload, headers=hdrs) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == 'Basic realm="jsonrpc"'
            for path in ("health", "metrics", "events", "ws"):
                async with session.get(url + path, headers=hdrs) as resp:
                    assert resp.status == 401, path
        assert calls == []
        assert hub.subscriber_count == 0
        with pytest.raises(RPCAuthError):
            await rpc_call(url, "record", ["nope"], auth=("alice", "bad"))
        assert calls == []

        good = {"Authorization": basic_auth_header("alice", "s3cret")}
        async with session.post(url, json=payload, headers=good) as resp:
            assert resp.status == 200
            assert (await resp.json())["result"] == 1
        async with session.get(url + "health", headers=good) as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
        assert calls == ["should-not-run"]
    finally:
        await server.stop()
        hub.close()


def test_cookie_roundtrip(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    user, password = write_cookie(datadir)
    path = datadir / ".cookie"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    content = path.read_text()
    assert content == f"__cookie__:{password}"
    assert user == "__cookie__"
    assert len(password) == 64 and all(c in "0123456789abcdef" for c in password)
    assert read_cookie(path) == (user, password)
    assert read_cookie(datadir) == (user, password)
    assert [p.name for p in datadir.iterdir()] == [".cookie"]  # no temp file left behind

    user2, password2 = write_cookie(datadir)  # rewrite replaces atomically with a new secret
    assert password2 != password
    assert read_cookie(path) == (user2, password2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    delete_cookie(datadir)
    assert not path.exists()
    delete_cookie(datadir)  # idempotent
    with pytest.raises(CookieError, match="not found"):
        read_cookie(path)
    path.write_text("no-colon-here")
    with pytest.raises(CookieError, match="malformed"):
        read_cookie(path)


async def test_cookie_auth_with_client(tmp_path: Path) -> None:
    cookie = write_cookie(tmp_path)
    server, url, hub, _ = await _start(auth=cookie)
    try:
        assert await rpc_call(url, "getblockcount", [], auth=read_cookie(tmp_path)) == 42
    finally:
        await server.stop()
        hub.close()


# ---------------------------------------------------------------------------- client helpers


async def test_rpc_call_client(env: Env) -> None:
    assert await rpc_call(env.url, "getblockhash", [4]) == "hash4"
    assert await rpc_call(env.url, "getblock", {"blockhash": "x"}) == {"hash": "x", "verbosity": 1}
    with pytest.raises(ClientRPCError) as ei:
        await rpc_call(env.url, "fail_rpc", [])
    assert ei.value.code == RPC_INVALID_PARAMETER and ei.value.data == {"hint": 1}
    result = await asyncio.to_thread(rpc_call_sync, env.url, "getblockcount", [])
    assert result == 42


async def test_rpc_call_connection_error() -> None:
    server, url, hub, _ = await _start()
    await server.stop()  # port is now closed
    hub.close()
    with pytest.raises(RPCConnectionError, match="could not connect"):
        await rpc_call(url, "getblockcount", [], timeout=5)
    assert issubclass(RPCConnectionError, ConnectionError)


# ---------------------------------------------------------------------------- events


async def read_sse_lines(resp: aiohttp.ClientResponse, n_data: int) -> list[str]:
    """Read SSE lines until ``n_data`` data lines were seen; returns the data payloads."""
    out: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n_data:
            line = await resp.content.readline()
            assert line, "stream ended early"
            text = line.decode().rstrip("\n")
            if text.startswith("data: "):
                out.append(text[len("data: ") :])
    return out


async def test_sse_stream_with_filter(env: Env, session: aiohttp.ClientSession) -> None:
    async with session.get(env.url + "events?types=block_connected,reorg") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await wait_until(lambda: env.hub.subscriber_count == 1)
        events = [
            {"type": "tx_accepted", "txid": "t0"},
            {"type": "block_connected", "height": 1},
            {"type": "tx_accepted", "txid": "t1"},
            {"type": "reorg", "depth": 2},
            {"type": "block_connected", "height": 2},
        ]
        for e in events:
            env.hub.publish(e)
        data = await read_sse_lines(resp, 3)
        assert [json.loads(d) for d in data] == [events[1], events[3], events[4]]
    # client went away: the server-side stream and subscription are cleaned up
    await wait_until(lambda: env.server.stream_count == 0 and env.hub.subscriber_count == 0)


async def test_sse_keepalive_and_unfiltered(env: Env, session: aiohttp.ClientSession) -> None:
    async with session.get(env.url + "events") as resp:
        await wait_until(lambda: env.hub.subscriber_count == 1)
        async with asyncio.timeout(TIMEOUT):
            while (await resp.content.readline()).decode().strip() != ": keepalive":
                pass
        env.hub.publish({"type": "anything", "n": 1})
        assert [json.loads(d) for d in await read_sse_lines(resp, 1)] == [
            {"type": "anything", "n": 1}
        ]


async def test_sse_ends_when_server_stops(session: aiohttp.ClientSession) -> None:
    server, url, hub, _ = await _start()
    async with session.get(url + "events") as resp:
        await wait_until(lambda: hub.subscriber_count == 1)
        async with asyncio.timeout(TIMEOUT):
            await server.stop()
            rest = await resp.content.read()  # returns at EOF
        assert b"data:" not in rest
    assert hub.subscriber_count == 0 and server.stream_count == 0
    hub.close()


async def test_ws_stream(env: Env, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(env.url + "ws?types=block_connected") as ws:
        await wait_until(lambda: env.hub.subscriber_count == 1)
        env.hub.publish({"type": "tx_accepted", "txid": "t"})
        env.hub.publish({"type": "block_connected", "height": 1})
        env.hub.publish({"type": "block_connected", "height": 2})
        got = []
        async with asyncio.timeout(TIMEOUT):
            while len(got) < 2:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT
                got.append(json.loads(msg.data))
        assert got == [
            {"type": "block_connected", "height": 1},
            {"type": "block_connected", "height": 2},
        ]
    await wait_until(lambda: env.server.stream_count == 0 and env.hub.subscriber_count == 0)


async def test_ws_closed_when_server_stops(session: aiohttp.ClientSession) -> None:
    server, url, hub, _ = await _start()
    async with session.ws_connect(url + "ws") as ws:
        await wait_until(lambda: hub.subscriber_count == 1)
        async with asyncio.timeout(TIMEOUT):
            stopper = asyncio.create_task(server.stop())
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await stopper
    assert hub.subscriber_count == 0
    hub.close()


# ---------------------------------------------------------------------------- metrics/health


async def test_metrics_route(session: aiohttp.ClientSession) -> None:
    server, url, hub, _ = await _start(metrics=lambda: b"# TYPE x counter\nx 3\n")
    try:
        async with session.get(url + "metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert await resp.read() == b"# TYPE x counter\nx 3\n"
    finally:
        await server.stop()
        hub.close()


async def test_metrics_absent_and_health(env: Env, session: aiohttp.ClientSession) -> None:
    async with session.get(env.url + "metrics") as resp:
        assert resp.status == 404
    async with session.get(env.url + "health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True}


# ---------------------------------------------------------------------------- EventHub unit


async def test_hub_drops_slow_subscriber() -> None:
    hub = EventHub()
    slow = hub.subscribe(maxsize=2)
    fast = hub.subscribe(maxsize=10)
    for i in range(3):
        hub.publish({"type": "t", "i": i})
    assert slow.dropped and slow.closed
    assert hub.dropped == 1
    assert hub.subscriber_count == 1
    assert [e async for e in slow] == []  # iterator ends immediately
    with pytest.raises(SubscriptionClosed):
        await slow.get()
    assert [(await fast.get())["i"] for _ in range(3)] == [0, 1, 2]
    assert not fast.dropped

    waiter = asyncio.create_task(fast.get())
    await asyncio.sleep(0)  # let the waiter block
    hub.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiter, TIMEOUT)
    assert hub.subscribe().closed  # subscribing after close gives an ended subscription
    hub.publish({"type": "ignored"})  # no-op after close


async def test_hub_filter_and_validation() -> None:
    hub = EventHub()
    async with hub.subscribe(types=["a"]) as sub:
        hub.publish({"type": "b"})
        hub.publish({"type": "a", "x": 1})
        assert await asyncio.wait_for(sub.get(), TIMEOUT) == {"type": "a", "x": 1}
        assert sub.get_nowait() is None
    assert hub.subscriber_count == 0
    with pytest.raises(TypeError):
        hub.publish({"no_type": 1})
    with pytest.raises(TypeError):
        hub.publish("block")  # type: ignore[arg-type]
